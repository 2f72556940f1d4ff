"""AttentionRecord: captured attention maps, frozen, saveable, never holding the model."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.errors import InputError, RecordFormatError
from headscope.models.spec import ModelSpec
from headscope.records.io import read_record, require, write_record
from headscope.records.provenance import Provenance

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
        batched = self.lengths is not None
        want = 5 if batched else 4
        if self.pattern.dim() != want:
            raise InputError(f"pattern must have {want} dims, got {tuple(self.pattern.shape)}")
        *lead, n_layers, n_heads, n_q, n_k = self.pattern.shape
        if (n_layers, n_heads) != (len(self.layer_index), len(self.head_index)):
            raise InputError("pattern's layer/head axes do not match layer_index/head_index")
        if n_q != n_k or self.token_ids.shape[-1] != n_q:
            raise InputError("pattern must be square and match the token ids")
        if batched and (len(self.lengths) != lead[0] or len(self.tokens) != lead[0]):
            raise InputError("lengths and tokens must have one entry per prompt")

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

    def save(self, directory: str | os.PathLike) -> None:
        """Write `tensors.safetensors` + `record.json` into `directory`."""
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
        write_record(directory, SCHEMA, SCHEMA_VERSION, tensors, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AttentionRecord:
        """Read a record written by `save`; raises RecordFormatError on any mismatch."""
        tensors, meta = read_record(directory, SCHEMA, SCHEMA_VERSION)
        if set(tensors) != {"pattern", "token_ids"}:
            raise RecordFormatError("the tensor file must hold exactly 'pattern' and 'token_ids'")
        try:
            spec = ModelSpec.from_dict(require(meta, "spec", dict))
        except (TypeError, ValueError) as error:
            raise RecordFormatError(f"the record's model spec is malformed: {error}") from None
        lengths = meta.get("lengths")
        tokens = require(meta, "tokens", list)
        requested = meta.get("requested")
        try:
            record = cls(
                pattern=tensors["pattern"],
                token_ids=tensors["token_ids"],
                tokens=tuple(tuple(t) for t in tokens) if lengths is not None else tuple(tokens),
                lengths=tuple(int(n) for n in lengths) if lengths is not None else None,
                layer_index=tuple(int(i) for i in require(meta, "layer_index", list)),
                head_index=tuple(int(i) for i in require(meta, "head_index", list)),
                spec=spec,
                provenance=Provenance.from_dict(meta.get("provenance")),
                requested=tuple(tuple(map(int, p)) for p in requested) if requested else None,
            )
        except (TypeError, ValueError) as error:
            raise RecordFormatError(f"the record is inconsistent: {error}") from None
        if any(i >= spec.n_layers for i in record.layer_index) or any(
            i >= spec.n_heads for i in record.head_index
        ):
            raise RecordFormatError("layer_index/head_index exceed the model spec")
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
