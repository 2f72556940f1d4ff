"""Uncertainty of a mean over units (prompts, shards, seeds): percentile
bootstrap intervals, seeded and reproducible (Efron & Tibshirani 1993, "An
Introduction to the Bootstrap"; docs/methods.md §2.10).

Every head score headscope shows is a mean over units; its interval says how
much that mean would move under a different draw of the same kind of units. An
effect whose interval includes zero is not significant at that level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from scipy import stats
from torch import Tensor

from headscope.errors import InputError

#: Bootstrap resamples: the percentile endpoints move by well under 1% of the
#: interval's width between seeds at this count.
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """`mean` over units and its `level` percentile-bootstrap interval
    [`low`, `high`], per cell of the score grid; NaN bounds with one unit (no
    spread to resample). `n` is the number of units behind each mean."""

    mean: Float[Tensor, "*cell"]
    low: Float[Tensor, "*cell"]
    high: Float[Tensor, "*cell"]
    n: int
    level: float

    @property
    def significant(self) -> Bool[Tensor, "*cell"]:
        """True where the interval excludes zero (False where it is undefined)."""
        return (self.low > 0) | (self.high < 0)


def bootstrap_interval(
    values: Float[Tensor, "unit ..."],
    *,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The mean over the first axis and its percentile-bootstrap interval
    (`scipy.stats.bootstrap`, method "percentile", seeded).

    Units are resampled with replacement `resamples` times; the bounds are the
    (1 − level)/2 and (1 + level)/2 quantiles of the resampled means (all
    units equal: a zero-width interval at that value). NaN
    units are rejected. Memory: resamples × cells float64.
    """
    if not isinstance(values, Tensor) or values.dim() < 1 or values.shape[0] < 1:
        raise InputError("values must be a tensor [unit, ...] with at least one unit")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise InputError(f"resamples must be >= 1, got {resamples}")
    data = values.detach().double().cpu()
    if bool(torch.isnan(data).any()):
        raise InputError("values contain NaN")
    n = data.shape[0]
    mean = data.mean(0)
    if n < 2:
        nan = torch.full_like(mean, float("nan"))
        return Interval(mean, nan, nan.clone(), n, level)
    result = stats.bootstrap(
        (data.numpy(),),
        np.mean,
        axis=0,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    low = torch.as_tensor(np.asarray(interval.low, dtype=np.float64)).reshape(mean.shape)
    high = torch.as_tensor(np.asarray(interval.high, dtype=np.float64)).reshape(mean.shape)
    return Interval(mean, low, high, n, level)
