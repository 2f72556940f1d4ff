"""Training dynamics over a checkpoint series: what each head measured at each
step, and where a phase change happened (docs/methods.md §2.13).

Olsson et al. 2022 ("In-context Learning and Induction Heads") found induction
heads forming in a phase change: over a short window of training the
in-context loss (the loss late in the context minus the loss early in it)
drops sharply while the induction scores rise. `phase_change` finds the
checkpoint interval where a head's score rose fastest and the one where the
in-context loss dropped fastest (per training step: checkpoints are often
unevenly spaced), and says whether they coincide (the same or adjacent
intervals).

Pure: tensors in (built by `experiments.dynamics.training_dynamics`), no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError


@dataclass(frozen=True)
class TrainingDynamics:
    """Per-checkpoint head measurements of one training run.

    - `steps`: the training step of each checkpoint, increasing;
    - `scores`: taxonomy category → `[checkpoint, layer, head]` score (mean over
      prompts, docs/methods.md §2.7), `support` its defining queries per checkpoint;
    - `labels`: per checkpoint, the `[layer][head]` primary taxonomy labels;
    - `importance` (`[checkpoint, layer, head]`, or None when not computed):
      the harm of zero-ablating the head's z to the loss on the repeated tokens
      (`score_heads` "ablation", target "auto"), mean over prompts, with its
      95% bootstrap interval over prompts (`importance_low`, `importance_high`);
    - `in_context_loss` (`[checkpoint]`, nats): per prompt, the mean next-token
      loss on the late half of the predicted tokens minus that on the early
      half, averaged over prompts, with its bootstrap interval; `early_loss` and
      `late_loss` are the two halves (the baseline: a model that learned nothing
      in context has an in-context loss near 0);
    - `prompts`: how many prompts every number averages over (the support);
    - `chance`: category → the score of a head attending evenly to every key it
      may see, on the same prompts (the baseline a score is read against).
    """

    name: str
    steps: tuple[int, ...]
    scores: dict[str, Float[Tensor, "checkpoint layer head"]]
    support: dict[str, tuple[int, ...]]
    labels: tuple[tuple[tuple[str, ...], ...], ...]
    in_context_loss: Float[Tensor, " checkpoint"]
    in_context_low: Float[Tensor, " checkpoint"]
    in_context_high: Float[Tensor, " checkpoint"]
    early_loss: Float[Tensor, " checkpoint"]
    late_loss: Float[Tensor, " checkpoint"]
    prompts: int
    chance: dict[str, float]
    importance: Float[Tensor, "checkpoint layer head"] | None = None
    importance_low: Float[Tensor, "checkpoint layer head"] | None = None
    importance_high: Float[Tensor, "checkpoint layer head"] | None = None

    def head_series(
        self, layer: int, head: int, category: str = "induction"
    ) -> Float[Tensor, " checkpoint"]:
        """One head's `category` score at every checkpoint."""
        if category not in self.scores:
            raise InputError(f"no {category!r} scores; scored: {sorted(self.scores)}")
        return self.scores[category][:, layer, head]


@dataclass(frozen=True)
class PhaseChange:
    """The checkpoint interval where a head's score rose fastest per step
    (`rise`: the change over it, from `score_before` to `score_after` between
    `rise_steps`) and the one where the in-context loss dropped fastest
    (`drop`: nats over it, between `drop_steps`). `coincide`: the two
    intervals are the same or adjacent."""

    layer: int
    head: int
    category: str
    rise_steps: tuple[int, int]
    rise: float
    score_before: float
    score_after: float
    drop_steps: tuple[int, int]
    drop: float
    coincide: bool


def largest_step_change(
    values: Float[Tensor, " checkpoint"],
    *,
    direction: str,
    steps: Sequence[int] | None = None,
) -> tuple[int, float]:
    """The index i of the interval (i, i + 1) where `values` rose (`direction=
    "rise"`) or dropped ("drop") fastest, and the change over it (≥ 0 when any
    interval moved that way). With `steps`, "fastest" is per training step, so
    a long interval between sparse checkpoints does not win by its length
    alone; without, it is the change between consecutive checkpoints. Needs two
    checkpoints; NaN intervals are skipped."""
    if direction not in ("rise", "drop"):
        raise InputError(f"direction must be 'rise' or 'drop', got {direction!r}")
    if values.dim() != 1 or values.shape[0] < 2:
        raise InputError("a phase change needs at least two checkpoints")
    change = (values[1:] - values[:-1]).double()
    if direction == "drop":
        change = -change
    speed = change
    if steps is not None:
        found = check_steps(steps)
        if len(found) != values.shape[0]:
            raise InputError(f"{len(found)} steps for {values.shape[0]} values")
        speed = change / torch.tensor(found[1:], dtype=torch.float64).sub(
            torch.tensor(found[:-1], dtype=torch.float64)
        )
    index = int(torch.nan_to_num(speed, nan=float("-inf")).argmax())
    return index, float(change[index])


def phase_change(
    dynamics: TrainingDynamics, layer: int, head: int, category: str = "induction"
) -> PhaseChange:
    """Where `(layer, head)`'s `category` score rose fastest and where the
    in-context loss dropped fastest, per training step (Olsson et al. 2022: at
    an induction phase change they are the same interval)."""
    series = dynamics.head_series(layer, head, category)
    steps = dynamics.steps
    rise_index, rise = largest_step_change(series, direction="rise", steps=steps)
    drop_index, drop = largest_step_change(dynamics.in_context_loss, direction="drop", steps=steps)
    return PhaseChange(
        layer=layer,
        head=head,
        category=category,
        rise_steps=(steps[rise_index], steps[rise_index + 1]),
        rise=rise,
        score_before=float(series[rise_index]),
        score_after=float(series[rise_index + 1]),
        drop_steps=(steps[drop_index], steps[drop_index + 1]),
        drop=drop,
        coincide=abs(rise_index - drop_index) <= 1,
    )


def check_steps(steps: Sequence[int]) -> tuple[int, ...]:
    """Steps as a strictly increasing tuple of ints (InputError otherwise)."""
    found = tuple(int(s) for s in steps)
    if not found or any(b <= a for a, b in pairwise(found)):
        raise InputError(f"checkpoint steps must be strictly increasing, got {list(found)}")
    return found
