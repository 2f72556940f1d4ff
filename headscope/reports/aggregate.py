"""Dataset-level aggregates of per-prompt head scores: means, 95% confidence
intervals over prompts, rank agreement between methods, and top heads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class MethodAggregate:
    """Per `[layer, head]`: mean over units (prompts, or shards for CHG), the
    95% t-interval of the mean (NaN with a single unit), and the unit count."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int


def aggregate(scores: np.ndarray) -> MethodAggregate:
    """`scores` `[unit, layer, head]` → mean and 95% t confidence interval."""
    if scores.ndim != 3 or scores.shape[0] == 0:
        raise ValueError(
            f"scores must be [unit, layer, head] with at least one unit, got {scores.shape}"
        )
    n = scores.shape[0]
    mean = scores.mean(0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return MethodAggregate(mean, nan, nan, n)
    sem = scores.std(0, ddof=1) / np.sqrt(n)
    half = stats.t.ppf(0.975, df=n - 1) * sem
    return MethodAggregate(mean, mean - half, mean + half, n)


def rank_agreement(means: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Spearman correlation between every pair of methods' mean head scores."""
    names = sorted(means)
    table: dict[str, dict[str, float]] = {a: {} for a in names}
    for a in names:
        for b in names:
            if a == b:
                table[a][b] = 1.0
                continue
            rho = stats.spearmanr(means[a].ravel(), means[b].ravel()).statistic
            table[a][b] = float(rho) if np.isfinite(rho) else float("nan")
    return table


def top_heads(mean: np.ndarray, k: int | None = None) -> list[dict]:
    """Heads sorted by score, most important first (ties: lower layer, then head)."""
    layers, heads = mean.shape
    order = sorted(
        (
            (float(mean[layer, head]), layer, head)
            for layer in range(layers)
            for head in range(heads)
        ),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    rows = [{"layer": layer, "head": head, "score": score} for score, layer, head in order]
    return rows if k is None else rows[:k]
