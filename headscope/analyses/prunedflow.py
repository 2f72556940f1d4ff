"""Attention flow on a pruned network, bracketed by a proven bound (docs/methods.md §1.2).

Attention flow (Abnar & Zuidema 2020) is the max-flow from output ``(L, i)`` to input
``(0, j)`` of the layered network whose edge ``(l, a) -> (l − 1, b)`` has capacity
``Â_l[a, b]`` (:mod:`headscope.analyses.maxflow` solves it exactly). Here every pair is
solved on a subgraph ``G'`` that keeps, in every layer, each query's ``top_k`` largest
edges, or its largest edges up to ``1 − mass`` of the row, plus the residual diagonal (and,
with ``keep_ends``, every edge of the first and the last layer). The result brackets the
exact flow ``F`` of the full network ``G``:

- ``values = F'``, the max-flow of ``G'``: ``F' <= F`` (a flow of a subgraph is a flow of
  ``G``).
- ``upper = min(c_G(S), end cuts) >= F`` where ``S`` is the source side of the minimum cut
  that certifies ``F'`` in ``G'`` and ``c_G(S)`` its capacity counted in ``G`` (max-flow ≤
  the capacity of every cut). ``c_G(S) = F' + (capacity of the pruned edges that cross S)``,
  so ``upper − values`` is at most the pruned mass crossing that one cut.
- A priori, without solving: ``F − F' <= Σ_l min(1, P_l)`` with ``P_l`` the total pruned
  capacity of layer ``l`` (take a max flow of ``G`` and drop every path through a pruned
  edge: each layer's pruned edges carry at most their capacity and at most the unit that
  leaves the source). :func:`prior_bound` returns it.

Both sides are computed from an actual flow and an actual cut: the bracket holds exactly,
not only to a tolerance (the max-flows are solved to 1e-13 as in ``maxflow``; float64
summation adds ~1e-15). Memory: O(L·N²) for the networks and reachability masks plus
O(``_EDGE_BUDGET``) per batch of max-flows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float

from headscope.analyses import maxflow
from headscope.errors import InputError

__all__ = ["PrunedFlow", "prior_bound", "pruned_max_flow", "pruning_mask"]


@dataclass(frozen=True, eq=False)
class PrunedFlow:
    """Max-flow of a pruned network and a certified bracket of the exact flow.

    ``values[i, j] <= F[i, j] <= upper[i, j]`` for the exact raw flow ``F`` (rows not
    normalized); ``bound = upper − values`` is the certified error of ``values``.
    ``kept``: fraction of the network's positive edges that the pruned network keeps;
    ``seconds``: wall time of the solve. Arrays are float64 and read-only.
    """

    values: Float[np.ndarray, "query key"]
    upper: Float[np.ndarray, "query key"]
    kept: float
    seconds: float

    @property
    def bound(self) -> Float[np.ndarray, "query key"]:
        """Certified error ``upper − values`` (>= 0) of every pair."""
        return self.upper - self.values


def pruning_mask(
    ahat: Float[np.ndarray, "layer query key"],
    *,
    top_k: int | None = None,
    mass: float | None = None,
    keep_ends: bool = True,
) -> Bool[np.ndarray, "layer query key"]:
    """Edges the pruned network keeps: per layer and query row, the ``top_k`` largest
    entries, or the fewest largest entries holding at least ``1 − mass`` of the row, plus
    the diagonal; with ``keep_ends`` every edge of the first and last layer. Zero entries
    are never kept (no edge). Exactly one of ``top_k`` and ``mass`` must be given."""
    if (top_k is None) == (mass is None):
        raise InputError("give exactly one of top_k and mass")
    n = ahat.shape[-1]
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
            raise InputError(f"top_k must be an int >= 1, got {top_k!r}")
        k = min(int(top_k), n)
        order = np.argpartition(-ahat, k - 1, axis=2)[:, :, :k]
        keep = np.zeros(ahat.shape, dtype=bool)
        np.put_along_axis(keep, order, True, axis=2)
    else:
        mass = float(mass)  # type: ignore[arg-type]
        if not 0.0 <= mass < 1.0:
            raise InputError(f"mass must be in [0, 1), got {mass}")
        order = np.argsort(-ahat, axis=2, kind="stable")
        ranked = np.take_along_axis(ahat, order, axis=2)
        before = np.cumsum(ranked, axis=2) - ranked  # mass of the larger entries
        rows = ahat.sum(axis=2, keepdims=True)
        keep = np.zeros(ahat.shape, dtype=bool)
        np.put_along_axis(keep, order, before < (1.0 - mass) * rows, axis=2)
    keep |= np.eye(n, dtype=bool)[None]
    if keep_ends:
        keep[0] = True
        keep[-1] = True
    return keep & (ahat > 0)


def prior_bound(
    ahat: Float[np.ndarray, "layer query key"], keep: Bool[np.ndarray, "layer query key"]
) -> float:
    """A priori bound ``Σ_l min(1, P_l)`` on ``F − F'`` for every pair (module docstring):
    ``P_l`` is the capacity the pruning removes from layer ``l``."""
    removed = np.where(keep, 0.0, np.maximum(ahat, 0.0)).sum(axis=(1, 2))
    return float(np.minimum(1.0, removed).sum())


@dataclass(frozen=True, eq=False)
class _PrunedNetwork:
    """Read-only inputs of the per-pair max-flows, shared with worker processes."""

    full: Float[np.ndarray, "layer query key"]  # capacities of G
    pruned: Float[np.ndarray, "layer query key"]  # capacities of G' (0 = no edge)
    edges: tuple[tuple[np.ndarray, np.ndarray], ...]  # G' edges per layer (index 0 unused)
    down: Bool[np.ndarray, "node_layer output token"]  # in G': output i reaches (l, k)
    up: Bool[np.ndarray, "node_layer token input"]  # in G': (l, k) reaches input j
    up_full: Bool[np.ndarray, "node_layer token input"]  # the same in G


def pruned_max_flow(
    ahat: Float[np.ndarray, "layer query key"],
    *,
    top_k: int | None = None,
    mass: float | None = None,
    keep_ends: bool = True,
    workers: int | None = None,
) -> PrunedFlow:
    """Max-flow of every (output, input) pair on the pruned network of :func:`pruning_mask`,
    with the certified bracket ``values <= F <= upper`` of the module docstring.

    ``ahat`` as for :func:`headscope.analyses.maxflow.pairwise_max_flow` (row-stochastic
    ``[layer query key]``, input layer first). One or two layers have closed forms, so
    ``values = upper = F`` there. Three or more: each pair is one max-flow on its part of
    ``G'`` (the nodes on some path from ``(L, i)`` to ``(0, j)`` in ``G'``), solved exactly
    with scipy's integer Dinic plus refinement (``maxflow._exact_max_flow``); its min cut is
    then priced in the full network with dense products (O(pairs·L·N²) flops). ``workers``
    as in ``pairwise_max_flow``. Cost: N² sparse max-flows, so this pays when ``G'`` is much
    sparser than ``G``; it never beats a dense exact solve on small inputs.
    """
    start = time.perf_counter()
    full = maxflow._checked_capacities(ahat)
    n_layers = full.shape[0]
    keep = pruning_mask(full, top_k=top_k, mass=mass, keep_ends=keep_ends)
    kept = float(keep.sum() / max(int((full > 0).sum()), 1))
    if n_layers <= 2:
        exact = maxflow.pairwise_max_flow(full, workers=1).values
        values, upper = exact.copy(), exact.copy()
    else:
        values, upper = _bracket(full, keep, workers)
    values.flags.writeable = False
    upper.flags.writeable = False
    return PrunedFlow(values, upper, kept, time.perf_counter() - start)


def _bracket(full: np.ndarray, keep: np.ndarray, workers: int | None) -> tuple[np.ndarray, ...]:
    n_layers, n, _ = full.shape
    workers = maxflow._resolve_workers(workers, n_layers, n)
    pruned = np.where(keep, full, 0.0)
    down, up = maxflow._reachability(pruned)
    down_full, up_full = maxflow._reachability(full)
    edges = (
        (np.empty(0, int), np.empty(0, int)),
        *(np.nonzero(keep[layer - 1]) for layer in range(1, n_layers + 1)),
    )
    network = _PrunedNetwork(full, pruned, edges, down, up, up_full)
    end_cuts = np.minimum(
        full[n_layers - 1] @ up_full[n_layers - 1].astype(np.float64),
        down_full[1].astype(np.float64) @ full[0],
    )
    end_cuts = np.where(down_full[0], end_cuts, 0.0)
    values = np.zeros((n, n))
    upper = end_cuts.copy()
    queries, keys = np.nonzero(down[0])  # pairs with a path in G'
    if len(queries):
        per_pair = sum(len(a) for a, _ in edges) + 1
        size = max(1, int(maxflow._EDGE_BUDGET // per_pair))
        size = min(size, max(1, -(-len(queries) // (2 * workers))))
        jobs = list(zip(maxflow._chunks(queries, size), maxflow._chunks(keys, size), strict=True))
        results = maxflow._run(_pruned_job, network, jobs, workers)
        values[queries, keys] = np.concatenate([r[0] for r in results])
        upper[queries, keys] = np.minimum(
            upper[queries, keys], np.concatenate([r[1] for r in results])
        )
    lonely_q, lonely_k = np.nonzero(~down[0] & down_full[0])  # no path in G', one in G
    if len(lonely_q):  # F' = 0; the nodes reachable from i in G' are a cut of G
        side = down[:, lonely_q, :].transpose(1, 0, 2) | ~up_full[:, :, lonely_k].transpose(2, 0, 1)
        upper[lonely_q, lonely_k] = np.minimum(
            upper[lonely_q, lonely_k], maxflow._full_cut_capacity(full, side)
        )
    return values, np.maximum(upper, values)


def _pruned_job(
    network: _PrunedNetwork, job: tuple[np.ndarray, np.ndarray]
) -> Float[np.ndarray, "2 pair"]:
    """``[F', c_G(S)]`` for a batch of pairs: max-flow on their part of ``G'`` and the
    capacity in ``G`` of the cut that certifies it."""
    queries, keys = job
    full, pruned, down, up = network.full, network.pruned, network.down, network.up
    n_layers, n, _ = full.shape
    count = len(queries)
    per = (n_layers + 1) * n
    base = np.arange(count) * per
    us, vs, cs, bs = [], [], [], []
    for layer in range(1, n_layers + 1):
        a, b = network.edges[layer]
        on_path = (
            down[layer][queries][:, a]
            & up[layer][a][:, keys].T
            & down[layer - 1][queries][:, b]
            & up[layer - 1][b][:, keys].T
        )
        p, e = np.nonzero(on_path)
        us.append(base[p] + layer * n + a[e])
        vs.append(base[p] + (layer - 1) * n + b[e])
        cs.append(pruned[layer - 1][a[e], b[e]])
        bs.append(p)
    u, v, c, comp = maxflow._concat(us, vs, cs, bs)
    lower, _, side = maxflow._exact_max_flow(
        count * per,
        per,
        u.astype(np.int64),
        v.astype(np.int64),
        c,
        comp.astype(np.int64),
        base + n_layers * n + queries,
        base + keys,
    )
    # Nodes that cannot reach input j in G join the source side: a set closed under
    # successors, so adding it only removes cut edges.
    side = side.reshape(count, n_layers + 1, n) | ~network.up_full[:, :, keys].transpose(2, 0, 1)
    return np.stack([lower, maxflow._full_cut_capacity(full, side)])
