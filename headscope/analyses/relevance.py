"""Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers").

Ā_l = mean_h[(∇A_l ⊙ A_l)⁺] (clamped at 0 before the head mean; ∇A taken with
respect to the probabilities the model used), then R = I and, in forward layer
order, R ← R + Ā_l·R. With ∇A ≡ 1, R = Π(I + Ā_l) = 2^L · rollout (docs/methods.md §1.3).
The model-running half (the backward pass) is `headscope.experiments.relevance`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from headscope._deprecated import moved
from headscope.analyses.checks import check_pattern
from headscope.errors import InputError


def relevance_from_gradients(
    pattern: Float[Tensor, "layer head query key"],
    gradient: Float[Tensor, "layer head query key"],
) -> Float[Tensor, "query key"]:
    """Chefer et al.'s relevance map R from patterns and their gradients.

    Row i of R is the relevance of each input token for the representation at
    position i; rows do not sum to 1 (R ≥ I entrywise). Inputs are not mutated.
    Memory: O(N²) in float64.
    """
    check_pattern(pattern, min_dims=4, allow_zero_rows=True)
    if gradient.shape != pattern.shape:
        raise InputError(
            f"gradient shape {tuple(gradient.shape)} differs from pattern {tuple(pattern.shape)}"
        )
    if not torch.isfinite(gradient).all():
        raise InputError("gradient contains NaN or infinite values")
    weighted = (gradient.double() * pattern.double()).clamp_min(0).mean(1)  # [layer, q, k]
    n = pattern.shape[-1]
    result = torch.eye(n, dtype=torch.float64)
    for layer_map in weighted:
        result = result + layer_map @ result
    return result


__getattr__ = moved(__name__, {"relevance": "headscope.experiments.relevance:relevance"})
