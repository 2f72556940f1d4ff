"""Compiled push-relabel max-flow for one (output, input) pair of a layered attention network.

Attention flow (docs/methods.md §1) asks for N² independent max-flows on the same layered
DAG: nodes ``(l, t)``, edges ``(l, a) -> (l − 1, b)`` of capacity ``Â_l[a, b]``, from
``(L, i)`` to ``(0, j)``. On real attention maps most of the flow runs through thousands of
small edges, so augmenting-path solvers (scipy's Dinic) need one augmentation per
saturated edge; push-relabel moves a node's whole excess along all its edges in one scan.
This module holds that solver, compiled with numba, on dense ``[L, N, N]`` arrays:

- the network of pair ``(i, j)``: the source edges ``Â_L[i, :]``, the full middle layers
  ``Â_{L−1} … Â_2`` and the sink edges ``Â_1[:, j]`` (``(L−1)·N`` inner nodes);
- highest-label push-relabel, first phase only (the max-flow *value* is the sink's excess
  once no node that can still reach the sink holds excess), with exact initial labels
  (each node's distance to the sink, ``V`` where it has none, as below the diagonal of
  causal maps; computed once per input token j), the gap heuristic and a global relabel
  (backward BFS) after every ``2V`` relabels (Goldberg & Tarjan 1988; Cherkassky &
  Goldberg 1997);
- a certificate per pair: labels stay valid (``d[x] <= d[y] + 1`` on every residual arc), so
  for a label ``g`` that no node holds, no residual arc leaves ``{d > g}``; that set is a
  cut whose capacity (an upper bound) the kernel sums. The sink's excess is a feasible
  flow (a lower bound), so ``cut − value`` bounds the error; callers compare it with their
  tolerance. Residual capacities and excesses below ``EPS = 1e-14`` count as zero, so the
  gap is a few ``EPS`` (measured: ≤ 4e-15 on MiniLM maps). The cut can be priced in
  another graph (``price``), as the pruned flow of ``headscope.analyses.prunedflow`` does.

Memory per thread: two ``[L, N, N]`` float64 flow arrays (the flows and their transpose,
so that both arc directions are read contiguously) and O(L·N) labels; the capacities and
their transpose are shared read-only. Functions release the GIL (``nogil``): callers run
chunks of pairs on threads. Compiled on first use (a few seconds) and cached on disk by
numba.
"""

# Graph-algorithm notation (C, F, L, N, S, T, V as in the docstrings) reads better here.
# ruff: noqa: N803, N806

from __future__ import annotations

import numpy as np
from numba import njit

EPS = 1e-14
# A relabel budget far above what any input needs (a node at label V is dead, so each node
# relabels fewer than V times); exceeding it returns NaN: the caller uses another solver.
_RELABEL_BUDGET_PER_NODE = 4


@njit(cache=True, nogil=True)
def _sink_distances(C, CT, F, FT, fT, j, d, queue):  # pragma: no cover - compiled
    """Exact residual distance of every inner node to the sink (V where unreachable)."""
    L, N = C.shape[0], C.shape[1]
    S = (L - 1) * N
    V = S + 2
    for x in range(V):
        d[x] = V
    d[S + 1] = 0
    tail = 0
    for u in range(N):
        if C[0, u, j] - fT[u] > EPS:
            d[u] = 1
            queue[tail] = u
            tail += 1
    head = 0
    while head < tail:
        y = queue[head]
        head += 1
        m = y // N + 1
        v = y - (m - 1) * N
        dist = d[y] + 1
        if m <= L - 2:  # parents (m + 1, w) with residual on the edge down to y
            base = m * N
            for w in range(N):
                if d[base + w] == V and CT[m, v, w] - FT[m, v, w] > EPS:
                    d[base + w] = dist
                    queue[tail] = base + w
                    tail += 1
        if m >= 2:  # children (m − 1, w) that can push back up along flow from y
            base = (m - 2) * N
            for w in range(N):
                if d[base + w] == V and F[m - 1, v, w] > EPS:
                    d[base + w] = dist
                    queue[tail] = base + w
                    tail += 1


