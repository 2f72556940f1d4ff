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
  :func:`iter_rollout` needs three float64 ``[N, N]`` whatever L (any N, one layer at a
  time); :func:`approximate_flow` (:mod:`headscope.analyses.prunedflow`) solves pruned
  networks and returns a certified bracket of the exact flow.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import networkx as nx
import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from headscope._deprecated import moved
from headscope.analyses import maxflow, prunedflow
from headscope.analyses.checks import check_pattern
from headscope.errors import InputError

__all__ = [
    "approximate_flow",
    "attention_flow",
    "augment",
    "content_free_baseline",
    "flow_graph",
    "iter_rollout",
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


def _layer_weights(
    pattern: Tensor, head_weights: HeadWeightsLike | None, n_layers: int | None
) -> Tensor | None:
    """Validated per-layer head weights ``[layer head]`` summing to 1 per layer, or None for a
    plain mean. ``n_layers`` is None for a stream of unknown length (``[head]`` weights only)."""
    if head_weights is None:
        return None
    n_heads = pattern.shape[-3]
    if not isinstance(head_weights, Tensor):
        head_weights = torch.as_tensor(head_weights)
    w = head_weights.detach().to(device=pattern.device, dtype=torch.float64)
    expected = (n_heads,) if n_layers is None else (n_layers, n_heads)
    if w.shape == (n_heads,) and n_layers is not None:
        w = w.expand(n_layers, n_heads)
    if w.shape != expected:
        shapes = f"[head] = {(n_heads,)}"
        if n_layers is not None:
            shapes = f"[layer head] = {(n_layers, n_heads)} or " + shapes
        raise InputError(f"head_weights must have shape {shapes}, got {tuple(head_weights.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise InputError("head_weights must be finite and non-negative")
    totals = w.sum(dim=-1, keepdim=True)
    if (totals <= 0).any():
        raise InputError("head_weights must have a positive sum in every layer")
    return w / totals


def _layer_mean(layer: Tensor, weights: Tensor | None) -> Tensor:
    """Float64 (weighted) head mean of one layer ``[head query key]`` (or the map itself for
    ``[query key]``), accumulated one head at a time: memory two float64 ``[query key]``."""
    if layer.dim() == 2:
        return layer.detach().to(torch.float64).clone()
    n_heads = layer.shape[0]
    total = torch.zeros(layer.shape[-2:], dtype=torch.float64, device=layer.device)
    for head in range(n_heads):
        weight = 1.0 / n_heads if weights is None else float(weights[head])
        if weight:
            total.add_(layer[head].detach().to(torch.float64), alpha=weight)
    return total


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
    weights = _layer_weights(pattern, head_weights, pattern.shape[0])
    out = torch.empty(
        (pattern.shape[0], *pattern.shape[-2:]), dtype=torch.float64, device=pattern.device
    )
    for layer in range(pattern.shape[0]):
        out[layer] = _layer_mean(pattern[layer], None if weights is None else weights[layer])
    return out


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


#: One layer of a stream for :func:`iter_rollout`: ``[head query key]`` or ``[query key]``.
LayerMap = Float[Tensor, "head query key"] | Float[Tensor, "query key"]


def iter_rollout(
    layers: Float[Tensor, "layer head query key"]
    | Float[Tensor, "layer query key"]
    | Iterable[LayerMap],
    residual: float = 0.5,
    head_weights: HeadWeightsLike | None = None,
) -> Iterator[Float[Tensor, "query key"]]:
    """Attention rollout layer by layer (Abnar & Zuidema 2020): yields ``R_1, R_2, …``.

    ``layers`` is a stacked pattern (iterated over its first dimension) or any iterable of
    per-layer maps, input layer first, each ``[head query key]`` or ``[query key]`` in any
    float dtype: a generator that loads or captures one layer at a time never holds the
    others. ``R_l = Â_l · R_{l−1}`` (``R_0 = I``) with ``Â_l = r·I + (1 − r)·Ā_l``, computed
    as ``(1 − r)·(Ā_l · R_{l−1}) + r·R_{l−1}`` so that ``Â`` is never formed. Each yielded
    ``R_l`` is a new float64 tensor (rows sum to 1); to keep only the last one, loop
    (``for last in iter_rollout(maps): pass``) rather than unpack (``*_, last = …`` holds
    every layer). ``head_weights`` is ``[head]`` (shared by every
    layer) or ``[layer head]`` when ``layers`` is a stacked 4-D tensor.

    Memory: three float64 ``[query key]`` (``R_{l−1}``, ``Ā_l``, the product) plus one
    input layer, whatever the number of layers: 400 MB at N = 4096. Time: one N³ product
    per layer after the first.
    """
    residual = _check_residual(residual)
    stacked = isinstance(layers, Tensor)
    if stacked:
        check_pattern(layers, min_dims=3)
        if layers.dim() not in (3, 4):
            raise InputError(
                "pattern must be [layer head query key] or [layer query key], got shape "
                f"{tuple(layers.shape)}"
            )
    if stacked and head_weights is not None and layers.dim() != 4:
        raise InputError(
            "head_weights needs a pattern with a head dimension [layer head query key], "
            f"got shape {tuple(layers.shape)}"
        )
    stacked_weights = (
        _layer_weights(layers, head_weights, layers.shape[0])
        if stacked and head_weights is not None
        else None
    )
    current: Tensor | None = None
    for index, layer in enumerate(layers):
        weights = None if stacked_weights is None else stacked_weights[index]
        if not stacked:
            if not isinstance(layer, Tensor) or layer.dim() not in (2, 3):
                got = tuple(layer.shape) if isinstance(layer, Tensor) else type(layer).__name__
                raise InputError(
                    f"layer {index} must be a [head query key] or [query key] tensor, got {got}"
                )
            check_pattern(layer, name=f"layer {index}")
            if head_weights is not None:
                if layer.dim() != 3:
                    raise InputError(
                        "head_weights needs layers with a head dimension [head query key], "
                        f"got a layer of shape {tuple(layer.shape)}"
                    )
                weights = _layer_weights(layer, head_weights, None)
        mean = _layer_mean(layer, weights)
        if current is not None and mean.shape != current.shape:
            raise InputError(
                f"layer {index} has shape {tuple(mean.shape)}, the layers before it "
                f"{tuple(current.shape)}"
            )
        if current is None:
            mean.mul_(1.0 - residual)
            mean.diagonal().add_(residual)
            current = mean
        else:
            product = mean @ current
            del mean
            product.mul_(1.0 - residual).add_(current, alpha=residual)
            current = product
        yield current


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
    bidirectional ``J/n`` gives ``0.5^L·I + (1 − 0.5^L)·J/n``. Memory: the float64
    ``[layer query key]`` result plus :func:`iter_rollout`'s three ``[query key]`` (the
    input is read one layer at a time, never copied whole); time O(L·N³). For long
    inputs where only the last layer matters use :func:`iter_rollout`.
    """
    if not isinstance(pattern, Tensor) or pattern.dim() not in (3, 4):
        check_pattern(pattern, min_dims=3)
        raise InputError(
            "pattern must be [layer head query key] or [layer query key], got shape "
            f"{tuple(pattern.shape)}"
        )
    if pattern.dim() == 3 and head_weights is not None:
        raise InputError(
            "head_weights needs a pattern with a head dimension [layer head query key], "
            f"got shape {tuple(pattern.shape)}"
        )
    out = torch.empty(
        (pattern.shape[0], *pattern.shape[-2:]), dtype=torch.float64, device=pattern.device
    )
    for layer, current in enumerate(iter_rollout(pattern, residual, head_weights)):
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


def approximate_flow(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    residual: float = 0.5,
    *,
    top_k: int | None = None,
    mass: float | None = None,
    keep_ends: bool = True,
    head_weights: HeadWeightsLike | None = None,
    workers: int | None = None,
) -> prunedflow.PrunedFlow:
    """Attention flow on a pruned network, with a certified bound on its error
    (docs/methods.md §1.2; Abnar & Zuidema 2020 for the flow itself).

    Every layer of ``Â`` (:func:`augment`) keeps each query's ``top_k`` largest edges, or
    its largest edges up to ``1 − mass`` of the row (give one; ``top_k=8`` when neither is
    given), plus the residual diagonal and, with ``keep_ends``, all of the first and last
    layer. Returns :class:`~headscope.analyses.prunedflow.PrunedFlow` with raw (not
    normalized) ``values`` = the pruned network's max-flow and ``upper``, such that
    ``values <= attention_flow(..., normalize=False) <= upper`` for every pair, exactly:
    pruning can only lower a max-flow, and the cut that certifies the pruned flow, priced
    with the pruned edges put back, is a cut of the full network. ``bound = upper −
    values`` is therefore a certified error. See :mod:`headscope.analyses.prunedflow` for
    the proof, the a priori bound and the cost (N² sparse max-flows).
    """
    if top_k is None and mass is None:
        top_k = 8
    ahat = augment(pattern, residual, head_weights)
    return prunedflow.pruned_max_flow(
        ahat.cpu().numpy(), top_k=top_k, mass=mass, keep_ends=keep_ends, workers=workers
    )


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
