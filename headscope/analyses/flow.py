"""Attention rollout and attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers"), plus the content-free baseline to show next to them (METHODS.md §1).

Conventions (METHODS.md §1):

- ``A[l, h]`` is indexed ``[query, key]`` and its rows sum to 1; ``Ā_l`` is the head mean
  (optionally weighted); the augmented matrix is ``Â_l = r·I + (1 − r)·Ā_l`` with ``r`` the
  ``residual`` (0.5 in the paper): heads are averaged first, then the residual is mixed in.
- Layers are ordered input to output: ``pattern[0]`` is the first layer.
- Everything is computed in float64 and returned as float64 tensors on the input's device.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Bool, Float
from scipy.sparse.csgraph import breadth_first_order, maximum_flow
from torch import Tensor

from headscope.analyses.checks import check_pattern

__all__ = [
    "attention_flow",
    "augment",
    "content_free_baseline",
    "flow_graph",
    "rollout",
    "rollout_per_head",
]


# --------------------------------------------------------------------------- inputs


def _check_residual(residual: float) -> float:
    residual = float(residual)
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    return residual


def _head_mean(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    head_weights: Float[Tensor, "layer head"] | Float[Tensor, " head"] | None,
) -> Float[Tensor, "layer query key"]:
    """Validated float64 head mean Ā (a new tensor; the input is never mutated)."""
    check_pattern(pattern, min_dims=3)
    if pattern.dim() == 3:
        if head_weights is not None:
            raise ValueError(
                "head_weights needs a pattern with a head dimension [layer head query key], "
                f"got shape {tuple(pattern.shape)}"
            )
        return pattern.detach().to(torch.float64).clone()
    if pattern.dim() != 4:
        raise ValueError(
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
        raise ValueError(
            f"head_weights must have shape [layer head] = {(n_layers, n_heads)} or [head] = "
            f"{(n_heads,)}, got {tuple(head_weights.shape)}"
        )
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("head_weights must be finite and non-negative")
    totals = w.sum(dim=1, keepdim=True)
    if (totals <= 0).any():
        raise ValueError("head_weights must have a positive sum in every layer")
    return torch.einsum("lh,lhqk->lqk", w / totals, p64)


def augment(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    residual: float = 0.5,
    head_weights: Float[Tensor, "layer head"] | Float[Tensor, " head"] | None = None,
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
    head_weights: Float[Tensor, "layer head"] | Float[Tensor, " head"] | None = None,
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
        raise ValueError(
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
    head_weights: Float[Tensor, "layer head"] | Float[Tensor, " head"] | None = None,
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


# --------------------------------------------------------------------------- exact max-flow

# Capacities are scaled to int32 for scipy's Dinic solver, then refined on the residual graph.
_ROUND_SCALE = 2.0**30
_REFINE_SCALE = 2.0**29
_INT_CAP = 2**30
_INF_CAP = 2**31 - 1
_MAX_ROUNDS = 24
# A flow within _SOLVER_TOL of a cut's capacity proves both optimal to that accuracy.
_SOLVER_TOL = 1e-13
_CERTIFY_TOL = 1e-12
# Edges per scipy call: large enough to amortize Python overhead, small enough that the
# slowest component does not hold up many others (Dinic's phases are shared by the batch).
_EDGE_BUDGET = 300_000
_TOP_K = 2
# The shared certificate runs on the top-k edges per row and column (a subgraph: its flows
# are still lower bounds), which is enough for dense attention and many times faster.
_SHARED_K = 16


def _exact_max_flow(
    n_nodes: int,
    nodes_per_component: int,
    u: np.ndarray,
    v: np.ndarray,
    cap: np.ndarray,
    comp: np.ndarray,
    src: np.ndarray,
    snk: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact float64 max-flow of many disjoint networks, solved together.

    Component ``b`` owns nodes ``[b·nodes_per_component, (b+1)·nodes_per_component)``,
    source ``src[b]`` and sink ``snk[b]``; edge ``e`` goes ``u[e] -> v[e]`` with capacity
    ``cap[e] > 0`` and belongs to component ``comp[e]`` (no duplicate or antiparallel
    edges). A super-source and super-sink joined to every component by effectively
    infinite arcs turn the batch into one problem whose max-flow restricts to a max-flow of
    each component.

    Exactness: round 1 floors ``cap·2^30`` to int32 and runs scipy's Dinic; the flow is
    feasible for the real capacities, so its value is a lower bound, and the integer min
    cut's real capacity is an upper bound. Each later round solves the residual network
    scaled by ``2^29 / gap`` (gap = upper − lower bound), shrinking the gap by about
    ``#cut edges / 2^29`` per round, until ``gap <= 1e-13`` for every component.

    Returns ``(lower, upper, source_side)``: per-component bounds and, per node, whether it
    lies on the source side of the certifying cut.
    """
    n_comp = len(src)
    n_edges = len(u)
    s_star, t_star = n_nodes, n_nodes + 1
    nn = n_nodes + 2
    # Every arc's reverse is listed too, so scipy adds none and its flow matrix keeps our layout.
    super_from = np.concatenate([np.full(n_comp, s_star), snk, src, np.full(n_comp, t_star)])
    super_to = np.concatenate([src, np.full(n_comp, t_star), np.full(n_comp, s_star), snk])
    rows = np.concatenate([u, v, super_from]).astype(np.int64)
    cols = np.concatenate([v, u, super_to]).astype(np.int64)
    keys = rows * nn + cols
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if n_edges and (np.diff(sorted_keys) == 0).any():
        raise AssertionError("duplicate or antiparallel edges in a flow network")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    forward_pos = position[:n_edges]
    rows_sorted = rows[order]
    indices = cols[order].astype(np.int32)
    indptr = np.zeros(nn + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows_sorted, minlength=nn), out=indptr[1:])
    indptr32 = indptr.astype(np.int32)

    src_out = u == src[comp]
    src_in = v == src[comp]
    node_comp = np.arange(n_nodes) // nodes_per_component
    flow = np.zeros(n_edges)
    scale = np.full(n_comp, _ROUND_SCALE)
    active = np.ones(n_comp, dtype=bool)
    lower = np.zeros(n_comp)
    upper = np.zeros(n_comp)
    side = np.zeros(n_nodes, dtype=bool)
    for _ in range(_MAX_ROUNDS):
        edge_scale = np.where(active, scale, 0.0)[comp]
        residual_fwd = np.minimum(np.floor(np.maximum(cap - flow, 0.0) * edge_scale), _INT_CAP)
        residual_bwd = np.minimum(np.floor(flow * edge_scale), _INT_CAP)
        super_arcs = np.where(active, _INF_CAP, 0)
        no_arcs = np.zeros(2 * n_comp)
        arc_cap = np.concatenate([residual_fwd, residual_bwd, super_arcs, super_arcs, no_arcs])
        data = arc_cap.astype(np.int32)[order]
        graph = sp.csr_array((data, indices, indptr32), shape=(nn, nn))
        result = maximum_flow(graph, s_star, t_star)
        flow_matrix = result.flow
        if np.array_equal(flow_matrix.indptr, indptr32) and np.array_equal(
            flow_matrix.indices, indices
        ):
            arc_flow = np.asarray(flow_matrix.data, dtype=np.int64)
        else:  # pragma: no cover - scipy kept our structure in every version tested
            arc_flow = _lookup(flow_matrix, rows_sorted, indices)
        safe_scale = np.where(edge_scale > 0, edge_scale, 1.0)
        flow = np.clip(flow + arc_flow[forward_pos] / safe_scale, 0.0, cap)

        keep = (data.astype(np.int64) - arc_flow) > 0
        res_indptr = np.zeros(nn + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows_sorted[keep], minlength=nn), out=res_indptr[1:])
        residual_graph = sp.csr_array(
            (np.ones(int(keep.sum()), dtype=np.int8), indices[keep], res_indptr), shape=(nn, nn)
        )
        reached = breadth_first_order(
            residual_graph, s_star, directed=True, return_predecessors=False
        )
        in_s = np.zeros(nn, dtype=bool)
        in_s[reached] = True
        cut = in_s[u] & ~in_s[v]
        round_upper = np.bincount(comp, weights=cap * cut, minlength=n_comp)
        round_lower = np.bincount(comp, weights=flow * src_out, minlength=n_comp) - np.bincount(
            comp, weights=flow * src_in, minlength=n_comp
        )
        upper = np.where(active, round_upper, upper)
        lower = np.where(active, round_lower, lower)
        side = np.where(active[node_comp], in_s[:n_nodes], side)
        gap = upper - lower
        active &= gap > _SOLVER_TOL
        if not active.any():
            return lower, upper, side
        refined = np.divide(_REFINE_SCALE, gap, out=np.ones_like(gap), where=active)
        scale = np.where(active, refined, scale)
    raise RuntimeError(  # pragma: no cover - the gap shrinks by ~1e-4 or more per round
        "attention_flow: max-flow refinement did not converge; please report this input"
    )


