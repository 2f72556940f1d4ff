"""HeadStats: per-head attention statistics streamed by the tiled kernel.

Holds no N×N map (except the optional `maps` record for requested heads), so it
scales to long contexts: memory is O(layers·heads·N) per prompt.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import RecordFormatError
from headscope.models.spec import ModelSpec
from headscope.records.attention import AttentionRecord
from headscope.records.io import (
    SIDECAR_FILE,
    TENSOR_FILE,
    inside_dir,
    read_record,
    refuse_existing,
    require,
    write_record,
)
from headscope.records.provenance import Provenance
from headscope.records.validate import (
    ATOL,
    FieldError,
    check_lengths,
    check_range,
    check_texts,
    check_token_ids,
    check_tokens,
    check_type,
    entropy_bound,
    fields_of,
    is_int,
    short,
    tokens_from,
)

SCHEMA = "headscope.head_stats"
SCHEMA_VERSION = 1

PER_QUERY = (
    "entropy",
    "max_weight",
    "argmax_key",
    "sink_mass",
    "previous_token_mass",
    "mean_distance",
)
PER_HEAD = ("distance_histogram", "key_mass", "key_visibility")
OPTIONAL = ("topk_keys", "topk_weights")


@dataclass(frozen=True, eq=False)
class HeadStats:
    """Statistics of every (layer, head), for one prompt or a batch.

    Per query `[layer, head, query]` (a leading batch dim for several prompts):
    `entropy` (nats), `max_weight`, `argmax_key`, `sink_mass` (mass on the first
    `sink_keys` keys), `previous_token_mass` (key = query − 1), `mean_distance`
    (Σ_k A[q,k]·(q − k); |q − k| for bidirectional models).
    Per head: `distance_histogram` `[layer, head, bin]` (attention mass summed
    over queries, bins `distance_bin_edges`: [0,1), [1,2), [2,4), [4,8) ...),
    `key_mass` `[layer, head, key]` (Σ_q A[q,k]) and `key_visibility`
    `[layer, head, key]` (how many queries can see key k), so that the sink
    score α_k = key_mass / key_visibility (Xiao et al. 2023; docs/methods.md §3.2).
    Optional `topk_keys` / `topk_weights` `[layer, head, query, k]`: a sparse map.
    Padded query positions hold 0 (argmax_key −1). `maps`: full maps of the
    requested heads, when asked.
    """

    entropy: Float[Tensor, "*batch layer head query"]
    max_weight: Float[Tensor, "*batch layer head query"]
    argmax_key: Tensor
    sink_mass: Float[Tensor, "*batch layer head query"]
    previous_token_mass: Float[Tensor, "*batch layer head query"]
    mean_distance: Float[Tensor, "*batch layer head query"]
    distance_histogram: Float[Tensor, "*batch layer head bin"]
    key_mass: Float[Tensor, "*batch layer head key"]
    key_visibility: Float[Tensor, "*batch layer head key"]
    distance_bin_edges: tuple[int, ...]
    sink_keys: int
    token_ids: Tensor
    tokens: tuple
    lengths: tuple[int, ...] | None
    spec: ModelSpec
    provenance: Provenance
    topk_keys: Tensor | None = None
    topk_weights: Tensor | None = None
    maps: AttentionRecord | None = None

    def __post_init__(self) -> None:
        """Cheap structural checks (InputError naming the field): every array has the
        shape the spec, the tokens and the bin edges give it, the token ids lie in the
        vocabulary, `maps` describe the same prompts. `check_content` checks values."""
        check_type(self.spec, ModelSpec, "spec", "a ModelSpec")
        check_type(self.provenance, Provenance, "provenance", "a Provenance")
        check_type(self.token_ids, Tensor, "token_ids", "a tensor")
        batched = self.lengths is not None
        if self.token_ids.dim() != 1 + batched:
            raise FieldError(
                "token_ids",
                f"token_ids must be [{'batch, ' if batched else ''}query], "
                f"got shape {tuple(self.token_ids.shape)}",
            )
        lead = tuple(self.token_ids.shape[:-1])
        n = int(self.token_ids.shape[-1])
        check_token_ids(self.token_ids, self.spec, (*lead, n))
        if batched:
            check_lengths(self.lengths, lead[0], n)
        check_tokens(self.tokens, self.lengths, n)
        check_texts(self.provenance.texts, lead[0] if batched else 1)
        edges = self.distance_bin_edges
        if (
            not isinstance(edges, tuple)
            or len(edges) < 2
            or not all(is_int(e) for e in edges)
            or edges[0] != 0
            or any(b <= a for a, b in itertools.pairwise(edges))
        ):
            raise FieldError(
                "distance_bin_edges",
                f"distance_bin_edges must be increasing ints from 0, got {short(edges)}",
            )
        if not is_int(self.sink_keys) or self.sink_keys < 0:
            raise FieldError(
                "sink_keys", f"sink_keys must be a non-negative int, got {short(self.sink_keys)}"
            )
        grid = (*lead, self.spec.n_layers, self.spec.n_heads)
        shapes = {name: (*grid, n) for name in (*PER_QUERY, "key_mass", "key_visibility")}
        shapes["distance_histogram"] = (*grid, len(edges) - 1)
        for name, shape in shapes.items():
            hint = f" ({len(edges)} distance_bin_edges)" if name == "distance_histogram" else ""
            _check_array(getattr(self, name), name, shape, integer=name == "argmax_key", hint=hint)
        if (self.topk_keys is None) != (self.topk_weights is None):
            raise FieldError("topk_keys", "topk_keys and topk_weights come together or not at all")
        if self.topk_keys is not None:
            check_type(self.topk_keys, Tensor, "topk_keys", "a tensor")
            k = self.topk_keys.shape[-1] if self.topk_keys.dim() else 0
            _check_array(self.topk_keys, "topk_keys", (*grid, n, k), integer=True)
            _check_array(self.topk_weights, "topk_weights", (*grid, n, k), integer=False)
        if self.maps is not None:
            check_type(self.maps, AttentionRecord, "maps", "an AttentionRecord")
            maps = self.maps
            same = (
                maps.spec == self.spec
                and maps.lengths == self.lengths
                and maps.tokens == self.tokens
                and maps.token_ids.shape == self.token_ids.shape
                and torch.equal(maps.token_ids, self.token_ids)
            )
            if not same:
                raise FieldError(
                    "maps",
                    "maps (the maps/ record) describe other prompts or another model than "
                    "the statistics",
                )

    def check_content(self) -> None:
        """Raise InputError unless every value is finite and in its range (weights and
        masses in [0, 1], entropies in [0, log N], distances and keys in [0, N), counts in
        [0, N]), padded positions hold 0 (argmax −1), and the maps, if any, are
        row-stochastic and agree with `max_weight`. Memory: temporaries of one array."""
        n = int(self.token_ids.shape[-1])
        slack = n * (1 + ATOL)
        ranges = {
            "entropy": (-ATOL, entropy_bound(n)),
            "max_weight": (-ATOL, 1 + ATOL),
            "argmax_key": (-1, n - 1),
            "sink_mass": (-ATOL, 1 + ATOL),
            "previous_token_mass": (-ATOL, 1 + ATOL),
            "mean_distance": (-ATOL, max(n - 1, 0) + ATOL * n),
            "distance_histogram": (-ATOL, slack),
            "key_mass": (-ATOL, slack),
            "key_visibility": (0, n),
            "topk_keys": (-1, n - 1),
            "topk_weights": (-ATOL, 1 + ATOL),
        }
        for name, (low, high) in ranges.items():
            tensor = getattr(self, name)
            if tensor is not None:
                check_range(tensor, name, low, high)
        for index, length in enumerate(self.lengths or ()):
            if length == n:
                continue
            for name in (*PER_QUERY, "key_mass", "key_visibility", *OPTIONAL):
                tensor = getattr(self, name)
                if tensor is None:
                    continue
                pad = tensor[index, :, :, length:]
                empty = -1 if name in ("argmax_key", "topk_keys") else 0
                if not (pad == empty).all():
                    raise FieldError(
                        name,
                        f"{name} of prompt {index} is not {empty} at its padded positions "
                        f"(from {length} on)",
                    )
        if self.maps is not None:
            self.maps.check_content()
            self._check_maps_agree()

    def _check_maps_agree(self) -> None:
        """The maps' row maxima are `max_weight` of the same heads (one head at a time)."""
        maps = self.maps
        wanted = set(maps.requested) if maps.requested is not None else None
        for li, layer in enumerate(maps.layer_index):
            for hi, head in enumerate(maps.head_index):
                if wanted is not None and (layer, head) not in wanted:
                    continue
                peak = maps.pattern[..., li, hi, :, :].amax(-1)
                stats = self.max_weight[..., layer, head, :]
                gap = (peak - stats).abs().max().item()
                if not gap <= ATOL:
                    raise FieldError(
                        "maps",
                        f"maps (the maps/ record) disagree with max_weight of head "
                        f"({layer}, {head}) by {gap:.3g}: they come from different captures",
                    )

    @property
    def batched(self) -> bool:
        return self.lengths is not None

    def sink_scores(self) -> Float[Tensor, "*batch layer head key"]:
        """α_k = key_mass / key_visibility, NaN where no query sees key k (padded keys
        included): undefined, as in `analyses.position.sink_scores`."""
        scores = self.key_mass / self.key_visibility.clamp_min(1)
        return scores.masked_fill(self.key_visibility <= 0, float("nan"))

    # -- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write `tensors.safetensors` + `record.json` (and `maps/` when present).
        Raises RecordExistsError when `directory` (or its `maps/`) already holds a
        record, unless `overwrite`."""
        maps_dir = os.path.join(directory, "maps")
        refuse_existing(directory, overwrite)
        if self.maps is not None:
            refuse_existing(maps_dir, overwrite)
        tensors = {name: getattr(self, name) for name in PER_QUERY + PER_HEAD}
        tensors["token_ids"] = self.token_ids
        for name in OPTIONAL:
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        meta = {
            "spec": self.spec.to_dict(),
            "provenance": self.provenance.to_dict(),
            "tokens": [list(t) for t in self.tokens] if self.batched else list(self.tokens),
            "lengths": list(self.lengths) if self.lengths is not None else None,
            "distance_bin_edges": list(self.distance_bin_edges),
            "sink_keys": self.sink_keys,
            "has_maps": self.maps is not None,
        }
        write_record(directory, SCHEMA, SCHEMA_VERSION, tensors, meta, overwrite=True)
        if self.maps is not None:
            self.maps.save(maps_dir, overwrite=True)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> HeadStats:
        """Read a record written by `save`; RecordFormatError, one line naming the file,
        on any mismatch (see `__post_init__` and `check_content` for what is checked)."""
        tensors, meta = read_record(directory, SCHEMA, SCHEMA_VERSION)
        root = Path(directory)
        sidecar = root / SIDECAR_FILE
        missing = [n for n in (*PER_QUERY, *PER_HEAD, "token_ids") if n not in tensors]
        unknown = sorted(set(tensors) - {*PER_QUERY, *PER_HEAD, "token_ids", *OPTIONAL})
        if missing or unknown:
            what = f"lacks {missing}" if missing else f"holds unknown tensors {unknown}"
            raise RecordFormatError(f"{root / TENSOR_FILE} {what}")
        try:
            spec = ModelSpec.from_dict(require(meta, "spec", dict, sidecar))
        except (TypeError, ValueError) as error:
            raise RecordFormatError(f"{sidecar}: the model spec is malformed: {error}") from None
        lengths = require(meta, "lengths", (list, type(None)), sidecar)
        has_maps = require(meta, "has_maps", bool, sidecar)
        maps = AttentionRecord.load(inside_dir(root, "maps")) if has_maps else None
        with fields_of(directory, tensors):
            stats = cls(
                **{name: tensors[name] for name in PER_QUERY + PER_HEAD},
                distance_bin_edges=tuple(require(meta, "distance_bin_edges", list, sidecar)),
                sink_keys=require(meta, "sink_keys", int, sidecar),
                token_ids=tensors["token_ids"],
                tokens=tokens_from(require(meta, "tokens", list, sidecar), lengths is not None),
                lengths=tuple(lengths) if lengths is not None else None,
                spec=spec,
                provenance=Provenance.from_dict(meta.get("provenance"), sidecar),
                topk_keys=tensors.get("topk_keys"),
                topk_weights=tensors.get("topk_weights"),
                maps=maps,
            )
            stats.check_content()
        return stats

    def equals(self, other: HeadStats) -> bool:
        """Bit-exact equality of every tensor and the metadata."""

        def same(a: Tensor | None, b: Tensor | None) -> bool:
            if a is None or b is None:
                return a is b
            return a.dtype == b.dtype and torch.equal(a, b)

        names = (*PER_QUERY, *PER_HEAD, "token_ids", *OPTIONAL)
        maps_equal = (self.maps is None and other.maps is None) or (
            self.maps is not None and other.maps is not None and self.maps.equals(other.maps)
        )
        return (
            all(same(getattr(self, n), getattr(other, n)) for n in names)
            and (self.tokens, self.lengths, self.spec) == (other.tokens, other.lengths, other.spec)
            and self.provenance == other.provenance
            and self.distance_bin_edges == other.distance_bin_edges
            and self.sink_keys == other.sink_keys
            and maps_equal
        )


def _check_array(
    tensor: Tensor, name: str, shape: tuple[int, ...], *, integer: bool, hint: str = ""
) -> None:
    check_type(tensor, Tensor, name, "a tensor")
    if tuple(tensor.shape) != tuple(shape):
        raise FieldError(
            name, f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}{hint}"
        )
    is_integer = not tensor.is_floating_point() and not tensor.is_complex()
    if integer and (not is_integer or tensor.dtype == torch.bool):
        raise FieldError(name, f"{name} must hold integers, got {tensor.dtype}")
    if not integer and not tensor.is_floating_point():
        raise FieldError(name, f"{name} must be floating point, got {tensor.dtype}")
