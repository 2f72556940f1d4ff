"""Head importance of Michel, Levy & Neubig 2019, "Are Sixteen Heads Really
Better than One?" (docs/methods.md §2.2): I_h = E_x |∂L_x/∂ξ_h| with a gate
ξ_h = 1 on each head's z."""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError
from headscope.experiments.inputs import Prompts, as_batch
from headscope.experiments.metrics import MetricLike, resolve_metric
from headscope.models.loading import HeadscopeModel
from headscope.probes.batched import check_batch_size, prompt_chunks
from headscope.probes.interventions import gate_heads
from headscope.probes.run import run

Absolute = Literal["per_example", "after_mean"]


def gradient_importance(
    model: HeadscopeModel,
    prompts: Prompts,
    *,
    metric: MetricLike = "loss",
    absolute: Absolute = "per_example",
    normalize: bool = True,
    batch_size: int = 16,
) -> Float[Tensor, "layer head"]:
    """Head importance of Michel et al. 2019 ("Are Sixteen Heads Really Better
    than One?"): I_h = E_x |∂L_x/∂ξ_h| with a gate ξ_h = 1 on each head's z.

    `absolute`: "per_example" (default, the paper's): the absolute value of each
    prompt's gradient, then the mean over prompts; "after_mean": the absolute
    value of the mean gradient (signed effects of different prompts cancel).
    `normalize`: divide each layer's scores by their L2 norm over the layer's
    heads (the paper's per-layer normalisation; a layer of zeros stays zero).
    L_x is the metric's value on prompt x (the sign is irrelevant under |·|).

    Per-example gradients come from one backward: gates `[prompt, layer, head]`
    requiring grad, one row per prompt. Memory: the autograd graph of one
    forward of batch_size prompts. Returns float64.
    """
    if absolute not in ("per_example", "after_mean"):
        raise InputError(f"absolute must be 'per_example' or 'after_mean', got {absolute!r}")
    check_batch_size(batch_size)
    batch = as_batch(model, prompts)
    resolved = resolve_metric(model, metric, batch)
    spec = model.spec
    total = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.float64)
    for rows in prompt_chunks(batch.batch_size, batch_size, resolved.group):
        sub = batch.select(rows)
        gates = torch.ones(len(rows), spec.n_layers, spec.n_heads, requires_grad=True)
        with torch.enable_grad():
            with gate_heads(model, gates):
                output = run(model, sub, embedding=resolved.needs_embedding).output
            values = resolved(output, sub, rows)
            (gradient,) = torch.autograd.grad(values.sum(), gates)
        gradient = gradient.double()
        total += gradient.abs().sum(0) if absolute == "per_example" else gradient.sum(0)
    importance = total / batch.batch_size
    if absolute == "after_mean":
        importance = importance.abs()
    if normalize:
        norms = importance.norm(dim=1, keepdim=True)
        importance = torch.where(norms > 0, importance / norms.clamp_min(1e-300), importance)
    return importance
