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
not only to a tolerance (float64 summation adds ~1e-15). Each pair is solved by the
compiled push-relabel of :mod:`headscope.solvers.pushrelabel` on ``G'`` (a dense array with
the pruned edges at 0), which returns its flow and prices its certifying cut in ``G``.
Memory: O(L·N²) for the networks and reachability masks, plus two ``[L, N, N]`` float64
flow arrays per thread.
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
    ``values = upper = F`` there. Three or more: each pair with a path in ``G`` is one
    push-relabel max-flow on ``G'`` (compiled, threads as in ``pairwise_max_flow``'s
    ``workers``), whose certifying cut is priced in ``G``. The kernel scans dense rows, so
    the pruning mainly buys fewer pushes: on real maps it costs about as much as the exact
    solve (docs/benchmarks.md); its use is the bracket, not speed.
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
    automatic = workers is None
    workers = maxflow._resolve_workers(workers, n_layers, n)
    pruned = np.where(keep, full, 0.0)
    down_full, up_full = maxflow._reachability(full)
    end_cuts = np.minimum(
        full[n_layers - 1] @ up_full[n_layers - 1].astype(np.float64),
        down_full[1].astype(np.float64) @ full[0],
    )
    end_cuts = np.where(down_full[0], end_cuts, 0.0)
    values = np.zeros((n, n))
    upper = end_cuts.copy()
    queries, keys = np.nonzero(down_full[0])  # pairs with a path in G (else F = F' = 0)
    threads = maxflow._push_relabel_threads(workers, automatic, len(queries), full.shape)
    lower, cut = maxflow._push_relabel(pruned, queries, keys, threads, price=full)
    # a pair whose relabel budget ran out (none measured) keeps the bracket [0, end cuts]
    solved = np.isfinite(lower)
    queries, keys = queries[solved], keys[solved]
    values[queries, keys] = np.maximum(lower[solved], 0.0)
    upper[queries, keys] = np.minimum(upper[queries, keys], cut[solved])
    return values, np.maximum(upper, values)
