"""Ranking heads by a score: most important first, ties in (layer, head) order."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError


def rank_heads(
    scores: Float[Tensor, "layer head"], *, descending: bool = True, by_magnitude: bool = False
) -> list[tuple[int, int, float]]:
    """(layer, head, score) sorted by score, most important (highest) first;
    ties keep (layer, head) order. `by_magnitude` sorts by |score| (for signed
    effects whose sign says the direction, not the importance) and still
    returns the signed score. NaN scores are rejected."""
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise InputError("scores must be a [layer, head] tensor")
    if bool(torch.isnan(scores).any()):
        raise InputError("scores contain NaN")
    flat = scores.detach().double().cpu().flatten()
    key = flat.abs() if by_magnitude else flat
    order = torch.sort(key, descending=descending, stable=True).indices.tolist()
    n_heads = scores.shape[1]
    return [(i // n_heads, i % n_heads, float(flat[i])) for i in order]


def top_heads(scores: Float[Tensor, "layer head"], k: int) -> list[tuple[int, int]]:
    """The k highest-scoring (layer, head) pairs, best first."""
    return [(layer, head) for layer, head, _ in rank_heads(scores)[:k]]
