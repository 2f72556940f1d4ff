"""Attention probabilities together with the gradient of a target with respect to them.

Every head computes z = A·V (its output before W_O), so ∂T/∂A = ∂T/∂z · Vᵀ
exactly. headscope takes the gradient at z and V instead of at the pattern
hook: it works on every architecture, including BERT-style bridges whose
pattern hook fires after the fact, outside the autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel, Inputs, ModelOutput
from headscope.models.tokens import TokenBatch
from headscope.probes.sites import Site

Target = int | Callable[[ModelOutput, TokenBatch], Tensor] | None


@dataclass(frozen=True)
class AttentionGradients:
    """One prompt: `pattern` and `gradient` `[layer, head, query, key]` (float32),
    the target token (None for a callable target) and its logit."""

    pattern: Float[Tensor, "layer head query key"]
    gradient: Float[Tensor, "layer head query key"]
    target: int | None
    value: float


def attention_gradients(
    model: HeadscopeModel, inputs: Inputs | TokenBatch, target: Target = None
) -> AttentionGradients:
    """Patterns and ∂target/∂pattern for one prompt.

    `target`: None → the pre-softmax logit of the model's top prediction at the
    last position; an int → that token's logit at the last position; a callable
    `(ModelOutput, TokenBatch) -> scalar` → anything else (e.g. an embedding
    score for encoders). Models without a trained LM head need a callable.
    Memory: two `[layer, head, N, N]` float32 tensors plus one backward pass.
    """
    batch = inputs if isinstance(inputs, TokenBatch) else model.tokenize(inputs)
    if batch.batch_size != 1:
        raise InputError("attention gradients take one prompt at a time")
    if (target is None or isinstance(target, int)) and not model.spec.has_lm_head:
        raise InputError(
            f"{model.spec.name} has no trained LM head, so its logits mean nothing: "
            "pass target as a callable (ModelOutput, TokenBatch) -> scalar"
        )
    spec = model.spec
    patterns: dict[int, Tensor] = {}
    values: dict[int, Tensor] = {}
    zs: dict[int, Tensor] = {}

    def keep(store: dict[int, Tensor], layer: int, detach: bool):
        def hook(tensor: Tensor, hook: Any) -> Tensor:
            if detach:
                store[layer] = tensor.detach()
            else:
                tensor.retain_grad()
                store[layer] = tensor
            return tensor

        return hook

    hooks = []
    for layer in range(spec.n_layers):
        hooks.append((Site(layer, "pattern").hook_name, keep(patterns, layer, True)))
        hooks.append((Site(layer, "v").hook_name, keep(values, layer, True)))
        hooks.append((Site(layer, "z").hook_name, keep(zs, layer, False)))
    with torch.enable_grad():
        output = model.forward(batch, embedding=callable(target), hooks=hooks)
        chosen: int | None = None
        if callable(target):
            scalar = target(output, batch)
            if not isinstance(scalar, Tensor) or scalar.numel() != 1:
                raise InputError("the target callable must return a scalar tensor")
            scalar = scalar.reshape(())
        else:
            last = output.logits[0, batch.lengths[0] - 1]
            chosen = int(last.argmax()) if target is None else int(target)
            if not 0 <= chosen < spec.d_vocab:
                raise InputError(f"target token {chosen} is outside the vocabulary")
            scalar = last[chosen]
        scalar.backward()
    grads = []
    for layer in range(spec.n_layers):
        z_grad = zs[layer].grad  # [1, query, head, d_head]
        if z_grad is None:
            z_grad = torch.zeros_like(zs[layer])
        v = values[layer].repeat_interleave(spec.group_size, dim=2)  # kv heads -> query heads
        grads.append(torch.einsum("bqhd,bkhd->bhqk", z_grad, v)[0])
    pattern = torch.stack([patterns[layer][0] for layer in range(spec.n_layers)])
    return AttentionGradients(
        pattern=pattern.float(),
        gradient=torch.stack(grads).float(),
        target=chosen,
        value=float(scalar.detach()),
    )