@njit(cache=True, nogil=True)
def _pair_flow(
    C, CT, P, i, j, labels, F, FT, fS, fT, d, cur, excess, head, nxt, cnt, queue
):  # pragma: no cover
    """(value, cut capacity) of the max-flow from output i to input j; NaN on a blown budget.

    Inner node ``x = (m − 1)·N + u`` is token u of layer m (1 ≤ m ≤ L − 1); S = (L−1)·N,
    T = S + 1. ``F[l, a, b]``: flow on edge (l + 1, a) -> (l, b), for 1 ≤ l ≤ L − 2;
    ``FT[l] = F[l].T``; ``fS[b]``: flow S -> (L − 1, b); ``fT[a]``: flow (1, a) -> T.
    """
    L, N = C.shape[0], C.shape[1]
    S = (L - 1) * N
    T = S + 1
    V = S + 2
    H = 2 * V + 2
    for layer in range(1, L - 1):
        for a in range(N):
            for b in range(N):
                F[layer, a, b] = 0.0
                FT[layer, a, b] = 0.0
    for a in range(N):
        fS[a] = 0.0
        fT[a] = 0.0
    for x in range(V):
        excess[x] = 0.0
        cur[x] = 0
    # exact initial labels: each node's distance to the sink (V where it cannot reach it, as
    # on causal maps, so no excess ever enters a dead end); they depend on j only
    for x in range(V):
        d[x] = labels[x]
    d[S] = V
    for b in range(N):  # saturate the source edges
        c = C[L - 1, i, b]
        if c > 0.0:
            fS[b] = c
            excess[(L - 2) * N + b] += c
    budget = _RELABEL_BUDGET_PER_NODE * V * V
    relabels = 0
    while True:
        for h in range(H):
            head[h] = -1
            cnt[h] = 0
        top = -1
        for x in range(S):
            if d[x] < V:
                cnt[d[x]] += 1
                if excess[x] > EPS:
                    nxt[x] = head[d[x]]
                    head[d[x]] = x
                    top = max(top, d[x])
        since = 0
        stale = False
        while top >= 0:
            x = head[top]
            if x < 0:
                top -= 1
                continue
            head[top] = nxt[x]
            if d[x] != top or excess[x] <= EPS:
                continue
            m = x // N + 1
            u = x - (m - 1) * N
            below = (m - 2) * N
            above = m * N
            while True:  # discharge x
                dx = d[x]
                k = cur[x]
                if m == 1:  # the one edge down is the sink edge
                    if k == 0 and dx == 1:
                        r = C[0, u, j] - fT[u]
                        if r > EPS:
                            delta = min(excess[x], r)
                            fT[u] += delta
                            excess[x] -= delta
                            excess[T] += delta
                    if excess[x] > EPS:
                        k = N
                else:
                    while k < N:
                        y = below + k
                        if d[y] == dx - 1:
                            r = C[m - 1, u, k] - F[m - 1, u, k]
                            if r > EPS:
                                delta = min(excess[x], r)
                                F[m - 1, u, k] += delta
                                FT[m - 1, k, u] += delta
                                excess[x] -= delta
                                if excess[y] <= EPS:
                                    nxt[y] = head[d[y]]
                                    head[d[y]] = y
                                    top = max(top, d[y])
                                excess[y] += delta
                                if excess[x] <= EPS:
                                    break
                        k += 1
                if excess[x] > EPS and m <= L - 2:  # arcs back up, along flow into x
                    k = max(k, N)
                    while k < 2 * N:
                        w = k - N
                        y = above + w
                        if d[y] == dx - 1:
                            r = FT[m, u, w]
                            if r > EPS:
                                delta = min(excess[x], r)
                                FT[m, u, w] -= delta
                                F[m, w, u] -= delta
                                excess[x] -= delta
                                if excess[y] <= EPS:
                                    nxt[y] = head[d[y]]
                                    head[d[y]] = y
                                    top = max(top, d[y])
                                excess[y] += delta
                                if excess[x] <= EPS:
                                    break
                        k += 1
                cur[x] = k
                if excess[x] <= EPS:
                    break
                # relabel: one above the lowest neighbour over a residual arc
                lowest = H
                if m == 1:
                    if C[0, u, j] - fT[u] > EPS:
                        lowest = 0
                else:
                    for b in range(N):
                        if d[below + b] < lowest and C[m - 1, u, b] - F[m - 1, u, b] > EPS:
                            lowest = d[below + b]
                if m <= L - 2:
                    for w in range(N):
                        if d[above + w] < lowest and FT[m, u, w] > EPS:
                            lowest = d[above + w]
                relabels += 1
                if relabels > budget:
                    return np.nan, np.nan
                since += 1
                cur[x] = 0
                cnt[dx] -= 1
                if cnt[dx] == 0:  # gap: nothing at label dx, so nothing above reaches T
                    for z in range(S):
                        if dx < d[z] < V:
                            cnt[d[z]] -= 1
                            d[z] = V
                    d[x] = V
                    break
                if lowest + 1 >= V:
                    d[x] = V
                    break
                d[x] = lowest + 1
                cnt[lowest + 1] += 1
                if since > 2 * V:
                    stale = True
                    break
            if stale:
                break
            if d[x] < V:
                top = max(top, d[x])
        if not stale:
            break
        _sink_distances(C, CT, F, FT, fT, j, d, queue)
        d[S] = V
        for x in range(V):
            cur[x] = 0
    value = excess[T]
    # certificate: the labels are valid (d[x] <= d[y] + 1 on every residual arc), so for a
    # label g that no node holds, no residual arc leaves {d > g}: that set (S included, T
    # and every node with excess outside) is a saturated cut whose capacity bounds the flow
    for h in range(H):
        cnt[h] = 0
    for x in range(S):
        if d[x] < V:
            cnt[d[x]] += 1
    g = 1
    while cnt[g] > 0:
        g += 1
    cut = 0.0
    for b in range(N):
        if d[(L - 2) * N + b] <= g:
            cut += P[L - 1, i, b]
    for m in range(2, L):
        for a in range(N):
            if d[(m - 1) * N + a] <= g:
                continue
            for b in range(N):
                if d[(m - 2) * N + b] <= g:
                    cut += P[m - 1, a, b]
    for a in range(N):
        if d[a] > g:
            cut += P[0, a, j]
    return value, cut


