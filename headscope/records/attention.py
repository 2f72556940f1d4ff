"""AttentionRecord: captured attention maps, frozen, saveable, never holding the model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.errors import RecordFormatError
from headscope.models.spec import ModelSpec
from headscope.records.io import SIDECAR_FILE, TENSOR_FILE, read_record, require, write_record
from headscope.records.provenance import Provenance
from headscope.records.validate import (
    FieldError,
    check_index,
    check_lengths,
    check_maps,
    check_requested,
    check_texts,
    check_token_ids,
    check_tokens,
    check_type,
    fields_of,
    pairs_from,
    tokens_from,
)

SCHEMA = "headscope.attention_record"
SCHEMA_VERSION = 1


@dataclass(frozen=True, eq=False)
class AttentionRecord:
    """Attention maps of one prompt or a batch of prompts.

    - `pattern`: float32 `[layer, head, query, key]` (one prompt) or
      `[batch, layer, head, query, key]`; its layer and head axes correspond to
      the model's layers `layer_index` and heads `head_index` (all by default).
      Rows of real queries sum to 1; padded query rows and key columns are 0.
    - `token_ids`: `[query]` or `[batch, query]` (right-padded).
    - `tokens`: token strings, `tuple[str]` or one tuple per prompt (unpadded).
    - `lengths`: real token count per prompt (None for one prompt).
    - `requested`: when capture was limited to (layer, head) pairs, the pairs
      kept; maps of other heads inside the layer/head grid are NaN.
    Memory: 4·layers·heads·N² bytes per prompt.
    """

    pattern: Tensor
    token_ids: Tensor
    tokens: tuple
    lengths: tuple[int, ...] | None
    layer_index: tuple[int, ...]
    head_index: tuple[int, ...]
    spec: ModelSpec
    provenance: Provenance
    requested: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        """Cheap structural checks (InputError naming the field); `check_content`
        checks the maps themselves (a pass over every value, done on load)."""
        check_type(self.spec, ModelSpec, "spec", "a ModelSpec")
        check_type(self.provenance, Provenance, "provenance", "a Provenance")
        check_type(self.pattern, Tensor, "pattern", "a tensor")
        if not self.pattern.is_floating_point():
            raise FieldError(
                "pattern", f"pattern must be floating point (float32), got {self.pattern.dtype}"
            )
        batched = self.lengths is not None
        want = 5 if batched else 4
        if self.pattern.dim() == 9 - want:
            raise FieldError(
                "lengths",
                f"lengths is {'given' if batched else 'null'}, but pattern has "
                f"{self.pattern.dim()} dims {tuple(self.pattern.shape)} "
                f"({'one prompt' if batched else 'a batch'})",
            )
        if self.pattern.dim() != want:
            raise FieldError(
                "pattern", f"pattern must have {want} dims, got {tuple(self.pattern.shape)}"
            )
        *lead, n_layers, n_heads, n_q, n_k = self.pattern.shape
        check_index(self.layer_index, "layer_index", self.spec.n_layers, "layers")
        check_index(self.head_index, "head_index", self.spec.n_heads, "heads per layer")
        if (n_layers, n_heads) != (len(self.layer_index), len(self.head_index)):
            raise FieldError(
                "pattern",
                f"pattern's layer/head axes ({n_layers}, {n_heads}) do not match layer_index/"
                f"head_index ({len(self.layer_index)}, {len(self.head_index)})",
            )
        if n_q != n_k:
            raise FieldError(
                "pattern",
                f"pattern must be square in query and key, got {tuple(self.pattern.shape)}",
            )
        if batched:
            check_lengths(self.lengths, lead[0], n_q)
        check_token_ids(self.token_ids, self.spec, (*lead, n_q))
        check_tokens(self.tokens, self.lengths, n_q)
        check_requested(self.requested, self.layer_index, self.head_index)
        check_texts(self.provenance.texts, lead[0] if batched else 1)

    def check_content(self) -> None:
        """Raise InputError unless every captured map is row-stochastic over the real
        tokens (finite, non-negative, rows summing to 1 within 1e-4) and 0 on padding.
        Heads outside `requested` are not looked at. Memory: temporaries of one layer."""
        check_maps(self.pattern, self.lengths, self.layer_index, self.head_index, self.requested)

    # -- views ---------------------------------------------------------------------------------

    @property
    def batched(self) -> bool:
        return self.lengths is not None

    @property
    def n_prompts(self) -> int:
        return len(self.lengths) if self.lengths is not None else 1

    def prompt(self, index: int) -> AttentionRecord:
        """The single-prompt record of prompt `index`, trimmed to its length."""
        if not self.batched:
            if index != 0:
                raise IndexError("a single-prompt record has only prompt 0")
            return self
        n = self.lengths[index]
        texts = self.provenance.texts
        provenance = Provenance(
            **{**self.provenance.__dict__, "texts": (texts[index],) if texts else None}
        )
        return AttentionRecord(
            pattern=self.pattern[index, :, :, :n, :n],
            token_ids=self.token_ids[index, :n],
            tokens=tuple(self.tokens[index]),
            lengths=None,
            layer_index=self.layer_index,
            head_index=self.head_index,
            spec=self.spec,
            provenance=provenance,
            requested=self.requested,
        )

    def map(self, layer: int, head: int, prompt: int = 0) -> Float[Tensor, "query key"]:
        """The `[query, key]` map of model layer `layer`, head `head` (model indices)."""
        try:
            li, hi = self.layer_index.index(layer), self.head_index.index(head)
        except ValueError:
            raise KeyError(f"head ({layer}, {head}) was not captured in this record") from None
        if self.requested is not None and (layer, head) not in self.requested:
            raise KeyError(f"head ({layer}, {head}) was not captured in this record")
        if self.batched:
            n = self.lengths[prompt]
            return self.pattern[prompt, li, hi, :n, :n]
        return self.pattern[li, hi]

    @property
    def ids(self) -> Int[Tensor, "... query"]:
        return self.token_ids

    # -- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write `tensors.safetensors` + `record.json` into `directory` (mode 0666 less
        the umask). Raises RecordExistsError when `directory` already holds a record,
        unless `overwrite`."""
        meta = {
            "spec": self.spec.to_dict(),
            "provenance": self.provenance.to_dict(),
            "tokens": [list(t) for t in self.tokens] if self.batched else list(self.tokens),
            "lengths": list(self.lengths) if self.lengths is not None else None,
            "layer_index": list(self.layer_index),
            "head_index": list(self.head_index),
            "requested": [list(p) for p in self.requested] if self.requested else None,
        }
        tensors = {"pattern": self.pattern, "token_ids": self.token_ids}
        write_record(directory, SCHEMA, SCHEMA_VERSION, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AttentionRecord:
        """Read a record written by `save`.

        Raises RecordFormatError, one line naming the file, on any mismatch: the
        checks of `read_record`, then the record's structure (types, shapes,
        indices inside the spec, token ids inside the vocabulary, as many token
        strings as positions, lengths, requested heads) and its maps (`check_content`).
        """
        tensors, meta = read_record(directory, SCHEMA, SCHEMA_VERSION)
        sidecar = Path(directory) / SIDECAR_FILE
        if set(tensors) != {"pattern", "token_ids"}:
            raise RecordFormatError(
                f"{Path(directory) / TENSOR_FILE} must hold exactly 'pattern' and 'token_ids', "
                f"not {sorted(tensors)}"
            )
        try:
            spec = ModelSpec.from_dict(require(meta, "spec", dict, sidecar))
        except (TypeError, ValueError) as error:
            raise RecordFormatError(f"{sidecar}: the model spec is malformed: {error}") from None
        lengths = require(meta, "lengths", (list, type(None)), sidecar)
        requested = require(meta, "requested", (list, type(None)), sidecar)
        with fields_of(directory, tensors):
            record = cls(
                pattern=tensors["pattern"],
                token_ids=tensors["token_ids"],
                tokens=tokens_from(require(meta, "tokens", list, sidecar), lengths is not None),
                lengths=tuple(lengths) if lengths is not None else None,
                layer_index=tuple(require(meta, "layer_index", list, sidecar)),
                head_index=tuple(require(meta, "head_index", list, sidecar)),
                spec=spec,
                provenance=Provenance.from_dict(meta.get("provenance"), sidecar),
                requested=pairs_from(requested),
            )
            record.check_content()
        return record

    def equals(self, other: AttentionRecord) -> bool:
        """Bit-exact equality of tensors and metadata."""
        return (
            torch.equal(self.pattern.nan_to_num(-1.0), other.pattern.nan_to_num(-1.0))
            and torch.equal(self.token_ids, other.token_ids)
            and self.tokens == other.tokens
            and self.lengths == other.lengths
            and self.layer_index == other.layer_index
            and self.head_index == other.head_index
            and self.spec == other.spec
            and self.provenance == other.provenance
            and self.requested == other.requested
        )
