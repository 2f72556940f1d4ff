"""The one validator for row-stochastic attention maps (``[..., query, key]``, rows sum to 1).

Code that takes attention maps should call :func:`check_pattern` rather than check shape,
finiteness, signs or row sums by hand, so that the rules and messages are the same
everywhere. Caller mistakes raise :class:`headscope.errors.InputError` (a ``ValueError``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError


def check_pattern(
    pattern: Float[Tensor, "... query key"],
    *,
    name: str = "pattern",
    min_dims: int = 2,
    atol: float = 1e-4,
    allow_zero_rows: bool = False,
) -> Float[Tensor, "... query key"]:
    """Validate an attention tensor whose rows should be probability distributions.

    Raises InputError naming the problem when the tensor has fewer than
    `min_dims` dimensions, is not square in its last two dims, contains NaN or
    infinity, has entries below −`atol`, or has rows that do not sum to 1 within
    `atol` (rows of all zeros are accepted with `allow_zero_rows`, e.g. padded
    queries). Returns the input unchanged (never mutated, never copied). Memory:
    boolean temporaries the size of the input and float64 row sums.
    """
    if not isinstance(pattern, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(pattern).__name__}")
    if pattern.dim() < min_dims:
        raise InputError(
            f"{name} must have at least {min_dims} dims, got shape {tuple(pattern.shape)}"
        )
    if pattern.shape[-1] != pattern.shape[-2]:
        raise InputError(
            f"{name} must be square in its last two dims (query, key), got shape "
            f"{tuple(pattern.shape)}"
        )
    if not torch.is_floating_point(pattern):
        raise InputError(f"{name} must be a floating-point tensor, got {pattern.dtype}")
    if not torch.isfinite(pattern).all():
        raise InputError(f"{name} contains NaN or infinite values")
    if (pattern < -atol).any():
        raise InputError(f"{name} has negative entries (min {pattern.min().item():.3g})")
    sums = pattern.double().sum(-1)
    bad = (sums - 1).abs() > atol
    if allow_zero_rows:
        bad &= sums.abs() > atol
    if bad.any():
        worst = (sums - 1).abs().max().item()
        raise InputError(
            f"{name} is not row-stochastic: rows must sum to 1 (worst row is off by {worst:.3g})"
        )
    return pattern
