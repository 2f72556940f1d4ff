"""Model-level summaries for a report, beside the head scores: head taxonomy,
attention sinks, position bias and greedy pruning curves.

Computed on the driver after the shards (one captured forward per chunk of
prompts, plus the batched pruning forwards), with the analyses of
`headscope.analyses` and a single intra-op thread, like the shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from headscope.analyses import taxonomy
from headscope.experiments.scoring import pruning_curves
from headscope.experiments.summaries import summarize_prompts
from headscope.models.loading import HeadscopeModel
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptItem
from headscope.reports.scoring import scoring_prompt

#: Sink heads: α_0 above this (Gu et al. 2025).
SINK_THRESHOLD = 0.3
#: Pruning curves are evaluated on at most this many prompts (the first ones).
PRUNING_PROMPTS = 64


@dataclass(frozen=True)
class Summaries:
    """- `taxonomy`: category → `[layer, head]` score, mean over prompts (NaN where
      undefined for every prompt); `labels[layer][head]`: primary label (`head_labels`).
    - `sink_alpha`: α_0 (sink score of the first token) per `[layer, head]`, mean
      over prompts; `sink_heads`: heads with α_0 > SINK_THRESHOLD; `sink_example`:
      α_k `[layer, head, key]` of the first prompt with its `sink_tokens`.
    - `influence`, `influence_baseline`: cumulative influence by distance
      `[layer, distance]` (head-averaged maps, no residual; Wu et al. 2025), the
      mean over prompts of each prompt's normalised curve (each distance over the
      prompts long enough to have it), for the model and for the causal mask
      alone; `peak_distance[layer]`: the argmax of the model's curve.
    - `pruning_fractions`, `pruning`: method → metric after masking the
      least important fraction of heads (that method's ranking), on the first
      `pruning_prompts` prompts; `clean_metric`: the unmasked value.
    """

    taxonomy: dict[str, np.ndarray]
    labels: list[list[str]]
    sink_alpha: np.ndarray
    sink_heads: list[tuple[int, int]]
    sink_example: np.ndarray
    sink_tokens: tuple[str, ...]
    bos_prepended: bool
    influence: np.ndarray
    influence_baseline: np.ndarray
    peak_distance: list[int]
    pruning_fractions: list[float]
    pruning: dict[str, list[float]]
    clean_metric: float
    pruning_prompts: int


def summarize(
    model: HeadscopeModel,
    items: Sequence[PromptItem],
    config: ReportConfig,
    means: Mapping[str, np.ndarray],
) -> Summaries:
    """Every summary of the report (see `Summaries`); `means[method]` is that
    method's mean score `[layer, head]`, higher = more important."""
    prompts = [scoring_prompt(item) for item in items]
    truncate = config.on_long == "truncate"
    per_prompt = summarize_prompts(model, prompts, truncate=truncate, chunk=config.shard_size)
    categories: dict[str, list[np.ndarray]] = {}
    for summary in per_prompt:
        for name, score in summary.taxonomy.items():
            categories.setdefault(name, []).append(score)
    taxonomy_means = {name: _nanmean(values) for name, values in categories.items()}
    labels = taxonomy.head_labels({k: torch.from_numpy(v) for k, v in taxonomy_means.items()})
    sink_alpha = np.mean([summary.sinks[:, :, 0] for summary in per_prompt], axis=0)
    sink_heads = [
        (int(layer), int(head)) for layer, head in np.argwhere(sink_alpha > SINK_THRESHOLD)
    ]
    influence = _ragged_mean([summary.influence for summary in per_prompt])
    influence_baseline = _ragged_mean([summary.influence_baseline for summary in per_prompt])
    peak = [int(np.nanargmax(row)) for row in influence]

    pruned = prompts[:PRUNING_PROMPTS]
    orders = {method: torch.from_numpy(mean) for method, mean in means.items()}
    fractions, pruning, clean = pruning_curves(
        model,
        pruned,
        orders,
        config.metric,
        config.target,
        truncate=truncate,  # type: ignore[arg-type]
    )
    return Summaries(
        taxonomy=taxonomy_means,
        labels=labels,
        sink_alpha=sink_alpha,
        sink_heads=sink_heads,
        sink_example=per_prompt[0].sinks,
        sink_tokens=per_prompt[0].tokens,
        bos_prepended=any(summary.bos_prepended for summary in per_prompt),
        influence=influence,
        influence_baseline=influence_baseline,
        peak_distance=peak,
        pruning_fractions=fractions,
        pruning=pruning,
        clean_metric=clean,
        pruning_prompts=len(pruned),
    )


def _nanmean(values: list[np.ndarray]) -> np.ndarray:
    stack = np.stack(values)
    counts = np.isfinite(stack).sum(0)
    total = np.where(np.isfinite(stack), stack, 0.0).sum(0)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def _ragged_mean(curves: list[np.ndarray]) -> np.ndarray:
    """Mean of `[layer, distance]` curves of different lengths, per distance over
    the curves that reach it."""
    width = max(curve.shape[-1] for curve in curves)
    stack = np.full((len(curves), curves[0].shape[0], width), np.nan)
    for i, curve in enumerate(curves):
        stack[i, :, : curve.shape[-1]] = curve
    return _nanmean(list(stack))
