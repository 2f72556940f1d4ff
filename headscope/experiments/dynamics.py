"""Training dynamics: head taxonomy, importance and in-context loss at every
checkpoint of a series (docs/methods.md §2.13; Olsson et al. 2022, "In-context
Learning and Induction Heads").

    series = hs.load_checkpoints("toy-induction")
    dynamics = training_dynamics(series)                 # TrainingDynamics
    phase_change(dynamics, 1, 3)                         # where 1.3's induction score jumped

Every checkpoint runs on the same prompts (default: `repeat_prompts`, repeated
random common English words, the task toy-induction learns). `profile_model`
is one checkpoint's measurement, shared with `experiments.diffing`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.analyses.dynamics import TrainingDynamics, check_steps
from headscope.analyses.taxonomy import (
    CATEGORIES,
    HeadTaxonomy,
    head_labels,
    head_taxonomy,
    head_taxonomy_from_pattern,
)
from headscope.analyses.uncertainty import bootstrap_interval
from headscope.errors import InputError
from headscope.experiments.scoring import ScoringPrompt, score_heads
from headscope.models.checkpoints import CheckpointSeries
from headscope.models.loading import HeadscopeModel
from headscope.models.toy_training import WORDS
from headscope.probes.capture import capture

#: Taxonomy categories tracked over checkpoints by default (those defined on a
#: causal model; `next_token` is undefined there).
DYNAMICS_CATEGORIES: tuple[str, ...] = (
    "induction",
    "previous_token",
    "duplicate_token",
    "first_token_sink",
    "local",
    "uniform",
)
ProgressReport = Callable[[int, int, str], None]


def repeat_prompts(count: int = 16, length: int = 10, *, seed: int = 0) -> tuple[str, ...]:
    """`count` prompts "w_1 .. w_T w_1 .. w_T" of `length` distinct random words
    from toy-induction's 61 common English words (seeded): the second copy is
    predictable only in context, so the in-context loss and the induction
    scores measure the same skill. Any tokenizer reads them."""
    if count < 2 or length < 2:
        raise InputError(f"need count >= 2 and length >= 2, got {count} and {length}")
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        words = rng.sample(WORDS, length)
        prompts.append(" ".join(words + words))
    return tuple(prompts)


@dataclass(frozen=True)
class CheckpointProfile:
    """One model measured on a prompt set.

    `taxonomy`: the batch's taxonomy scores with support (§2.7); `per_prompt`:
    category → `[prompt, layer, head]` scores of each prompt alone (NaN where
    undefined); `labels`: primary labels `[layer][head]`; `importance`:
    `[prompt, layer, head]` ablation harm (None when not asked); `early_loss`
    and `late_loss`: `[prompt]` mean next-token loss on the early and late half
    of each prompt's predicted tokens; `pattern`, `lengths`: the maps
    `[prompt, layer, head, query, key]` (for map similarity)."""

    name: str
    taxonomy: HeadTaxonomy
    per_prompt: dict[str, Float[Tensor, "prompt layer head"]]
    labels: tuple[tuple[str, ...], ...]
    importance: Float[Tensor, "prompt layer head"] | None
    early_loss: Float[Tensor, " prompt"]
    late_loss: Float[Tensor, " prompt"]
    pattern: Float[Tensor, "prompt layer head query key"]
    lengths: Int[Tensor, " prompt"]
    causal: bool
    chance: dict[str, float]

    @property
    def in_context_loss(self) -> Float[Tensor, " prompt"]:
        return self.late_loss - self.early_loss


def _half_losses(model: HeadscopeModel, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Per prompt, the mean next-token loss over the first and the second half of
    its predicted tokens (positions 1..n−1), in float64."""
    batch = model.tokenize(list(prompts))
    with torch.no_grad():
        logits = model.forward(batch).logits.double().cpu()
    ids = batch.ids
    nll = -logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    early, late = [], []
    for row, length in enumerate(batch.lengths):
        predicted = nll[row, : length - 1]
        half = predicted.shape[0] // 2
        if half < 1:
            raise InputError(f"prompt {row} is too short for an early and a late half")
        early.append(predicted[:half].mean())
        late.append(predicted[half:].mean())
    return torch.stack(early), torch.stack(late)


