"""Lost-in-the-middle curves on a model (Liu et al. 2023, "Lost in the Middle:
How Language Models Use Long Contexts"; docs/methods.md §3.3): a metric as a
function of where the relevant item sits."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from headscope.analyses.lost_in_middle import PositionCurve, curve_gaps
from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel, Inputs, ModelOutput
from headscope.models.tokens import TokenBatch
from headscope.probes.run import run

PromptBuilder = Callable[[int], Inputs] | Mapping[int, Inputs]
PromptMetric = Callable[[ModelOutput, TokenBatch], Tensor]


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
        output = run(model, batch, embedding=not model.spec.has_lm_head).output
        values = metric(output, batch)
        values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        if values.numel() != batch.batch_size:
            raise InputError(
                f"the metric returned {values.numel()} values for {batch.batch_size} prompts"
            )
        per_prompt.append(values)
    means = torch.stack([v.mean() for v in per_prompt])
    middle, first_gap, last_gap = curve_gaps(means.tolist())
    return PositionCurve(positions, means, tuple(per_prompt), middle, first_gap, last_gap)