def _lookup(matrix: sp.csr_array, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Entries ``matrix[rows, cols]`` (0 where absent) for a CSR matrix."""
    matrix = sp.csr_array(matrix)
    matrix.sort_indices()
    n_cols = matrix.shape[1]
    counts = np.diff(matrix.indptr)
    stored = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), counts) * n_cols
    stored += matrix.indices
    wanted = rows.astype(np.int64) * n_cols + cols
    found = np.minimum(np.searchsorted(stored, wanted), max(len(stored) - 1, 0))
    hit = stored[found] == wanted if len(stored) else np.zeros(len(wanted), dtype=bool)
    return np.where(hit, matrix.data[found] if len(stored) else 0, 0).astype(np.int64)


# --------------------------------------------------------------------------- flow stages

# State shared with worker processes (inherited by fork, read-only there). _LOCK serializes
# attention_flow calls from several threads (e.g. a web server) around it.
_STATE: dict[str, Any] = {}
_LOCK = threading.Lock()
# Pairs solved by each stage of the last attention_flow call, and seconds spent in each
# (for benchmarks and tests; not thread-safe).
last_flow_stats: dict[str, float] = {}


def _two_layer_flow(ahat: np.ndarray) -> np.ndarray:
    """Closed form for two layers: paths through different middle tokens share no edge."""
    top, bottom = ahat[1], ahat[0]
    n = top.shape[0]
    out = np.empty((n, n))
    step = max(1, 2_000_000 // max(n * n, 1))
    for start in range(0, n, step):
        stop = min(n, start + step)
        out[start:stop] = np.minimum(top[start:stop, :, None], bottom[None]).sum(axis=1)
    return out


def _reachability(ahat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``down[l][i, k]``: output token i reaches node (l, k); ``up[l][k, j]``: (l, k) reaches
    input token j. Both ``[L+1, N, N]`` booleans (layer L and 0 are the identity)."""
    n_layers, n, _ = ahat.shape
    pos = (ahat > 0).astype(np.float32)
    eye = np.eye(n, dtype=bool)
    down = np.empty((n_layers + 1, n, n), dtype=bool)
    up = np.empty((n_layers + 1, n, n), dtype=bool)
    down[n_layers] = eye
    for layer in range(n_layers, 0, -1):
        down[layer - 1] = (down[layer].astype(np.float32) @ pos[layer - 1]) > 0
    up[0] = eye
    for layer in range(1, n_layers + 1):
        up[layer] = (pos[layer - 1] @ up[layer - 1].astype(np.float32)) > 0
    return down, up


def _top_k_edges(ahat: np.ndarray, k: int, diagonal: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, the k largest off-diagonal edges of every row and of every column (all
    edges when k >= N), plus the diagonal when asked. Index 0 is unused."""
    n_layers, n, _ = ahat.shape
    edges: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, int), np.empty(0, int))]
    for layer in range(1, n_layers + 1):
        matrix = ahat[layer - 1].copy()
        np.fill_diagonal(matrix, 0.0)
        kk = min(k, n)
        mask = np.zeros((n, n), dtype=bool)
        rows = np.argpartition(-matrix, kk - 1, axis=1)[:, :kk]
        mask[np.repeat(np.arange(n), kk), rows.ravel()] = True
        cols = np.argpartition(-matrix, kk - 1, axis=0)[:kk, :]
        mask[cols.ravel(), np.tile(np.arange(n), kk)] = True
        mask &= matrix > 0
        if diagonal:
            mask |= np.diag(np.diagonal(ahat[layer - 1]) > 0)
        edges.append(np.nonzero(mask))
    return edges


def _layer_block(first: int, n: int) -> Callable[[int, np.ndarray], np.ndarray]:
    """Local node numbering of a component holding layers ``first, first+1, ...``."""

    def node(layer: int, token: np.ndarray) -> np.ndarray:
        return (layer - first) * n + token

    return node


def _source_side_job(sources: np.ndarray) -> np.ndarray:
    """Max-flow from each output token to the target vector μ at the middle layer."""
    ahat, mu, middle = _STATE["ahat"], _STATE["mu"], _STATE["middle"]
    n_layers, n, _ = ahat.shape
    per = (n_layers - middle) * n + 2
    node = _layer_block(middle, n)
    src_local, sink_local = (n_layers - middle) * n, (n_layers - middle) * n + 1
    us, vs, cs, bs = [], [], [], []
    count = len(sources)
    base = np.arange(count) * per
    for layer in range(middle + 1, n_layers):
        a, b = _STATE["shared_edges"][layer]
        us.append((base[:, None] + node(layer, a)[None]).ravel())
        vs.append((base[:, None] + node(layer - 1, b)[None]).ravel())
        cs.append(np.tile(ahat[layer - 1][a, b], count))
        bs.append(np.repeat(np.arange(count), len(a)))
    top = ahat[n_layers - 1][sources]
    p, t = np.nonzero(top > 0)
    us.append(base[p] + src_local)
    vs.append(base[p] + node(n_layers - 1, t))
    cs.append(top[p, t])
    bs.append(p)
    t = np.nonzero(mu > 0)[0]
    us.append((base[:, None] + node(middle, t)[None]).ravel())
    vs.append(np.repeat(base + sink_local, len(t)))
    cs.append(np.tile(mu[t], count))
    bs.append(np.repeat(np.arange(count), len(t)))
    lower, _, _ = _exact_max_flow(
        count * per, per, *_concat(us, vs, cs, bs), base + src_local, base + sink_local
    )
    return lower


def _sink_side_job(sinks: np.ndarray) -> np.ndarray:
    """Max-flow from the vector μ at the middle layer into each input token."""
    ahat, mu, middle = _STATE["ahat"], _STATE["mu"], _STATE["middle"]
    n = ahat.shape[1]
    per = middle * n + 2
    node = _layer_block(1, n)
    src_local, sink_local = middle * n, middle * n + 1
    us, vs, cs, bs = [], [], [], []
    count = len(sinks)
    base = np.arange(count) * per
    t = np.nonzero(mu > 0)[0]
    us.append(np.repeat(base + src_local, len(t)))
    vs.append((base[:, None] + node(middle, t)[None]).ravel())
    cs.append(np.tile(mu[t], count))
    bs.append(np.repeat(np.arange(count), len(t)))
    for layer in range(2, middle + 1):
        a, b = _STATE["shared_edges"][layer]
        us.append((base[:, None] + node(layer, a)[None]).ravel())
        vs.append((base[:, None] + node(layer - 1, b)[None]).ravel())
        cs.append(np.tile(ahat[layer - 1][a, b], count))
        bs.append(np.repeat(np.arange(count), len(a)))
    bottom = ahat[0][:, sinks].T
    p, k = np.nonzero(bottom > 0)
    us.append(base[p] + node(1, k))
    vs.append(base[p] + sink_local)
    cs.append(bottom[p, k])
    bs.append(p)
    lower, _, _ = _exact_max_flow(
        count * per, per, *_concat(us, vs, cs, bs), base + src_local, base + sink_local
    )
    return lower


def _concat(*parts: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    return tuple(np.concatenate(p) if p else np.empty(0) for p in parts)


def _pair_edges(
    queries: np.ndarray, keys: np.ndarray, sparse: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Edges of the (pruned) flow network of each pair, numbered per component.

    ``sparse=False``: every edge between nodes that lie on some path from (L, i) to (0, j).
    ``sparse=True``: only a subgraph (the "ladder"): all source and sink edges, and in the
    middle layers the edges out of token i, into token j, the diagonal (residual) edges and
    the top-k edges of every row and column. Its max-flow is a lower bound.
    """
    ahat, down, up = _STATE["ahat"], _STATE["down"], _STATE["up"]
    n_layers, n, _ = ahat.shape
    count = len(queries)
    per = (n_layers + 1) * n
    relevant = down[:, queries, :].transpose(1, 0, 2) & up[:, :, keys].transpose(2, 0, 1)
    base = np.arange(count) * per
    us, vs, cs, bs = [], [], [], []
    tokens = np.arange(n)
    for layer in range(1, n_layers + 1):
        matrix = ahat[layer - 1]
        if not sparse:
            mask = relevant[:, layer, :, None] & relevant[:, layer - 1, None, :] & (matrix > 0)
            p, a, b = np.nonzero(mask)
        elif layer in (1, n_layers):  # every source edge (out of i) or sink edge (into j)
            p = np.repeat(np.arange(count), n)
            tt = np.tile(tokens, count)
            a, b = (queries[p], tt) if layer == n_layers else (tt, keys[p])
            ok = relevant[p, layer, a] & relevant[p, layer - 1, b] & (matrix[a, b] > 0)
            p, a, b = p[ok], a[ok], b[ok]
        else:
            qi, kj = np.repeat(queries, n), np.repeat(keys, n)
            pp = np.repeat(np.arange(count), n)
            tt = np.tile(tokens, count)
            top_a, top_b = _STATE["top_k"][layer]
            tp = np.repeat(np.arange(count), len(top_a))
            ta, tb = np.tile(top_a, count), np.tile(top_b, count)
            keep_col = tt != qi
            keep_diag = (tt != qi) & (tt != kj)
            keep_top = (ta != queries[tp]) & (tb != keys[tp])
            p = np.concatenate([pp, pp[keep_col], pp[keep_diag], tp[keep_top]])
            a = np.concatenate([qi, tt[keep_col], tt[keep_diag], ta[keep_top]])
            b = np.concatenate([tt, kj[keep_col], tt[keep_diag], tb[keep_top]])
            ok = relevant[p, layer, a] & relevant[p, layer - 1, b] & (matrix[a, b] > 0)
            p, a, b = p[ok], a[ok], b[ok]
        us.append(base[p] + layer * n + a)
        vs.append(base[p] + (layer - 1) * n + b)
        cs.append(matrix[a, b])
        bs.append(p)
    u, v, c, comp = _concat(us, vs, cs, bs)
    return u, v, c, comp.astype(np.int64), per


def _pairs_job(job: tuple[np.ndarray, np.ndarray, bool]) -> np.ndarray:
    """Max-flow of each pair: on the ladder subgraph (certified against a full-graph cut,
    NaN where that fails) or on the full pruned graph."""
    queries, keys, sparse = job
    ahat, up = _STATE["ahat"], _STATE["up"]
    n_layers, n, _ = ahat.shape
    u, v, c, comp, per = _pair_edges(queries, keys, sparse)
    count = len(queries)
    base = np.arange(count) * per
    lower, upper, side = _exact_max_flow(
        count * per, per, u, v, c, comp, base + n_layers * n + queries, base + keys
    )
    if not sparse:
        return upper
    result = np.full(count, np.nan)
    bound = _STATE["bound"][queries, keys]
    simple = lower >= bound - _CERTIFY_TOL
    result[simple] = bound[simple]
    rest = np.nonzero(~simple)[0]
    if len(rest):
        side = side.reshape(count, n_layers + 1, n)[rest]
        no_sink = ~up[:, :, keys[rest]].transpose(2, 0, 1)
        cut = _full_cut_capacity(side | no_sink)
        ok = lower[rest] >= cut - _CERTIFY_TOL
        result[rest[ok]] = cut[ok]
    return result


def _full_cut_capacity(source_side: np.ndarray) -> np.ndarray:
    """Capacity in the full layered graph of cuts given by per-layer source-side masks
    ``[pair, layer 0..L, token]``. O(pairs·L·N²)."""
    ahat = _STATE["ahat"]
    total = np.zeros(source_side.shape[0])
    inside = source_side.astype(np.float64)
    for layer in range(1, ahat.shape[0] + 1):
        # einsum without BLAS: these products are small and BLAS threads only add overhead
        total += np.einsum(
            "pa,ab,pb->p",
            inside[:, layer],
            ahat[layer - 1],
            1.0 - inside[:, layer - 1],
            optimize=False,
        )
    return total


def _run(fn: Callable[[Any], np.ndarray], jobs: list[Any], workers: int) -> list[np.ndarray]:
    """Run jobs in order, over ``workers`` forked processes when that helps."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        return list(pool.map(fn, jobs))


def _chunks(items: np.ndarray, size: int) -> list[np.ndarray]:
    size = max(1, int(size))
    return [items[start : start + size] for start in range(0, len(items), size)]


def _pair_jobs(
    queries: np.ndarray, keys: np.ndarray, per_pair: np.ndarray, sparse: bool, workers: int
) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Split pairs into jobs of about ``_EDGE_BUDGET`` edges, at least ``2·workers`` jobs."""
    total = float(per_pair.sum())
    budget = min(_EDGE_BUDGET, max(1.0, total / max(2 * workers, 1)))
    jobs, start, acc = [], 0, 0.0
    for index, edges in enumerate(per_pair):
        acc += edges
        if acc >= budget:
            jobs.append((queries[start : index + 1], keys[start : index + 1], sparse))
            start, acc = index + 1, 0.0
    if start < len(queries):
        jobs.append((queries[start:], keys[start:], sparse))
    return jobs


def _layered_flow(ahat: np.ndarray, workers: int) -> np.ndarray:
    """Raw max-flow for every (output, input) pair of a network with three or more layers."""
    n_layers = ahat.shape[0]
    down, up = _reachability(ahat)
    reach = down[0]
    bound_src = ahat[n_layers - 1] @ up[n_layers - 1].astype(np.float64)
    bound_snk = down[1].astype(np.float64) @ ahat[0]
    bound = np.where(reach, np.minimum(bound_src, bound_snk), 0.0)
    raw = np.where(reach, np.nan, 0.0)
    last_flow_stats["unreachable"] = int((~reach).sum())
    down_count, up_count = down.sum(axis=2), up.sum(axis=1)
    _STATE.update(ahat=ahat, down=down, up=up, bound=bound, top_k=_top_k_edges(ahat, _TOP_K, False))
    try:
        start = time.perf_counter()
        if n_layers >= 4 and reach.all():
            _shared_certificate(ahat, raw, bound, workers)
        last_flow_stats["shared"] = int((~np.isnan(raw)).sum()) - last_flow_stats["unreachable"]
        last_flow_stats["shared_s"] = time.perf_counter() - start
        for stage in ("ladder", "full"):
            start = time.perf_counter()
            queries, keys = np.nonzero(np.isnan(raw))
            counts = np.minimum(down_count[:, queries], up_count[:, keys]).astype(np.float64)
            if stage == "ladder":
                per_pair = 5.0 * counts.sum(axis=0) + 1
            else:
                per_pair = (counts[1:] * counts[:-1]).sum(axis=0) + 1
            jobs = _pair_jobs(queries, keys, per_pair, stage == "ladder", workers)
            values = np.concatenate(_run(_pairs_job, jobs, workers)) if jobs else np.empty(0)
            raw[queries, keys] = values
            last_flow_stats[stage] = int((~np.isnan(values)).sum())
            last_flow_stats[f"{stage}_s"] = time.perf_counter() - start
    finally:
        _STATE.clear()
    if np.isnan(raw).any():  # pragma: no cover - the full-graph stage always certifies
        raise RuntimeError("attention_flow: some pairs were not solved")
    return raw


def _shared_certificate(ahat: np.ndarray, raw: np.ndarray, bound: np.ndarray, workers: int):
    """Certify ``F[i, j] = bound[i, j]`` for many pairs with 2N max-flows instead of N².

    Pick a middle layer m and a vector μ (the mean over output tokens of the rollout-
    proportional flow reaching layer m). If output i can push exactly μ into layer m
    (one max-flow per i) and input j can absorb ρ_j from μ (one max-flow per j), joining
    the two flows shows ``F[i, j] >= ρ_j``; when ``ρ_j`` reaches the cut bound the pair is
    solved. Dense attention (the common case) certifies almost every pair this way.
    """
    n_layers, n, _ = ahat.shape
    middle = n_layers // 2
    mu = np.full(n, 1.0 / n)
    for layer in range(n_layers, middle, -1):
        mu = mu @ ahat[layer - 1]
    _STATE.update(mu=mu, middle=middle)
    target = mu.sum() - _CERTIFY_TOL
    probe = np.arange(min(n, 4))
    strictest = bound.max(axis=0)
    k = _SHARED_K
    while True:  # the sparsest subgraph on which a few probe pairs certify
        shared_edges = _top_k_edges(ahat, k, True)
        _STATE["shared_edges"] = shared_edges
        probe_sources = _source_side_job(probe) >= target
        probe_rho = _sink_side_job(probe)
        probe_sinks = probe_rho >= strictest[probe] - _CERTIFY_TOL
        if (probe_sources.all() and probe_sinks.all()) or k >= n:
            break
        k *= 2
    if not (probe_sources.any() and probe_sinks.any()):
        return
    edges_side = sum(len(a) for a, _ in shared_edges) / 2 + 2 * n
    size = max(1, int(_EDGE_BUDGET // edges_side))
    rest = np.arange(len(probe), n)
    jobs = _chunks(rest, size)
    source_flow = _run(_source_side_job, jobs, workers)
    sink_flow = _run(_sink_side_job, jobs, workers)
    good_sources = np.concatenate([probe_sources, *(flow >= target for flow in source_flow)])
    rho = np.concatenate([probe_rho, *sink_flow])
    solved = good_sources[:, None] & (rho[None, :] >= bound - _CERTIFY_TOL)
    raw[solved] = bound[solved]


def attention_flow(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    residual: float = 0.5,
    normalize: bool = True,
    *,
    head_weights: Float[Tensor, "layer head"] | Float[Tensor, " head"] | None = None,
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
    ``F[i, j] = Σ_k min(Â_2[i, k], Â_1[k, j])`` exactly (paths through different middle
    tokens share no edge), used directly here.

    Algorithm (three or more layers), exact to 1e-12 (tests compare with networkx):

    1. Prune: boolean reachability from every output and to every input (O(L·N³)); pairs
       with no path get 0. Two cuts bound every pair from above: the source edges and the
       sink edges (restricted to nodes on some path).
    2. Shared certificate (every pair connected, L >= 4): pick a middle layer m and the
       vector μ that the rollout-proportional flow of an average output delivers there.
       N max-flows test whether each output i can push exactly μ into layer m, N more
       give how much ρ_j each input j can absorb from μ; joining the two flows shows
       ``F[i, j] >= ρ_j``, which solves every pair where ρ_j reaches the cut bound. These
       max-flows run on the top-k edges per row and column (k = 16, doubled until a few
       probe pairs certify): a subgraph's flow is still a lower bound. Dense attention
       is solved entirely here, with O(N) max-flows instead of N².
    3. Ladder: a max-flow on an O(L·N) subgraph per pair (edges out of i, into j, the
       diagonal, top-2 per row and column) gives a lower bound; the pair is solved when it
       meets the cut bound or the full-graph capacity of the subgraph's min cut.
    4. The pairs left get a max-flow on their full pruned graph.

    Every max-flow is exact in float64 (see ``_exact_max_flow``: scipy's integer Dinic plus
    residual refinement, stopped when a flow and a cut agree to 1e-13); many small networks
    are solved in one call as disjoint components. Worst case O(N²) max-flows on
    O(L·N²)-edge graphs (the reference runs one networkx max-flow per pair); typical dense
    inputs need O(N) max-flows. Memory: O(L·N²) plus O(edge budget) per batch.

    ``workers``: processes for the independent max-flows (fork; ``None`` uses up to 2
    when the input is large enough to pay for them, 1 means in-process). Calls from
    several threads are safe; they run one at a time.
    """
    ahat_t = augment(pattern, residual, head_weights)
    ahat = ahat_t.cpu().numpy()
    n_layers, n, _ = ahat.shape
    if workers is None:
        big = n_layers * n**3 >= 4_000_000
        workers = min(2, os.cpu_count() or 1) if big else 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        workers = 1
    with _LOCK:
        last_flow_stats.clear()
        if n_layers == 1:
            raw = ahat[0].copy()
        elif n_layers == 2:
            raw = _two_layer_flow(ahat)
        else:
            raw = _layered_flow(ahat, workers)
    if normalize:
        sums = raw.sum(axis=1, keepdims=True)
        raw = np.divide(raw, sums, out=np.zeros_like(raw), where=sums > 0)
    return torch.from_numpy(raw).to(ahat_t.device)


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
    model's result (METHODS.md §1).

    Every layer attends uniformly to the keys its mask allows: causal (key ≤ query),
    bidirectional (all keys) or a given ``mask`` ``[query key]`` (True = may attend; every
    row needs one True). In a causal decoder this alone makes rows drift toward token 0, so
    a model's mass on early tokens means little unless it exceeds this baseline.
    ``method="rollout"`` returns ``[layer query key]`` like :func:`rollout`;
    ``method="flow"`` returns ``[query key]`` like :func:`attention_flow`.
    """
    if mask is None:
        if n is None or int(n) < 1:
            raise ValueError(f"n must be a positive number of tokens, got {n}")
        ones = torch.ones(int(n), int(n), dtype=torch.bool)
        mask = torch.tril(ones) if causal else ones
    else:
        if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
            raise ValueError("mask must be a square [query key] boolean tensor")
        if n is not None and int(n) != mask.shape[0]:
            raise ValueError(f"n={n} does not match the mask size {mask.shape[0]}")
        mask = mask.to(torch.bool)
        if not mask.any(dim=1).all():
            raise ValueError("mask has a query row with no allowed key")
    if int(n_layers) < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    uniform = mask.to(torch.float64)
    uniform = uniform / uniform.sum(dim=1, keepdim=True)
    stack = uniform.expand(int(n_layers), *uniform.shape).contiguous()
    if method == "rollout":
        return rollout(stack, residual)
    if method == "flow":
        return attention_flow(stack, residual, normalize)
    raise ValueError(f"method must be 'rollout' or 'flow', got {method!r}")


def relevance(model: Any, inputs: Any, target: Any = None) -> Float[Tensor, "query key"]:
    """Chefer et al. 2021 gradient-weighted relevance of one prompt for `target`
    (default: the model's top prediction at the last position). Implemented in
    `analyses.relevance` (it needs the model for the backward pass); exposed here
    beside rollout and flow, which it generalizes."""
    from headscope.analyses.relevance import relevance as _relevance

    return _relevance(model, inputs, target)
