"""Attention mask and bias builders: small pure functions shared by the reference
oracle, the tiled kernel and the tests.

Conventions: boolean masks are True where a query may attend to a key. Queries
and keys are absolute positions 0..n−1 of one sequence (self-attention, no KV
cache). Every builder costs O(its output) memory; the tiled kernel calls them on
one query tile at a time, so it never holds a query × key mask for the whole
sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from headscope.errors import InputError

PaddingSide = Literal["right", "left"]


def causal_mask(
    n_query: int, n_key: int, *, query_offset: int = 0, device: torch.device | str | None = None
) -> Bool[Tensor, "query key"]:
    """Query i (absolute position `query_offset + i`) sees keys k ≤ its position."""
    queries = torch.arange(query_offset, query_offset + n_query, device=device)
    keys = torch.arange(n_key, device=device)
    return keys[None, :] <= queries[:, None]


def sliding_window_mask(
    n_query: int,
    n_key: int,
    window: int,
    *,
    causal: bool = True,
    query_offset: int = 0,
    device: torch.device | str | None = None,
) -> Bool[Tensor, "query key"]:
    """Keys within `window` positions: q − k < window (and k ≤ q when causal),
    |q − k| < window when bidirectional. Hugging Face's `sliding_window`
    convention: window = 1 sees only the query's own position."""
    if window < 1:
        raise InputError(f"window must be >= 1, got {window}")
    queries = torch.arange(query_offset, query_offset + n_query, device=device)[:, None]
    keys = torch.arange(n_key, device=device)[None, :]
    distance = queries - keys
    if causal:
        return (distance >= 0) & (distance < window)
    return distance.abs() < window


def key_padding_from_lengths(
    lengths: Sequence[int] | Tensor,
    n_key: int,
    *,
    side: PaddingSide = "right",
    device: torch.device | str | None = None,
) -> Bool[Tensor, "batch key"]:
    """True at real tokens: the first `length` positions (right padding) or the
    last `length` positions (left padding) of each row."""
    lengths = torch.as_tensor(lengths, device=device).reshape(-1, 1)
    positions = torch.arange(n_key, device=lengths.device)[None, :]
    if side == "right":
        return positions < lengths
    return positions >= n_key - lengths


def dense_mask(
    n_query: int,
    n_key: int,
    *,
    causal: bool,
    key_padding_mask: Bool[Tensor, "batch key"] | None = None,
    window: int | None = None,
    query_offset: int = 0,
    device: torch.device | str | None = None,
) -> Bool[Tensor, "batch_or_1 1 query key"]:
    """The full boolean mask `[batch or 1, 1, query, key]` that the structured
    arguments of `tiled_attention` describe (used by the reference and tests).
    Memory: batch·query·key bytes."""
    if key_padding_mask is not None:
        device = key_padding_mask.device
    if window is not None:
        allowed = sliding_window_mask(
            n_query, n_key, window, causal=causal, query_offset=query_offset, device=device
        )
    elif causal:
        allowed = causal_mask(n_query, n_key, query_offset=query_offset, device=device)
    else:
        allowed = torch.ones(n_query, n_key, dtype=torch.bool, device=device)
    allowed = allowed[None, None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, None, :]
    return allowed


def alibi_slopes(n_heads: int) -> Float[Tensor, " head"]:
    """ALiBi head slopes (Press, Smith & Lewis 2022, "Train Short, Test Long"):
    the geometric sequence 2^(−8i/n), i = 1..n, for n a power of two; otherwise
    the slopes of the closest lower power of two followed by every other slope
    of the next power of two (the BLOOM / MPT convention)."""
    if n_heads < 1:
        raise InputError(f"n_heads must be >= 1, got {n_heads}")

    def powers(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(closest)
    if closest < n_heads:
        slopes += powers(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(
    slopes: Float[Tensor, " head"],
    n_query: int,
    n_key: int,
    *,
    query_offset: int = 0,
) -> Float[Tensor, "head query key"]:
    """Additive ALiBi bias −slope·|q − k|. For causal attention (k ≤ q) this is
    the paper's −m·(q − k); BLOOM's m·k differs from it by a per-row constant,
    which softmax ignores. Memory: head·query·key floats."""
    queries = torch.arange(query_offset, query_offset + n_query, device=slopes.device)
    keys = torch.arange(n_key, device=slopes.device)
    distance = (queries[:, None] - keys[None, :]).abs().to(torch.float32)
    return -slopes.to(torch.float32)[:, None, None] * distance[None]
