"""Model-level summaries for a report, beside the head scores: head taxonomy,
attention sinks, position bias and greedy pruning curves.

Two executor tasks run the model (on the driver for the local backend, on a
Ray actor for the Ray backend), and their results are checkpointed beside the
shards (`reports.checkpoints`):

- `summarize_shard`: the per-prompt attention summaries of one shard's prompts
  (`experiments.summarize_prompts`, one captured forward per shard), computed
  in the same task as the shard's scores;
- `prune`: the greedy pruning curves, once every shard's scores are known
  (they rank heads by the magnitude of each method's mean score).

`reduce_summaries` then turns the per-prompt summaries and the curves into the
report's `Summaries`: pure numpy and `headscope.analyses`, no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from headscope.analyses import position, taxonomy
from headscope.experiments.scoring import pruning_curves
from headscope.experiments.summaries import PromptSummary, summarize_prompts
from headscope.models.loading import HeadscopeModel
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptItem
from headscope.reports.scoring import scoring_prompt

#: Sink heads: α_0 above this (Gu et al. 2025's ε), and at least SINK_RATIO times
#: uniform attention's α_0 (docs/methods.md §3.2, `position.SinkDecision`).
SINK_THRESHOLD = position.SINK_FLOOR
SINK_RATIO = position.SINK_RATIO
#: Pruning curves are evaluated on at most this many prompts (the first ones).
PRUNING_PROMPTS = 64


@dataclass(frozen=True)
class PruningCurves:
    """Greedy pruning (Michel et al. 2019): method → the metric after masking the
    least important `fractions` of heads by that method's |mean score|, on the
    first `n_prompts` prompts; `clean`: the unmasked metric."""

    fractions: tuple[float, ...]
    curves: dict[str, tuple[float, ...]]
    clean: float
    n_prompts: int


@dataclass(frozen=True)
class Summaries:
    """- `taxonomy`: category → `[layer, head]` score, mean over prompts (NaN where
      undefined for every prompt); `labels[layer][head]`: primary label (`head_labels`).
    - `sink_alpha`: α_0 (sink score of the first token) per `[layer, head]`, mean
      over prompts; `sink_heads`: heads with α_0 > SINK_THRESHOLD and at least
      SINK_RATIO × the mean over prompts of uniform attention's α_0; `sink_rule`: that
      rule in words; `causal`: the models' mask (None: unknown, then α_0 alone
      decides); `sink_example`: α_k `[layer, head, key]` of the first prompt with
      its `sink_tokens`.
    - `influence`, `influence_baseline`: cumulative influence by distance
      `[layer, distance]` (head-averaged maps, no residual; Wu et al. 2025), the
      mean over prompts of each prompt's normalised curve (each distance over the
      prompts long enough to have it), for the model and for the causal mask
      alone; `peak_distance[layer]`: the argmax of the model's curve.
    - `pruning_fractions`, `pruning`: method → metric after masking the
      least important fraction of heads (that method's ranking by magnitude), on the first
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
    sink_rule: str = f"α_0 > {SINK_THRESHOLD:g}"
    causal: bool | None = None


def summarize_shard(
    model: HeadscopeModel, items: Sequence[PromptItem], config: ReportConfig
) -> tuple[PromptSummary, ...]:
    """The `PromptSummary` of each of a shard's prompts, in order. One captured
    forward over the shard (the shard is one chunk, so the padding, and hence
    every float, is the same whichever process runs it); one intra-op thread."""
    return tuple(
        summarize_prompts(
            model,
            [scoring_prompt(item) for item in items],
            truncate=config.on_long == "truncate",
            chunk=config.shard_size,
        )
    )


def prune(
    model: HeadscopeModel,
    items: Sequence[PromptItem],
    config: ReportConfig,
    orders: Mapping[str, np.ndarray],
) -> PruningCurves:
    """Greedy pruning curves on the first PRUNING_PROMPTS of `items`, ranking
    heads by `orders[method]` `[layer, head]` (higher = more important; the
    report passes each method's |mean score|). Cost: 11 batched forwards per
    method over those prompts; one intra-op thread."""
    prompts = [scoring_prompt(item) for item in items[:PRUNING_PROMPTS]]
    ranked = {method: torch.from_numpy(np.array(order)) for method, order in orders.items()}
    fractions, curves, clean = pruning_curves(
        model,
        prompts,
        ranked,
        config.metric,
        config.target,  # type: ignore[arg-type]
        truncate=config.on_long == "truncate",
    )
    return PruningCurves(
        fractions=tuple(fractions),
        curves={method: tuple(values) for method, values in curves.items()},
        clean=clean,
        n_prompts=len(prompts),
    )


def reduce_summaries(per_prompt: Sequence[PromptSummary], pruning: PruningCurves) -> Summaries:
    """The report's `Summaries` from every prompt's summary, in prompt order,
    and the pruning curves (see `SummaryReducer`)."""
    reducer = SummaryReducer()
    for summary in per_prompt:
        reducer.add(summary)
    return reducer.result(pruning)


class SummaryReducer:
    """Reduces per-prompt summaries, fed one at a time in prompt order, into the
    report's `Summaries`. Pure numpy, no model. Sums run in prompt order (the
    same bits as summing the stacked arrays over prompts), so the same prompts
    give the same report on every backend and resume. Memory is independent of
    the number of prompts: running sums and counts `[layer, head]` per category
    and `[layer, distance]` per influence curve, plus the first prompt's sinks.
    """

    def __init__(self) -> None:
        self._count = 0
        self._taxonomy: dict[str, _RunningMean] = {}
        self._alpha: _RunningMean | None = None
        self._support: dict[str, np.ndarray] | None = {}
        self._sink_baseline = _RunningMean()  # uniform attention's α_0 per prompt
        self._sink_queries = 0  # queries that see key 0 (every query of every prompt)
        self._causal: set[bool | None] = set()
        self._influence = _RunningMean()
        self._baseline = _RunningMean()
        self._first: PromptSummary | None = None
        self._bos = False

    def add(self, summary: PromptSummary) -> None:
        if self._first is None:
            self._first = summary
        self._count += 1
        for name, score in summary.taxonomy.items():
            self._taxonomy.setdefault(name, _RunningMean()).add(score)
        if self._alpha is None:
            self._alpha = _RunningMean()
        self._alpha.add(summary.sinks[:, :, 0])
        if self._support is not None and summary.support:
            for name, count in summary.support.items():
                self._support[name] = self._support.get(name, 0) + np.asarray(count, np.int64)
        else:  # a summary without support (an older checkpoint): support unknown
            self._support = None
        n = summary.sinks.shape[-1]
        self._causal.add(summary.causal)
        if summary.causal is not None:
            self._sink_baseline.add(position.sink_baseline(n, causal=summary.causal)[:1].numpy())
        self._sink_queries += n
        self._influence.add(summary.influence)
        self._baseline.add(summary.influence_baseline)
        self._bos = self._bos or bool(summary.bos_prepended)

    def result(self, pruning: PruningCurves) -> Summaries:
        if self._first is None or self._alpha is None:
            raise ValueError("no prompt summaries to reduce")
        taxonomy_means = {name: mean.value() for name, mean in self._taxonomy.items()}
        # Support: defining queries summed over prompts (None when a summary lacks it).
        labels = taxonomy.head_labels(
            {k: torch.from_numpy(v) for k, v in taxonomy_means.items()},
            support=self._support,
        )
        # Every prompt has an α_0 for every head (the first key is seen by every query).
        sink_alpha = self._alpha.value()
        causal = next(iter(self._causal)) if len(self._causal) == 1 else None
        rule = f"α_0 > {SINK_THRESHOLD:g}"
        if None in self._causal:  # causality unknown (an older checkpoint): α_0 alone
            sinks = sink_alpha > SINK_THRESHOLD
        else:
            decision = position.SinkDecision(
                alpha=torch.from_numpy(sink_alpha)[..., None],
                baseline=torch.from_numpy(self._sink_baseline.value()),
                support=torch.tensor([self._sink_queries]),
                causal=next(iter(self._causal)) if len(self._causal) == 1 else None,
            )
            sinks = decision.sinks[..., 0].numpy()
            rule = decision.rule().replace("α_k", "α_0")
        sink_heads = [(int(layer), int(head)) for layer, head in np.argwhere(sinks)]
        influence = self._influence.value()
        return Summaries(
            taxonomy=taxonomy_means,
            labels=labels,
            sink_alpha=sink_alpha,
            sink_heads=sink_heads,
            sink_example=self._first.sinks,
            sink_tokens=self._first.tokens,
            bos_prepended=self._bos,
            influence=influence,
            influence_baseline=self._baseline.value(),
            peak_distance=[int(np.nanargmax(row)) for row in influence],
            pruning_fractions=list(pruning.fractions),
            pruning={method: list(values) for method, values in pruning.curves.items()},
            clean_metric=pruning.clean,
            pruning_prompts=pruning.n_prompts,
            sink_rule=rule,
            causal=causal,
        )


class _RunningMean:
    """Mean over the arrays added of each element's finite values (NaN where
    none was finite). Arrays may grow along their last axis (influence curves
    of longer prompts): each element is averaged over the arrays that reach it."""

    def __init__(self) -> None:
        self._total: np.ndarray | None = None
        self._count: np.ndarray | None = None

    def add(self, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float64)
        if self._total is None or self._count is None:
            self._total = np.zeros(value.shape)
            self._count = np.zeros(value.shape, dtype=np.int64)
        width = max(self._total.shape[-1], value.shape[-1])
        self._total = _widen(self._total, width)
        self._count = _widen(self._count, width)
        finite = np.isfinite(value)
        sl = (..., slice(0, value.shape[-1]))
        self._total[sl] = self._total[sl] + np.where(finite, value, 0.0)
        self._count[sl] = self._count[sl] + finite

    def value(self) -> np.ndarray:
        assert self._total is not None and self._count is not None  # add() was called
        return np.where(self._count > 0, self._total / np.maximum(self._count, 1), np.nan)


def _widen(array: np.ndarray, width: int) -> np.ndarray:
    if array.shape[-1] == width:
        return array
    wider = np.zeros((*array.shape[:-1], width), dtype=array.dtype)
    wider[..., : array.shape[-1]] = array
    return wider
