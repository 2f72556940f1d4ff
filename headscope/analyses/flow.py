"""Attention rollout and attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers"), plus the content-free baseline to show next to them (docs/methods.md §1).

Conventions (docs/methods.md §1):

- ``A[l, h]`` is indexed ``[query, key]`` and its rows sum to 1 (checked by
  ``check_pattern``); ``Ā_l`` is the head mean (optionally weighted); the augmented matrix is
  ``Â_l = r·I + (1 − r)·Ā_l`` with ``r`` the ``residual`` (0.5 in the paper): heads are
  averaged first, then the residual is mixed in.
- Layers are ordered input to output: ``pattern[0]`` is the first layer.
- Everything is computed in float64 and returned as float64 tensors on the input's device;
  inputs are never mutated. Rollout rows sum to 1; flow values lie in ``[0, 1]``.
- Memory: O(L·N²) float64 for ``Â`` and the results; the max-flow solver
  (:mod:`headscope.analyses.maxflow`) adds O(L·N²) plus a bounded batch of edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import networkx as nx
import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from headscope._deprecated import moved
from headscope.analyses import maxflow
from headscope.analyses.checks import check_pattern
from headscope.errors import InputError

__all__ = [
    "attention_flow",
    "augment",
    "content_free_baseline",
    "flow_graph",
    "rollout",
    "rollout_per_head",
]


# --------------------------------------------------------------------------- inputs

#: ``head_weights``: a weight per head, per layer ``[layer head]`` or shared ``[head]``; a
#: tensor, an array or (nested) lists of floats (converted with ``torch.as_tensor``).
HeadWeightsLike = (
    Float[Tensor, "layer head"]
    | Float[Tensor, " head"]
    | Float[np.ndarray, "layer head"]
    | Float[np.ndarray, " head"]
    | Sequence[Sequence[float]]
    | Sequence[float]
)


def _check_residual(residual: float) -> float:
    residual = float(residual)
    if not 0.0 <= residual <= 1.0:
        raise InputError(f"residual must be in [0, 1], got {residual}")
    return residual


def _head_mean(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    head_weights: HeadWeightsLike | None,
) -> Float[Tensor, "layer query key"]:
    """Validated float64 head mean Ā (a new tensor; the input is never mutated)."""
    check_pattern(pattern, min_dims=3)
    if pattern.dim() == 3:
        if head_weights is not None:
            raise InputError(
                "head_weights needs a pattern with a head dimension [layer head query key], "
                f"got shape {tuple(pattern.shape)}"
            )
        return pattern.detach().to(torch.float64).clone()
    if pattern.dim() != 4:
        raise InputError(
            "pattern must be [layer head query key] or [layer query key], got shape "
            f"{tuple(pattern.shape)}"
        )
    n_layers, n_heads = pattern.shape[:2]
    p64 = pattern.detach().to(torch.float64)
    if head_weights is None:
        return p64.mean(dim=1)
    if not isinstance(head_weights, Tensor):
        head_weights = torch.as_tensor(head_weights)
    w = head_weights.detach().to(device=pattern.device, dtype=torch.float64)
    if w.shape == (n_heads,):
        w = w.expand(n_layers, n_heads)
    if w.shape != (n_layers, n_heads):
        raise InputError(
            f"head_weights must have shape [layer head] = {(n_layers, n_heads)} or [head] = "
            f"{(n_heads,)}, got {tuple(head_weights.shape)}"
        )
    if not torch.isfinite(w).all() or (w < 0).any():
        raise InputError("head_weights must be finite and non-negative")
    totals = w.sum(dim=1, keepdim=True)
    if (totals <= 0).any():
        raise InputError("head_weights must have a positive sum in every layer")
    return torch.einsum("lh,lhqk->lqk", w / totals, p64)


def augment(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    residual: float = 0.5,
    head_weights: HeadWeightsLike | None = None,
) -> Float[Tensor, "layer query key"]:
    """Augmented attention ``Â_l = residual·I + (1 − residual)·Ā_l`` (Abnar & Zuidema 2020).

    ``Ā_l`` is the mean over heads of ``pattern[l]`` (weighted by ``head_weights``, which are
    normalized to sum to 1 per layer) or ``pattern[l]`` itself for a ``[layer query key]``
    input. Rows of ``Â`` sum to 1 when rows of the pattern do. Memory: one float64 copy,
    O(L·N²).
    """
    residual = _check_residual(residual)
    mean = _head_mean(pattern, head_weights)
    eye = torch.eye(mean.shape[-1], dtype=torch.float64, device=mean.device)
    return residual * eye + (1.0 - residual) * mean


# --------------------------------------------------------------------------- rollout


def rollout(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    residual: float = 0.5,
    head_weights: HeadWeightsLike | None = None,
) -> Float[Tensor, "layer query key"]:
    """Attention rollout after every layer (Abnar & Zuidema 2020).

    ``R_1 = Â_1`` and ``R_l = Â_l · R_{l−1}`` with ``Â`` from :func:`augment`; no
    renormalization of the product. ``R[l][i, j]`` is how much of output ``i`` after layer
    ``l`` traces back to input token ``j``. Invariant: rows of every ``R_l`` sum to 1 (a
    product of row-stochastic matrices). Known answers: ``Â = I`` gives ``I``; uniform
    bidirectional ``J/n`` gives ``0.5^L·I + (1 − 0.5^L)·J/n``. Memory: O(L·N²); time O(L·N³).
    """
    ahat = augment(pattern, residual, head_weights)
    out = torch.empty_like(ahat)
    current = ahat[0]
    out[0] = current
    for layer in range(1, ahat.shape[0]):
        current = ahat[layer] @ current
        out[layer] = current
    return out


def rollout_per_head(
    pattern: Float[Tensor, "layer head query key"],
    residual: float = 0.5,
) -> Float[Tensor, "layer head query key"]:
    """Per-head rollout: head ``h`` of layer ``l`` composed with the rollout below it.

    ``out[l, h] = Â[l, h] · R_{l−1}`` with ``Â[l, h] = residual·I + (1 − residual)·A[l, h]``
    (the residual is mixed into each head on its own, the same convention as :func:`augment`)
    and ``R`` the head-mean :func:`rollout` (``R_0 = I``, so ``out[0, h] = Â[0, h]``).
    Rows sum to 1. Memory: O(L·H·N²).
    """
    residual = _check_residual(residual)
    check_pattern(pattern, min_dims=4)
    if pattern.dim() != 4:
        raise InputError(
            f"pattern must be [layer head query key], got shape {tuple(pattern.shape)}"
        )
    p64 = pattern.detach().to(torch.float64)
    eye = torch.eye(p64.shape[-1], dtype=torch.float64, device=p64.device)
    per_head = residual * eye + (1.0 - residual) * p64
    below = rollout(pattern, residual)
    out = torch.empty_like(per_head)
    out[0] = per_head[0]
    if p64.shape[0] > 1:
        out[1:] = per_head[1:] @ below[:-1, None]
    return out


# --------------------------------------------------------------------------- flow graph


def flow_graph(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    residual: float = 0.5,
    head_weights: HeadWeightsLike | None = None,
) -> nx.DiGraph:
    """The layered DAG of attention flow (Abnar & Zuidema 2020) as a networkx graph.

    Nodes are ``(layer, token)`` for ``layer = 0..L`` (0 = input embeddings, L = last
    output). Edge ``(l, i) -> (l − 1, j)`` carries attribute ``"capacity" = Â_l[i, j]``
    (``Â_l`` is ``augment(pattern)[l − 1]``); zero-capacity edges are omitted, which is the
    same network for max-flow. Memory: O(L·N²) Python objects; meant for tests and reference
    computations on small inputs.
    """
    ahat = augment(pattern, residual, head_weights).cpu().numpy()
    n_layers, n_tokens, _ = ahat.shape
    graph = nx.DiGraph()
    graph.add_nodes_from(
        (layer, token) for layer in range(n_layers + 1) for token in range(n_tokens)
    )
    for layer in range(1, n_layers + 1):
        rows, cols = np.nonzero(ahat[layer - 1] > 0)
        graph.add_edges_from(
            ((layer, int(i)), (layer - 1, int(j)), {"capacity": float(ahat[layer - 1, i, j])})
            for i, j in zip(rows, cols, strict=True)
        )
    return graph


# --------------------------------------------------------------------------- flow


def attention_flow(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    residual: float = 0.5,
    normalize: bool = True,
    *,
    head_weights: HeadWeightsLike | None = None,
    workers: int | None = None,
) -> Float[Tensor, "query key"]:
    """Attention flow (Abnar & Zuidema 2020): max-flow from each output to each input token.

    The network is the layered DAG of :func:`flow_graph`: nodes ``(l, i)`` for
    ``l = 0..L``, edge ``(l, i) -> (l − 1, j)`` with capacity ``Â_l[i, j]`` (see
    :func:`augment`). ``F[i, j]`` is the max-flow from ``(L, i)`` to ``(0, j)``, every pair
    solved independently (a super-sink would let pairs share capacity: a different
    quantity). ``normalize=True`` divides each row by its sum (rows then sum to 1);
    ``normalize=False`` returns the raw values, each in ``[0, 1]``.

    Known answers: one layer gives ``F = Â``; two layers give
    ``F[i, j] = Σ_k min(Â_2[i, k], Â_1[k, j])``. Three or more layers are solved exactly
    (to 1e-12; the tests compare with networkx) by
    :func:`headscope.analyses.maxflow.pairwise_max_flow`, which documents the algorithm
    and its cost (worst case O(N²) max-flows, typically O(N) for dense attention) and
    reports how each pair was solved.

    ``workers``: processes for the independent max-flows (fork; ``None`` uses up to 2
    when the input is large enough to pay for them, 1 means in-process); no worker
    outlives the call. Calls from several threads are safe: the solver keeps no state
    between or across calls, so they run concurrently. Memory: O(L·N²).
    """
    ahat = augment(pattern, residual, head_weights)
    raw = maxflow.pairwise_max_flow(ahat.cpu().numpy(), workers=workers).values
    if normalize:
        sums = raw.sum(axis=1, keepdims=True)
        out = np.divide(raw, sums, out=np.zeros_like(raw), where=sums > 0)
    else:
        out = raw.copy()  # the solver's result is read-only
    return torch.from_numpy(out).to(ahat.device)


# --------------------------------------------------------------------------- baseline


def content_free_baseline(
    n: int | None = None,
    *,
    n_layers: int,
    causal: bool = True,
    method: Literal["rollout", "flow"] = "rollout",
    residual: float = 0.5,
    mask: Bool[Tensor, "query key"] | None = None,
    normalize: bool = True,
) -> Float[Tensor, "layer query key"] | Float[Tensor, "query key"]:
    """Rollout or flow of uniform attention over the mask: the baseline to show next to a
    model's result (docs/methods.md §1).

    Every layer attends uniformly to the keys its mask allows: causal (key ≤ query),
    bidirectional (all keys) or a given ``mask`` ``[query key]`` (True = may attend; every
    row needs one True). In a causal decoder this alone makes rows drift toward token 0, so
    a model's mass on early tokens means little unless it exceeds this baseline.
    ``method="rollout"`` returns ``[layer query key]`` like :func:`rollout`;
    ``method="flow"`` returns ``[query key]`` like :func:`attention_flow`.
    """
    if mask is None:
        if n is None or int(n) < 1:
            raise InputError(f"n must be a positive number of tokens, got {n}")
        ones = torch.ones(int(n), int(n), dtype=torch.bool)
        mask = torch.tril(ones) if causal else ones
    else:
        if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
            raise InputError("mask must be a square [query key] boolean tensor")
        if n is not None and int(n) != mask.shape[0]:
            raise InputError(f"n={n} does not match the mask size {mask.shape[0]}")
        mask = mask.to(torch.bool)
        if not mask.any(dim=1).all():
            raise InputError("mask has a query row with no allowed key")
    if int(n_layers) < 1:
        raise InputError(f"n_layers must be >= 1, got {n_layers}")
    uniform = mask.to(torch.float64)
    uniform = uniform / uniform.sum(dim=1, keepdim=True)
    stack = uniform.expand(int(n_layers), *uniform.shape).contiguous()
    if method == "rollout":
        return rollout(stack, residual)
    if method == "flow":
        return attention_flow(stack, residual, normalize)
    raise InputError(f"method must be 'rollout' or 'flow', got {method!r}")


__getattr__ = moved(__name__, {"relevance": "headscope.experiments.relevance:relevance"})
