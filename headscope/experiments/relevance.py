"""Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers"; docs/methods.md §1.3) and the attention gradients it needs.

Every head computes z = A·V (its output before W_O), so ∂T/∂A = ∂T/∂z · Vᵀ
exactly. headscope takes the gradient at z and V instead of at the pattern
hook: it works on every architecture, including BERT-style bridges whose
pattern hook fires after the fact, outside the autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.analyses.relevance import relevance_from_gradients
from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel, Inputs, ModelOutput
from headscope.models.tokens import TokenBatch
from headscope.probes.run import run
from headscope.probes.sites import layer_sites

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
    patterns, values, zs = (layer_sites(c, spec.n_layers) for c in ("pattern", "v", "z"))
    with torch.enable_grad():
        result = run(
            model,
            batch,
            read=[*patterns, *values, *zs],
            embedding=callable(target),
            keep_graph=True,
        )
        output = result.output
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
        z_grads = torch.autograd.grad(scalar, [result[site] for site in zs], allow_unused=True)
    grads = []
    for layer, z_grad in enumerate(z_grads):
        z = result[zs[layer]]
        z_grad = torch.zeros_like(z) if z_grad is None else z_grad  # [1, query, head, d_head]
        v = result[values[layer]].detach().repeat_interleave(spec.group_size, dim=2)
        grads.append(torch.einsum("bqhd,bkhd->bhqk", z_grad, v)[0])
    pattern = torch.stack([result[site].detach()[0] for site in patterns])
    return AttentionGradients(
        pattern=pattern.float(),
        gradient=torch.stack(grads).float(),
        target=chosen,
        value=float(scalar.detach()),
    )


def relevance(
    model: HeadscopeModel, inputs: Inputs | TokenBatch, target: Target = None
) -> Float[Tensor, "query key"]:
    """Relevance map of one prompt for `target` (default: the model's top
    prediction at the last position; see `attention_gradients`): Ā_l =
    mean_h[(∇A_l ⊙ A_l)⁺], R = I, then R ← R + Ā_l·R in forward layer order.
    Row −1 is the relevance of each input token for that prediction; rows do
    not sum to 1 (R ≥ I entrywise)."""
    captured = attention_gradients(model, inputs, target)
    return relevance_from_gradients(captured.pattern, captured.gradient)
