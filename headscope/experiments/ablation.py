"""Head ablation at z and greedy pruning (docs/methods.md §2.1, §2.3).

- `ablation_scores`: metric(one head ablated) − metric(clean), for every head;
  zero (z ← 0), mean (z ← per-position mean over a reference set) or resample
  (z ← z of a random reference prompt, averaged over draws).
- `pruning_curve`: the greedy pruning curve of Michel et al. 2019, "Are Sixteen
  Heads Really Better than One?": the metric after ablating the least
  important fraction of heads.
- `clean_metric`: the metric on the unmodified model.

Every intervention runs through the batched engine (`probes.batched`): many
head masks per forward, the layers below the first ablated layer shared.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.analyses.ranking import rank_heads
from headscope.errors import InputError
from headscope.experiments.inputs import Prompts, as_batch, check_pairs
from headscope.experiments.metrics import MetricLike, resolve_metric
from headscope.experiments.progress import ProgressCallback, tracking
from headscope.models.loading import HeadscopeModel
from headscope.models.tokens import TokenBatch
from headscope.probes.batched import (
    Sharing,
    Source,
    check_batch_size,
    clean_values,
    evaluate_settings,
    plan,
)
from headscope.probes.interventions import ABLATION_MODES, AblationMode, mean_z, reference_z

HeadOrder = Float[Tensor, "layer head"] | Sequence[tuple[int, int]]
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(11))


def reference_source(
    model: HeadscopeModel,
    batch: TokenBatch,
    mode: AblationMode,
    reference: Prompts | None,
    n_settings: int,
    generator: torch.Generator,
) -> Source:
    if mode not in ABLATION_MODES:
        raise InputError(f"unknown ablation mode {mode!r}; choose from {ABLATION_MODES}")
    if mode == "zero":
        return Source()
    ref_batch = batch if reference is None else as_batch(model, reference)
    if ref_batch.length < batch.length:
        raise InputError(
            f"{mode} ablation needs reference prompts at least {batch.length} tokens long "
            f"(the longest reference has {ref_batch.length})"
        )
    zs, ref_batch = reference_z(model, ref_batch)
    if mode == "mean":
        means = mean_z(zs, ref_batch)
        return Source([m[None] for m in means], torch.zeros(n_settings, batch.batch_size).long())
    shape = (n_settings, batch.batch_size)
    index = torch.randint(0, ref_batch.batch_size, shape, generator=generator)
    return Source(zs, index)


def ablation_scores(
    model: HeadscopeModel,
    prompts: Prompts,
    *,
    metric: MetricLike = "loss",
    mode: AblationMode = "zero",
    reference: Prompts | None = None,
    draws: int = 3,
    batch_size: int = 16,
    per_prompt: bool = False,
    seed: int = 0,
    reuse_lower_layers: bool = True,
    progress: bool = False,
    callback: ProgressCallback | None = None,
) -> Float[Tensor, "layer head"] | Float[Tensor, "prompt layer head"]:
    """metric(one head ablated) − metric(clean), for every head.

    Positive scores mean ablating the head raises the metric (for a loss: the
    head helps; for a higher-is-better metric such as logit difference the
    important heads score negative). `mode` (the caller records it with the
    scores): "zero" (z ← 0), "mean" (z ← per-position mean of z over
    `reference`), "resample" (z ← z of a random `reference` prompt, a fresh draw
    per ablated row, averaged over `draws` draws). `reference` defaults to the
    prompts themselves and must be at least as long.

    Returns `[layer, head]` (mean over prompts, float64) or, with
    `per_prompt=True`, `[prompt, layer, head]`. One forward per chunk of
    `batch_size` sequences, each row with its own mask; the layers below the
    ablated layer run once per chunk (`reuse_lower_layers`, exact). Memory: one
    forward of batch_size sequences plus, for mean/resample, the reference z of
    every layer.
    """
    check_batch_size(batch_size)
    batch = as_batch(model, prompts)
    resolved = resolve_metric(model, metric, batch)
    n_layers, n_heads = model.spec.n_layers, model.spec.n_heads
    n_draws = draws if mode == "resample" else 1
    if n_draws < 1:
        raise InputError(f"draws must be >= 1, got {draws}")
    single = torch.eye(n_layers * n_heads).reshape(-1, n_layers, n_heads)
    amounts = single.repeat(n_draws, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    source = reference_source(model, batch, mode, reference, amounts.shape[0], generator)
    clean = clean_values(model, batch, resolved, batch_size)
    plan_length = len(plan(amounts, batch.batch_size, resolved.group, batch_size))
    with tracking(plan_length, progress, callback, "ablation") as tracker:
        ablated = evaluate_settings(
            model,
            batch,
            resolved,
            amounts,
            source,
            batch_size=batch_size,
            sharing=Sharing(reuse_lower_layers),
            on_step=tracker.step,
        )
    ablated = ablated.reshape(n_draws, n_layers * n_heads, -1).mean(0)
    scores = (ablated - clean[None]).T.reshape(-1, n_layers, n_heads)
    return scores if per_prompt else scores.mean(0)


def _ranking(model: HeadscopeModel, order: HeadOrder) -> list[tuple[int, int]]:
    spec = model.spec
    if isinstance(order, Tensor):
        if tuple(order.shape) != (spec.n_layers, spec.n_heads):
            raise InputError(
                f"importance must have shape [layer, head] = [{spec.n_layers}, {spec.n_heads}], "
                f"got {list(order.shape)}"
            )
        return [(layer, head) for layer, head, _ in rank_heads(order)]
    pairs = check_pairs(model, [item[:2] for item in order])
    if len(set(pairs)) != len(pairs) or len(pairs) != spec.n_layers * spec.n_heads:
        raise InputError(
            f"a ranked order must list each of the {spec.n_layers * spec.n_heads} heads once"
        )
    return pairs


def pruning_curve(
    model: HeadscopeModel,
    prompts: Prompts,
    order: HeadOrder,
    *,
    metric: MetricLike = "loss",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    mode: AblationMode = "zero",
    reference: Prompts | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> tuple[Float[Tensor, " fraction"], Float[Tensor, " fraction"]]:
    """Greedy pruning curve (Michel et al. 2019): for each fraction p, ablate
    the round(p·L·H) least important heads and evaluate the metric (mean over
    prompts). `order`: an importance tensor `[layer, head]` (higher = more
    important) or a ranked list of (layer, head), most important first (as
    `rank_heads` returns; every head once). All fractions run batched, as in
    `ablation_scores`. Returns (fractions, values), float64.
    """
    check_batch_size(batch_size)
    ranking = _ranking(model, order)
    fraction_tensor = torch.tensor([float(f) for f in fractions], dtype=torch.float64)
    if fraction_tensor.numel() == 0 or bool(((fraction_tensor < 0) | (fraction_tensor > 1)).any()):
        raise InputError("fractions must be a non-empty list of values in [0, 1]")
    batch = as_batch(model, prompts)
    resolved = resolve_metric(model, metric, batch)
    spec = model.spec
    total = spec.n_layers * spec.n_heads
    amounts = torch.zeros(len(fraction_tensor), spec.n_layers, spec.n_heads)
    for i, fraction in enumerate(fraction_tensor.tolist()):
        for layer, head in ranking[::-1][: round(fraction * total)]:
            amounts[i, layer, head] = 1
    generator = torch.Generator().manual_seed(seed)
    source = reference_source(model, batch, mode, reference, len(amounts), generator)
    values = evaluate_settings(
        model, batch, resolved, amounts, source, batch_size=batch_size, sharing=Sharing()
    )
    return fraction_tensor, values.mean(1)


def clean_metric(
    model: HeadscopeModel, prompts: Prompts, *, metric: MetricLike = "loss", batch_size: int = 16
) -> Float[Tensor, " prompt"]:
    """The metric on the unmodified model, per prompt (float64)."""
    batch = as_batch(model, prompts)
    return clean_values(model, batch, resolve_metric(model, metric, batch), batch_size)
