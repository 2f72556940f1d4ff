"""Lost-in-the-middle curves: a metric as a function of where the relevant item sits
(Liu et al. 2023, "Lost in the Middle"; docs/methods.md §3.3). The result and its
gaps live here; `headscope.experiments.position.position_curve` runs the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from headscope._deprecated import moved
from headscope.errors import InputError


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


__getattr__ = moved(__name__, {"position_curve": "headscope.experiments.position:position_curve"})
