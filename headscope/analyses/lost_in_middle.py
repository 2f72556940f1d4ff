"""Lost-in-the-middle curves: a metric as a function of where the relevant item sits
(Liu et al. 2023, "Lost in the Middle"; METHODS.md §3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel, Inputs, ModelOutput
from headscope.models.tokens import TokenBatch

PromptBuilder = Callable[[int], Inputs] | Mapping[int, Inputs]
PromptMetric = Callable[[ModelOutput, TokenBatch], Tensor]


@dataclass(frozen=True)
class PositionCurve:
    """`values[i]` is the mean metric over prompts with the item at `positions[i]`
    (`per_prompt` keeps every prompt). `middle` is the mean over the middle
    third of the positions (excluding the first and last); the gaps are
    first − middle and last − middle (positive: the ends do better, for a
    higher-is-better metric)."""

    positions: tuple[int, ...]
    values: Float[Tensor, " position"]
    per_prompt: tuple[Tensor, ...]
    middle: float
    first_minus_middle: float
    last_minus_middle: float


def curve_gaps(values: Sequence[float]) -> tuple[float, float, float]:
    """(middle, first − middle, last − middle) for a curve of at least 3 values."""
    if len(values) < 3:
        raise InputError("a position curve needs at least 3 positions")

    interior = list(values[1:-1])
    third = max(1, len(interior) // 3)
    start = (len(interior) - third) // 2
    middle = sum(interior[start : start + third]) / third
    return middle, values[0] - middle, values[-1] - middle


@torch.no_grad()
def position_curve(
    model: HeadscopeModel,
    prompts: PromptBuilder,
    positions: Sequence[int],
    metric: PromptMetric,
) -> PositionCurve:
    """Evaluate `metric` (a callable `(ModelOutput, TokenBatch) -> [batch]`,
    higher or lower is better as the caller defines) on the prompts built for
    each position: `prompts(position)` or `prompts[position]` returns the
    prompts (strings or token ids) with the relevant item at that position.
    One batched forward per position.
    """
    positions = tuple(int(p) for p in positions)
    if len(positions) < 3:
        raise InputError("a position curve needs at least 3 positions")
    per_prompt = []
    for position in positions:
        built = prompts[position] if isinstance(prompts, Mapping) else prompts(position)
        batch = model.tokenize(built)
        values = metric(model.forward(batch, embedding=not model.spec.has_lm_head), batch)
        values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        if values.numel() != batch.batch_size:
            raise InputError(
                f"the metric returned {values.numel()} values for {batch.batch_size} prompts"
            )
        per_prompt.append(values)
    means = torch.stack([v.mean() for v in per_prompt])
    middle, first_gap, last_gap = curve_gaps(means.tolist())
    return PositionCurve(positions, means, tuple(per_prompt), middle, first_gap, last_gap)
