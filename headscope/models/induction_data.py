"""Repeated-random-sequence batches: the task that forms induction heads.

A sequence is [BOS, p_1..p_P, r_1..r_T, r_1..r_T]: a random prefix of length P,
then a random segment of length T, then the same segment again. A model that
predicts the second copy must look back to the token after the previous
occurrence (an induction head fed by a previous-token head). Varying T and P
across batches rules out positional shortcuts (docs/methods.md §5.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from headscope.errors import InputError


@dataclass(frozen=True)
class RepeatLayout:
    """Where the two copies sit in a sequence built by `repeated_random_batch`."""

    prefix_length: int
    repeat_length: int
    bos: bool

    @property
    def first_start(self) -> int:
        """Index of r_1 in the first copy."""
        return int(self.bos) + self.prefix_length

    @property
    def second_start(self) -> int:
        """Index of r_1 in the second copy."""
        return self.first_start + self.repeat_length

    @property
    def length(self) -> int:
        return self.second_start + self.repeat_length


def repeated_random_batch(
    batch: int,
    repeat_length: int,
    *,
    prefix_length: int = 0,
    vocab: tuple[int, int],
    bos_id: int | None,
    generator: torch.Generator | None = None,
) -> tuple[Int[Tensor, "batch position"], RepeatLayout]:
    """Token ids [batch, position] of [BOS?, prefix, r, r] with tokens drawn
    uniformly from `vocab = (low, high)` (high exclusive), plus the layout."""
    if repeat_length < 1 or prefix_length < 0 or batch < 1:
        raise InputError("need batch >= 1, repeat_length >= 1 and prefix_length >= 0")
    low, high = vocab
    body = torch.randint(low, high, (batch, prefix_length + repeat_length), generator=generator)
    segment = body[:, prefix_length:]
    parts = [body, segment]
    if bos_id is not None:
        parts.insert(0, torch.full((batch, 1), bos_id, dtype=body.dtype))
    layout = RepeatLayout(prefix_length, repeat_length, bos_id is not None)
    return torch.cat(parts, dim=1), layout


def random_repeat_batch(
    batch: int,
    *,
    vocab: tuple[int, int],
    bos_id: int | None,
    repeat_range: tuple[int, int] = (8, 30),
    prefix_range: tuple[int, int] = (0, 12),
    generator: torch.Generator | None = None,
) -> tuple[Int[Tensor, "batch position"], RepeatLayout]:
    """One training batch: repeat length and prefix length drawn uniformly from
    the inclusive ranges, shared by the whole batch (so no padding is needed)."""
    t = int(torch.randint(repeat_range[0], repeat_range[1] + 1, (1,), generator=generator))
    p = int(torch.randint(prefix_range[0], prefix_range[1] + 1, (1,), generator=generator))
    return repeated_random_batch(
        batch, t, prefix_length=p, vocab=vocab, bos_id=bos_id, generator=generator
    )
