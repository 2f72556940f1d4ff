"""Numeric data on its way to plotly: float32 numpy arrays, downsampled when large.

Plotly serializes numpy arrays as base64 typed arrays; Python lists (and
float16, which plotly.js cannot read) would be sent as slow JSON text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from headscope.errors import InputError


def float32(values: object) -> np.ndarray:
    """`values` (tensor, array, nested sequence) as a contiguous float32 numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32))


def int32(values: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.int32))


def reduction_factor(n: int, max_size: int) -> int:
    """The smallest integer block size that brings `n` cells down to `max_size` or fewer."""
    if max_size < 1:
        raise InputError("max_size must be at least 1")
    return max(1, math.ceil(n / max_size))


def block_max(matrix: np.ndarray, factor: int) -> np.ndarray:
    """Max over `factor`×`factor` blocks of a 2-D array (the last blocks may be
    partial). NaN cells are ignored unless a whole block is NaN. The max, not
    the mean, keeps thin structure (a diagonal, a sink column) visible."""
    matrix = float32(matrix)
    if factor == 1:
        return matrix
    rows, cols = matrix.shape
    out_rows, out_cols = math.ceil(rows / factor), math.ceil(cols / factor)
    padded = np.full((out_rows * factor, out_cols * factor), np.nan, dtype=np.float32)
    padded[:rows, :cols] = matrix
    blocks = padded.reshape(out_rows, factor, out_cols, factor)
    finite = np.isfinite(blocks)
    filled = np.where(finite, blocks, -np.inf).max(axis=(1, 3))
    return np.where(finite.any(axis=(1, 3)), filled, np.nan).astype(np.float32)
