"""Activation and attribution patching per head (docs/methods.md §2.5): clean z
put into a corrupted run, exactly or to first order (attribution patching:
Nanda 2023; Syed, Rager & Conmy 2023, "Attribution Patching Outperforms
Automated Circuit Discovery"); per head and position with the `_positions`
variants; `patching_ends` gives the clean and corrupted metric (the 1 and the
0 of every fraction) without refusing a zero gap."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError
from headscope.experiments.inputs import Prompts, as_batch, check_pairs
from headscope.experiments.metrics import Metric, MetricLike, resolve_metric
from headscope.experiments.progress import ProgressCallback, tracking
from headscope.models.loading import HeadscopeModel
from headscope.models.tokens import TokenBatch
from headscope.probes.batched import Source, check_batch_size, evaluate_settings, plan
from headscope.probes.run import run
from headscope.probes.sites import Site, layer_sites

HeadSet = Sequence[tuple[int, int]] | Float[Tensor, "layer head"] | Float[Tensor, "set layer head"]


@dataclass(frozen=True)
class _PatchSetup:
    clean: TokenBatch
    corrupted: TokenBatch
    metric: Metric
    clean_z: list[Tensor]
    clean_value: float
    corrupted_value: float

    @property
    def difference(self) -> float:
        return self.clean_value - self.corrupted_value


def _patch_setup(
    model: HeadscopeModel, clean: Prompts, corrupted: Prompts, metric: MetricLike
) -> _PatchSetup:
    clean_batch, corrupted_batch = as_batch(model, clean), as_batch(model, corrupted)
    if clean_batch.batch_size != corrupted_batch.batch_size:
        raise InputError(
            f"{clean_batch.batch_size} clean prompts but {corrupted_batch.batch_size} "
            "corrupted ones; patching pairs them one to one"
        )
    for i, (a, b) in enumerate(zip(clean_batch.lengths, corrupted_batch.lengths, strict=True)):
        if a != b:
            raise InputError(
                f"clean prompt {i} has {a} tokens and its corrupted prompt {b}; patching "
                "needs equal token lengths (z is patched position by position)"
            )
    resolved = resolve_metric(model, metric, clean_batch)
    sites = layer_sites("z", model.spec.n_layers)
    # Each metric right after its own forward: a metric may read state the
    # forward left behind (e.g. an activation kept by the caller's own edit).
    with torch.no_grad():
        clean_run = run(model, clean_batch, read=sites, embedding=resolved.needs_embedding)
        clean_values = resolved(clean_run.output, clean_batch).double().cpu()
        corrupted_run = run(model, corrupted_batch, embedding=resolved.needs_embedding)
        corrupted_values = resolved(corrupted_run.output, corrupted_batch).double().cpu()
    clean_z = [clean_run[site] for site in sites]
    setup = _PatchSetup(
        clean_batch,
        corrupted_batch,
        resolved,
        clean_z,
        float(clean_values.mean()),
        float(corrupted_values.mean()),
    )
    scale = max(1.0, abs(setup.clean_value), abs(setup.corrupted_value))
    if abs(setup.difference) <= 1e-6 * scale:
        raise InputError(
            f"the metric is the same on the clean ({setup.clean_value:.6g}) and corrupted "
            f"({setup.corrupted_value:.6g}) prompts, so patching has nothing to restore"
        )
    return setup


def patching_ends(
    model: HeadscopeModel, clean: Prompts, corrupted: Prompts, metric: MetricLike
) -> tuple[Float[Tensor, " prompt"], Float[Tensor, " prompt"]]:
    """The two ends of the patching scale, per prompt: the metric on the clean
    prompts (1 on the scale) and on the corrupted ones (0), resolved on the
    clean prompts as the patching functions resolve it. Unlike them it does
    not refuse a zero gap: it is how a caller finds one. Two forwards; float64."""
    clean_batch, corrupted_batch = as_batch(model, clean), as_batch(model, corrupted)
    if clean_batch.batch_size != corrupted_batch.batch_size:
        raise InputError(
            f"{clean_batch.batch_size} clean prompts but {corrupted_batch.batch_size} "
            "corrupted ones; patching pairs them one to one"
        )
    resolved = resolve_metric(model, metric, clean_batch)
    with torch.no_grad():
        clean_run = run(model, clean_batch, embedding=resolved.needs_embedding)
        clean_values = resolved(clean_run.output, clean_batch).double().cpu()
        corrupted_run = run(model, corrupted_batch, embedding=resolved.needs_embedding)
        corrupted_values = resolved(corrupted_run.output, corrupted_batch).double().cpu()
    return clean_values, corrupted_values


def _patch_values(
    model: HeadscopeModel,
    setup: _PatchSetup,
    amounts: Float[Tensor, "setting layer head"],
    *,
    batch_size: int,
    on_step: Callable[[], None] | None = None,
) -> Float[Tensor, " setting"]:
    size = setup.corrupted.batch_size
    index = torch.arange(size).expand(amounts.shape[0], size)
    values = evaluate_settings(
        model,
        setup.corrupted,
        setup.metric,
        amounts,
        Source(setup.clean_z, index),
        batch_size=batch_size,
        on_step=on_step,
    )
    return (values.mean(1) - setup.corrupted_value) / setup.difference


def _head_sets(model: HeadscopeModel, heads: Any) -> Float[Tensor, "setting layer head"]:
    spec = model.spec
    if isinstance(heads, Tensor):
        sets = heads.float()
        if sets.dim() == 2:
            sets = sets[None]
        if sets.dim() != 3 or tuple(sets.shape[1:]) != (spec.n_layers, spec.n_heads):
            raise InputError(
                f"head masks must have shape [layer, head] = [{spec.n_layers}, {spec.n_heads}] "
                f"or [set, layer, head], got {list(heads.shape)}"
            )
        if bool(((sets < 0) | (sets > 1)).any()):
            raise InputError("head masks must lie in [0, 1] (1 patches the head)")
        return sets
    mask = torch.zeros(1, spec.n_layers, spec.n_heads)
    for layer, head in check_pairs(model, heads):
        mask[0, layer, head] = 1
    return mask


def patch_heads(
    model: HeadscopeModel,
    clean: Prompts,
    corrupted: Prompts,
    heads: HeadSet,
    metric: MetricLike,
    *,
    batch_size: int = 16,
) -> Float[Tensor, ""] | Float[Tensor, " set"]:
    """Patch a set of heads at once: run `corrupted`, put the clean z of the
    chosen heads back (at every position), and return (M_patch − M_corr) /
    (M_clean − M_corr), the metric averaged over prompts before the ratio.

    `heads`: (layer, head) pairs, a `[layer, head]` mask (values in [0, 1]
    interpolate z) or `[set, layer, head]` masks (one value per set). Returns a
    0-d tensor for one set, `[set]` otherwise. Patching no head gives 0.
    Patching every head gives exactly 1 when the metric reads only positions
    whose own tokens are the same in both prompts (information from other
    positions reaches them only through attention); at positions whose tokens
    differ, the embedding path is not patched.
    """
    check_batch_size(batch_size)
    sets = _head_sets(model, heads)
    setup = _patch_setup(model, clean, corrupted, metric)
    values = _patch_values(model, setup, sets, batch_size=batch_size)
    many = isinstance(heads, Tensor) and heads.dim() == 3
    return values if many else values[0]


def activation_patching(
    model: HeadscopeModel,
    clean: Prompts,
    corrupted: Prompts,
    metric: MetricLike,
    *,
    batch_size: int = 16,
    progress: bool = False,
    callback: ProgressCallback | None = None,
) -> Float[Tensor, "layer head"]:
    """Activation patching per head: run `corrupted`, put one head's clean z
    back (every position), report (M_patch − M_corr)/(M_clean − M_corr) with the
    metric averaged over prompts before the ratio (1: the head alone restores
    the clean metric; 0: no effect).

    `clean` and `corrupted` pair up prompt by prompt and must have equal token
    lengths (InputError otherwise). The metric is resolved on the clean prompts
    (per-prompt data, clean embeddings) and scores each run's own batch: for a
    loss on a corrupted continuation, pass `next_token_loss(labels=clean_ids)`.
    Many heads per forward, as in `ablation_scores`. Memory: the clean z of
    every layer (L·prompts·N·H·d_head floats) plus one forward of batch_size
    sequences. Returns float64.
    """
    check_batch_size(batch_size)
    setup = _patch_setup(model, clean, corrupted, metric)
    spec = model.spec
    amounts = torch.eye(spec.n_layers * spec.n_heads).reshape(-1, spec.n_layers, spec.n_heads)
    steps = len(plan(amounts, setup.corrupted.batch_size, setup.metric.group, batch_size))
    with tracking(steps, progress, callback, "activation patching") as tracker:
        values = _patch_values(model, setup, amounts, batch_size=batch_size, on_step=tracker.step)
    return values.reshape(spec.n_layers, spec.n_heads)


def attribution_patching(
    model: HeadscopeModel, clean: Prompts, corrupted: Prompts, metric: MetricLike
) -> Float[Tensor, "layer head"]:
    """Attribution patching (Nanda 2023; Syed et al. 2023): the first-order
    estimate of activation patching, (z_clean − z_corr)·∂M/∂z summed over
    positions and d_head, with ∂M/∂z taken on the corrupted run and M the
    metric averaged over prompts; divided by M_clean − M_corr like
    `activation_patching`. Exact when the metric is linear in the head's z.

    Two forwards (clean, corrupted) and one backward for all heads. Memory:
    the clean z of every layer plus the autograd graph of the corrupted
    forward over all prompts. Returns float64.
    """
    setup = _patch_setup(model, clean, corrupted, metric)
    terms = _attribution_terms(model, setup)
    return torch.stack([term.sum(0) for term in terms]) / setup.difference


def _attribution_terms(model: HeadscopeModel, setup: _PatchSetup) -> list[Tensor]:
    """Per layer, (z_clean − z_corr)·∂M/∂z summed over prompts and d_head:
    `[position, head]` float64 on the CPU (zeros where M does not depend on z)."""
    sites = layer_sites("z", model.spec.n_layers)
    # A zero leaf added to each layer's z: its gradient is ∂M/∂z, and unlike a
    # detached z it keeps the paths from lower heads through this one.
    leaves = {site: _ZeroLeaf() for site in sites}
    with torch.enable_grad():
        result = run(
            model,
            setup.corrupted,
            read=sites,
            edit=leaves,
            embedding=setup.metric.needs_embedding,
        )
        value = setup.metric(result.output, setup.corrupted).mean()
        gradients = torch.autograd.grad(
            value, [leaves[site].leaf for site in sites], allow_unused=True
        )
    terms = []
    for layer, gradient in enumerate(gradients):
        if gradient is None:
            terms.append(
                torch.zeros(setup.corrupted.length, model.spec.n_heads, dtype=torch.float64)
            )
            continue
        delta = setup.clean_z[layer].to(gradient) - result[sites[layer]].to(gradient)
        terms.append((delta * gradient).double().sum((0, 3)).cpu())
    return terms


def _check_aligned(setup: _PatchSetup) -> None:
    if len(set(setup.clean.lengths)) > 1:
        raise InputError(
            f"per-position patching needs prompts of one token length (positions line up "
            f"across prompts), got lengths {sorted(set(setup.clean.lengths))}"
        )


def attribution_patching_positions(
    model: HeadscopeModel, clean: Prompts, corrupted: Prompts, metric: MetricLike
) -> Float[Tensor, "layer head position"]:
    """Attribution patching per head and position: the terms of
    `attribution_patching` before the sum over positions, so the positions of
    a head sum to its `attribution_patching` score. Prompts must share one
    token length. Same cost as `attribution_patching`. Returns float64."""
    setup = _patch_setup(model, clean, corrupted, metric)
    _check_aligned(setup)
    terms = _attribution_terms(model, setup)
    return torch.stack([term.T for term in terms]) / setup.difference


def activation_patching_positions(
    model: HeadscopeModel,
    clean: Prompts,
    corrupted: Prompts,
    metric: MetricLike,
    heads: Sequence[tuple[int, int]],
    *,
    batch_size: int = 16,
    progress: bool = False,
    callback: ProgressCallback | None = None,
) -> Float[Tensor, "set position"]:
    """Activation patching per (head, position): run `corrupted`, put back the
    clean z of one head at one position only, and report (M_patch − M_corr) /
    (M_clean − M_corr), the metric averaged over prompts before the ratio
    (Meng et al. 2022 patch states position by position; here the state is one
    head's z). Row i of the result is `heads[i]`, one column per position.

    Prompts must share one token length. A head of the last layer changes only
    the logits at its own position, so for a loss its positions add up to its
    `activation_patching` score. Cost: len(heads)·N settings, ⌈settings·P /
    batch_size⌉ forwards for P prompts of N tokens. Memory: the clean z of every
    layer plus one forward of batch_size sequences. Returns float64.
    """
    check_batch_size(batch_size)
    pairs = check_pairs(model, heads)
    if not pairs:
        raise InputError("choose at least one head to patch position by position")
    setup = _patch_setup(model, clean, corrupted, metric)
    _check_aligned(setup)
    prompts, length = setup.corrupted.batch_size, setup.corrupted.length
    settings = [(layer, head, position) for layer, head in pairs for position in range(length)]
    copies = max(1, batch_size // prompts)
    chunks = [settings[i : i + copies] for i in range(0, len(settings), copies)]
    values = torch.empty(len(settings), dtype=torch.float64)
    with tracking(len(chunks), progress, callback, "activation patching by position") as tracker:
        for number, chunk in enumerate(chunks):
            prompt_rows = torch.arange(prompts).repeat(len(chunk))
            tiled = setup.corrupted.select(prompt_rows)
            edits = _position_edits(model, setup, chunk, prompt_rows)
            with torch.no_grad():
                output = run(model, tiled, edit=edits, embedding=setup.metric.needs_embedding)
                rows = setup.metric(output.output, tiled, prompt_rows).double().cpu()
            start = number * copies
            values[start : start + len(chunk)] = rows.reshape(len(chunk), prompts).mean(1)
            tracker.step()
    fractions = (values - setup.corrupted_value) / setup.difference
    return fractions.reshape(len(pairs), length)


def _position_edits(
    model: HeadscopeModel,
    setup: _PatchSetup,
    chunk: Sequence[tuple[int, int, int]],
    prompt_rows: Tensor,
) -> dict[Site, Any]:
    """z ← clean z at (head, position) of each row's setting, per layer."""
    prompts, length = setup.corrupted.batch_size, setup.corrupted.length
    masks: dict[int, Tensor] = {}
    for index, (layer, head, position) in enumerate(chunk):
        mask = masks.setdefault(
            layer, torch.zeros(len(chunk) * prompts, length, model.spec.n_heads)
        )
        mask[index * prompts : (index + 1) * prompts, position, head] = 1
    edits: dict[Site, Any] = {}
    for layer, mask in masks.items():

        def edit(z: Tensor, layer: int = layer, mask: Tensor = mask) -> Tensor:
            source = setup.clean_z[layer][prompt_rows.to(setup.clean_z[layer].device)]
            amount = mask.to(z.device, z.dtype)[..., None]
            return z + amount * (source.to(z.device, z.dtype) - z)

        edits[Site(layer, "z")] = edit
    return edits


class _ZeroLeaf:
    """An edit that adds a zero tensor requiring grad, kept as `.leaf`."""

    leaf: Tensor

    def __call__(self, z: Tensor) -> Tensor:
        self.leaf = torch.zeros_like(z, requires_grad=True)
        return z + self.leaf
