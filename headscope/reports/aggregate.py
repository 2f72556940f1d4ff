"""Dataset-level aggregates of per-unit head scores: means with 95% percentile
bootstrap intervals over units (prompts; seeds for CHG), rank agreement
between methods, and top heads ranked by magnitude with their sign."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from headscope.analyses.uncertainty import RESAMPLES, bootstrap_interval

#: The interval every report aggregate carries.
LEVEL = 0.95
INTERVAL = f"percentile bootstrap, {RESAMPLES} resamples"
#: Bootstrap memory per call: resamples × units × cells float64 (the resampled
#: units are gathered before they are averaged); cells are taken in chunks below it.
_BOOTSTRAP_BYTES = 256 * 2**20


@dataclass(frozen=True)
class MethodAggregate:
    """Per `[layer, head]`: the mean over units (prompts, or seeds for CHG),
    its `level` percentile-bootstrap interval [`low`, `high`] (NaN with a
    single unit), and the unit count."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int
    level: float = LEVEL

    @property
    def defined(self) -> np.ndarray:
        """Where the interval is defined (more than one unit)."""
        return np.isfinite(self.low) & np.isfinite(self.high)

    @property
    def significant(self) -> np.ndarray:
        """True where the interval excludes zero (False where it is undefined)."""
        return (self.low > 0) | (self.high < 0)


def aggregate(scores: np.ndarray, *, level: float = LEVEL) -> MethodAggregate:
    """`scores` `[unit, layer, head]` → mean and percentile-bootstrap interval
    (`analyses.uncertainty.bootstrap_interval`, RESAMPLES seeded resamples).
    The same seeded resamples of units serve every cell, so the heads can be
    taken in chunks that bound the memory (the intervals of one call, up to
    float rounding); the result is deterministic."""
    if scores.ndim != 3 or scores.shape[0] == 0:
        raise ValueError(
            f"scores must be [unit, layer, head] with at least one unit, got {scores.shape}"
        )
    n, layers, heads = scores.shape
    flat = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float64).reshape(n, -1))
    chunk = max(1, _BOOTSTRAP_BYTES // (8 * RESAMPLES * n))
    parts = [
        bootstrap_interval(flat[:, start : start + chunk], level=level)
        for start in range(0, flat.shape[1], chunk)
    ]

    def grid(name: str) -> np.ndarray:
        return torch.cat([getattr(part, name) for part in parts]).numpy().reshape(layers, heads)

    return MethodAggregate(grid("mean"), grid("low"), grid("high"), n, level)


def rank_agreement(means: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Spearman correlation between every pair of methods' rankings: their
    mean head scores by magnitude (as `top_heads` ranks them)."""
    names = sorted(means)
    table: dict[str, dict[str, float]] = {a: {} for a in names}
    for a in names:
        for b in names:
            if a == b:
                table[a][b] = 1.0
                continue
            with warnings.catch_warnings():
                # a constant ranking (e.g. a degenerate CHG fit) has no correlation: NaN
                warnings.simplefilter("ignore", stats.ConstantInputWarning)
                rho = stats.spearmanr(np.abs(means[a]).ravel(), np.abs(means[b]).ravel()).statistic
            table[a][b] = float(rho) if np.isfinite(rho) else float("nan")
    return table


def sign(value: float) -> str:
    """ "+", "-" or "0": the direction of a signed score."""
    return "+" if value > 0 else "-" if value < 0 else "0"


def top_heads(mean: np.ndarray, k: int | None = None) -> list[dict]:
    """Heads by the magnitude of their mean score, most important first (ties:
    lower layer, then head), each with its signed score and its sign: a
    negative score is as large an effect the other way (ablating the head helps
    the metric; patching it moves the metric away from the clean run)."""
    layers, heads = mean.shape
    order = sorted(
        (
            (float(mean[layer, head]), layer, head)
            for layer in range(layers)
            for head in range(heads)
        ),
        key=lambda item: (-abs(item[0]), item[1], item[2]),
    )
    rows = [
        {"layer": layer, "head": head, "score": score, "sign": sign(score)}
        for score, layer, head in order
    ]
    return rows if k is None else rows[:k]