def profile_model(
    model: HeadscopeModel,
    prompts: Sequence[str],
    *,
    importance: bool = True,
    categories: Sequence[str] = DYNAMICS_CATEGORIES,
) -> CheckpointProfile:
    """Measure `model` on `prompts`: taxonomy scores (batch and per prompt),
    labels, ablation importance (`score_heads` "ablation" on the loss, target
    "auto", zero ablation; needs an LM head) and the two half losses.
    Cost: one capture of every map (4·L·H·P·N² bytes), P·L·H/16 ablation
    forwards, one plain forward."""
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise InputError(f"unknown taxonomy categories {unknown}; choose from {CATEGORIES}")
    texts = list(prompts)
    if len(texts) < 2:
        raise InputError("need at least two prompts (intervals are over prompts)")
    record = capture(model, texts)
    taxonomy = head_taxonomy(record)
    ids = torch.as_tensor(record.token_ids)
    lengths = torch.as_tensor(record.lengths)
    bos_id = model.spec.bos_token_id
    bos = bool(bos_id is not None and (ids[:, 0] == bos_id).all())
    per_prompt: dict[str, list[Tensor]] = {name: [] for name in categories}
    for row, length in enumerate(lengths.tolist()):
        one = head_taxonomy_from_pattern(
            record.pattern[row, :, :, :length, :length],
            ids[row, :length],
            bos=bos,
            causal=model.spec.causal,
        )
        for name in categories:
            per_prompt[name].append(one.scores[name])
    scores = None
    if importance:
        if not model.spec.has_lm_head:
            raise InputError(
                f"{model.spec.name} has no trained LM head: importance on the loss is "
                "undefined; pass importance=False"
            )
        scores = score_heads(model, [ScoringPrompt(t) for t in texts], methods=("ablation",))
        scores = scores.methods["ablation"].scores.float()
    early, late = _half_losses(model, texts)
    labels = tuple(tuple(row) for row in head_labels(taxonomy))
    uniform = _uniform_pattern(lengths, ids.shape[1], causal=model.spec.causal)
    chance = head_taxonomy_from_pattern(
        uniform, ids, lengths=lengths, bos=bos, causal=model.spec.causal
    ).scores
    return CheckpointProfile(
        name=model.spec.name,
        taxonomy=taxonomy,
        per_prompt={name: torch.stack(values) for name, values in per_prompt.items()},
        labels=labels,
        importance=scores,
        early_loss=early,
        late_loss=late,
        pattern=record.pattern,
        lengths=lengths,
        causal=model.spec.causal,
        chance={name: float(chance[name][0, 0]) for name in categories},
    )


def _uniform_pattern(
    lengths: Int[Tensor, " prompt"], n: int, *, causal: bool
) -> Float[Tensor, "prompt 1 1 query key"]:
    """Each real query attending evenly to the keys it may see: the chance
    baseline of every taxonomy score on these prompts."""
    position = torch.arange(n)
    real = position[None] < lengths[:, None]
    visible = real[:, :, None] & real[:, None, :]
    if causal:
        visible &= position[None, :] <= position[:, None]
    weights = visible.float() / visible.sum(-1, keepdim=True).clamp_min(1)
    return weights[:, None, None]


def training_dynamics(
    series: CheckpointSeries | Iterable[tuple[int, HeadscopeModel]],
    prompts: Sequence[str] | None = None,
    *,
    importance: bool = True,
    categories: Sequence[str] = DYNAMICS_CATEGORIES,
    progress: ProgressReport | None = None,
) -> TrainingDynamics:
    """`profile_model` at every checkpoint of `series` (a `CheckpointSeries`,
    loaded one model at a time, or any (step, model) pairs), on the same
    `prompts` (default `repeat_prompts()`). Returns per-checkpoint taxonomy
    scores and labels, ablation importance with bootstrap intervals over
    prompts, and the in-context loss with its interval.
    Cost: one `profile_model` per checkpoint; memory: one model at a time."""
    texts = list(prompts) if prompts is not None else list(repeat_prompts())
    report = progress or (lambda done, total, label: None)
    total = len(series) if isinstance(series, CheckpointSeries) else 0
    name = series.name if isinstance(series, CheckpointSeries) else ""
    steps: list[int] = []
    profiles: list[CheckpointProfile] = []
    for index, (step, model) in enumerate(series):
        report(index, total, f"step {step}")
        profiles.append(profile_model(model, texts, importance=importance, categories=categories))
        steps.append(int(step))
        name = name or model.spec.name.split("@")[0]
        del model
    if not profiles:
        raise InputError("the checkpoint series is empty")
    shapes = {tuple(p.taxonomy.scores["induction"].shape) for p in profiles}
    if len(shapes) != 1:
        raise InputError(f"checkpoints differ in shape (layer, head): {sorted(shapes)}")
    report(len(profiles), len(profiles), "done")
    in_context = [bootstrap_interval(p.in_context_loss) for p in profiles]
    importance_mean = importance_low = importance_high = None
    if importance:
        intervals = [bootstrap_interval(p.importance) for p in profiles]  # type: ignore[arg-type]
        importance_mean = torch.stack([i.mean for i in intervals]).float()
        importance_low = torch.stack([i.low for i in intervals]).float()
        importance_high = torch.stack([i.high for i in intervals]).float()
    return TrainingDynamics(
        name=name,
        steps=check_steps(steps),
        scores={c: torch.stack([p.taxonomy.scores[c] for p in profiles]) for c in categories},
        support={c: tuple(int(p.taxonomy.support[c].max()) for p in profiles) for c in categories},
        labels=tuple(p.labels for p in profiles),
        in_context_loss=torch.stack([i.mean for i in in_context]).float(),
        in_context_low=torch.stack([i.low for i in in_context]).float(),
        in_context_high=torch.stack([i.high for i in in_context]).float(),
        early_loss=torch.stack([p.early_loss.mean() for p in profiles]).float(),
        late_loss=torch.stack([p.late_loss.mean() for p in profiles]).float(),
        prompts=len(texts),
        chance=profiles[0].chance,
        importance=importance_mean,
        importance_low=importance_low,
        importance_high=importance_high,
    )
