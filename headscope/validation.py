"""Validation shared across layers: the one validator for row-stochastic
attention maps. Like `headscope.errors`, this module belongs to no layer of the
pipeline and imports nothing from headscope but the errors."""

from __future__ import annotations

from torch import Tensor

from headscope.errors import InputError


def check_row_stochastic(
    pattern: Tensor,
    *,
    name: str = "pattern",
    min_dims: int = 2,
    atol: float = 1e-4,
    allow_zero_rows: bool = False,
) -> Tensor:
    """The one validator for row-stochastic attention maps (``[..., query, key]``).

    Both `headscope.analyses` (through `analyses.checks.check_pattern`) and
    `headscope.records` (when a record is loaded) use it; neither of those
    layers may import the other, so it lives in this layer-free module.
    Raises InputError naming the problem when `pattern` is not a torch.Tensor,
    has fewer than `min_dims` dimensions, is not square in its last two dims,
    is not floating point, contains NaN or infinity, has entries below −`atol`,
    or has rows that do not sum to 1 within `atol` (rows of all zeros are
    accepted with `allow_zero_rows`, e.g. padded queries). Returns the input
    unchanged (never mutated, never copied). Memory: boolean temporaries the
    size of the input and float64 row sums. torch is imported on first call so
    that importing this module stays cheap.
    """
    import torch

    if not isinstance(pattern, torch.Tensor):
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
