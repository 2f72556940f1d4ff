"""HeadStats: per-head attention statistics streamed by the tiled kernel.

Holds no N×N map (except the optional `maps` record for requested heads), so it
scales to long contexts: memory is O(layers·heads·N) per prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError, RecordFormatError
from headscope.models.spec import ModelSpec
from headscope.records.attention import AttentionRecord
from headscope.records.io import read_record, require, write_record
from headscope.records.provenance import Provenance

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
        lead = 1 if self.lengths is not None else 0
        expected = (self.spec.n_layers, self.spec.n_heads)
        for name in PER_QUERY + PER_HEAD:
            tensor = getattr(self, name)
            if tensor.dim() != 3 + lead or tuple(tensor.shape[lead : lead + 2]) != expected:
                raise InputError(f"{name} must be [{'batch, ' if lead else ''}layer, head, ...]")

    @property
    def batched(self) -> bool:
        return self.lengths is not None

    def sink_scores(self) -> Float[Tensor, "*batch layer head key"]:
        """α_k = key_mass / key_visibility, NaN where no query sees key k (padded keys
        included): undefined, as in `analyses.position.sink_scores`."""
        scores = self.key_mass / self.key_visibility.clamp_min(1)
        return scores.masked_fill(self.key_visibility <= 0, float("nan"))

    # -- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write `tensors.safetensors` + `record.json` (and `maps/` when present)."""
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
        write_record(directory, SCHEMA, SCHEMA_VERSION, tensors, meta)
        if self.maps is not None:
            self.maps.save(os.path.join(directory, "maps"))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> HeadStats:
        tensors, meta = read_record(directory, SCHEMA, SCHEMA_VERSION)
        missing = [n for n in (*PER_QUERY, *PER_HEAD, "token_ids") if n not in tensors]
        if missing:
            raise RecordFormatError(f"the tensor file lacks {missing}")
        try:
            spec = ModelSpec.from_dict(require(meta, "spec", dict))
            lengths = meta.get("lengths")
            tokens = require(meta, "tokens", list)
            maps = (
                AttentionRecord.load(os.path.join(directory, "maps"))
                if meta.get("has_maps")
                else None
            )
            return cls(
                **{name: tensors[name] for name in PER_QUERY + PER_HEAD},
                distance_bin_edges=tuple(int(e) for e in require(meta, "distance_bin_edges", list)),
                sink_keys=int(require(meta, "sink_keys", int)),
                token_ids=tensors["token_ids"],
                tokens=tuple(tuple(t) for t in tokens) if lengths is not None else tuple(tokens),
                lengths=tuple(int(n) for n in lengths) if lengths is not None else None,
                spec=spec,
                provenance=Provenance.from_dict(meta.get("provenance")),
                topk_keys=tensors.get("topk_keys"),
                topk_weights=tensors.get("topk_weights"),
                maps=maps,
            )
        except (TypeError, ValueError) as error:
            raise RecordFormatError(f"the stats record is inconsistent: {error}") from None

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
