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


#: Below this |∂M/∂ξ| (metric units per unit gate) a gradient is numerical noise:
#: the metric is at an optimum in the gates (e.g. a cosine to the ungated output,
#: which is 1 and maximal when every gate is 1) and has no first-order signal.
GRADIENT_FLOOR = 1e-6


def gate_gradients(
    model: HeadscopeModel,
    prompts: Prompts,
    *,
    metric: MetricLike = "loss",
    batch_size: int = 16,
) -> Float[Tensor, "prompt layer head"]:
    """∂M_x/∂ξ_h per prompt x and head h (signed), with gates ξ = 1 on every
    head's z (float64, not normalised). Per-example gradients come from one backward:
    gates `[prompt, layer, head]` requiring grad, one row per prompt. Memory:
    the autograd graph of one forward of batch_size prompts."""
    check_batch_size(batch_size)
    batch = as_batch(model, prompts)
    resolved = resolve_metric(model, metric, batch)
    spec = model.spec
    rows_out = []
    for rows in prompt_chunks(batch.batch_size, batch_size, resolved.group):
        sub = batch.select(rows)
        gates = torch.ones(len(rows), spec.n_layers, spec.n_heads, requires_grad=True)
        with torch.enable_grad():
            with gate_heads(model, gates):
                output = run(model, sub, embedding=resolved.needs_embedding).output
            values = resolved(output, sub, rows)
            (gradient,) = torch.autograd.grad(values.sum(), gates)
        rows_out.append(gradient.double())
    return torch.cat(rows_out)


def normalize_per_layer(
    importance: Float[Tensor, "*prompt layer head"], floor: float = GRADIENT_FLOOR
) -> Float[Tensor, "*prompt layer head"]:
    """Divide each layer's scores by their L2 norm over the layer's heads
    (Michel et al. 2019). A layer whose largest score is below `floor` is left
    as it is: normalising numerical noise would turn it into "importance"."""
    norms = importance.norm(dim=-1, keepdim=True)
    signal = importance.abs().amax(dim=-1, keepdim=True) >= floor
    return torch.where(signal, importance / norms.clamp_min(1e-300), importance)


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
    heads (the paper's per-layer normalisation), except in a layer whose scores
    are all below `GRADIENT_FLOOR` (noise stays noise-sized; see
    `normalize_per_layer`). L_x is the metric's value on prompt x (the sign is
    irrelevant under |·|). Memory: the autograd graph of one forward of
    batch_size prompts. Returns float64.
    """
    if absolute not in ("per_example", "after_mean"):
        raise InputError(f"absolute must be 'per_example' or 'after_mean', got {absolute!r}")
    gradient = gate_gradients(model, prompts, metric=metric, batch_size=batch_size)
    per_example = absolute == "per_example"
    importance = gradient.abs().mean(0) if per_example else gradient.mean(0).abs()
    return normalize_per_layer(importance) if normalize else importance
