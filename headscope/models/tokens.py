"""TokenBatch: tokenized prompts, right-padded, with their lengths and strings."""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Bool, Int
from torch import Tensor


@dataclass(frozen=True)
class TokenBatch:
    """Token ids `[batch, position]`, right-padded; `attention_mask` is True on
    real tokens. `tokens[b]` holds the token strings of prompt b (unpadded).
    `single` is True when the input was one prompt (records then drop the
    batch dim). `texts` holds the original strings when the input was text."""

    ids: Int[Tensor, "batch position"]
    attention_mask: Bool[Tensor, "batch position"]
    lengths: tuple[int, ...]
    tokens: tuple[tuple[str, ...], ...]
    single: bool
    texts: tuple[str, ...] | None = None
    prepended_bos: bool = False

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    @property
    def padded(self) -> bool:
        return min(self.lengths) != self.length