@njit(cache=True, nogil=True)
def _solve(C, CT, P, queries, keys, values, cuts):  # pragma: no cover - compiled
    L, N = C.shape[0], C.shape[1]
    V = (L - 1) * N + 2
    F = np.zeros((L, N, N))
    FT = np.zeros((L, N, N))
    fS = np.zeros(N)
    fT = np.zeros(N)
    d = np.empty(V, np.int64)
    cur = np.empty(V, np.int64)
    excess = np.empty(V)
    head = np.empty(2 * V + 2, np.int64)
    nxt = np.empty(V, np.int64)
    cnt = np.empty(2 * V + 2, np.int64)
    queue = np.empty(V, np.int64)
    labels = np.empty((N, V), np.int64)
    known = np.zeros(N, np.bool_)
    for p in range(keys.shape[0]):  # distances to each sink (0, j) with no flow yet
        if not known[keys[p]]:
            _sink_distances(C, CT, F, FT, fT, keys[p], labels[keys[p]], queue)
            known[keys[p]] = True
    for p in range(queries.shape[0]):
        values[p], cuts[p] = _pair_flow(
            C,
            CT,
            P,
            queries[p],
            keys[p],
            labels[keys[p]],
            F,
            FT,
            fS,
            fT,
            d,
            cur,
            excess,
            head,
            nxt,
            cnt,
            queue,
        )


def pair_flows(
    capacities: np.ndarray,
    queries: np.ndarray,
    keys: np.ndarray,
    price: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Max-flow value and certifying cut capacity of each pair ``(queries[p], keys[p])``.

    ``capacities``: ``[L, N, N]`` float64, C-contiguous, entries >= 0, ``L >= 3``;
    ``capacities[l − 1]`` holds the edges ``(l, a) -> (l − 1, b)``. Returns two float64
    arrays of the pairs' length: the flow value (a feasible flow, so a lower bound) and the
    capacity of a cut (an upper bound); both NaN for a pair whose relabel budget ran out.
    ``price`` (same shape and dtype): sum the cut's capacity over these edges instead, e.g. a
    graph's full capacities when ``capacities`` keep only some of its edges: the certifying
    node partition is a cut of both graphs, so its price bounds the full graph's max-flow.
    Raises ValueError for a bad shape or dtype, or a token index outside ``[0, N)``.
    Runs in the calling thread with the GIL released. O(pairs · work per pair), where the
    work is a few passes over the ``L·N²`` edges on attention maps.
    """
    shape = capacities.shape
    if len(shape) != 3 or shape[0] < 3 or shape[1] != shape[2] or capacities.dtype != np.float64:
        raise ValueError(f"capacities must be a float64 [L >= 3, N, N] array, got {shape}")
    capacities = np.ascontiguousarray(capacities)
    transposed = np.ascontiguousarray(capacities.transpose(0, 2, 1))
    queries = np.ascontiguousarray(queries, dtype=np.int64).ravel()
    keys = np.ascontiguousarray(keys, dtype=np.int64).ravel()
    n = shape[1]
    if len(queries) != len(keys):
        raise ValueError(f"{len(queries)} queries but {len(keys)} keys")
    # compiled code does not check bounds: an index outside [0, N) must not reach it
    for name, tokens in (("queries", queries), ("keys", keys)):
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= n):
            raise ValueError(f"{name} must be token indices in [0, {n})")
    if price is None:
        price = capacities
    elif price.shape != shape or price.dtype != np.float64:
        raise ValueError(f"price must be float64 of the capacities' shape {shape}")
    price = np.ascontiguousarray(price)
    values = np.empty(len(queries))
    cuts = np.empty(len(queries))
    _solve(capacities, transposed, price, queries, keys, values, cuts)
    return values, cuts
