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

    def select(self, rows: Int[Tensor, " row"]) -> TokenBatch:
        """The batch's rows `rows` (repeats allowed) as a new, batched TokenBatch."""
        index = [int(i) for i in rows.tolist()]
        return TokenBatch(
            self.ids[rows],
            self.attention_mask[rows],
            tuple(self.lengths[i] for i in index),
            tuple(self.tokens[i] for i in index),
            False,
            None if self.texts is None else tuple(self.texts[i] for i in index),
            self.prepended_bos,
        )
