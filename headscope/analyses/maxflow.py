"""Exact max-flow between every output and every input token of a layered attention network.

Attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers";
docs/methods.md §1) is, for each pair, the max-flow from output token ``i`` to input token
``j`` of the layered DAG with nodes ``(l, t)`` for ``l = 0..L`` and edges
``(l, i) -> (l − 1, j)`` of capacity ``Â_l[i, j]``; every pair is solved on its own (a
super-sink would let pairs share capacity: a different quantity). :func:`pairwise_max_flow`
solves all N² pairs exactly in float64; :func:`headscope.analyses.flow.attention_flow` builds
``Â`` from a model's attention and calls it.

Invariants: the input is a stack of row-stochastic ``[query, key]`` maps (checked by
``check_pattern``); every value lies in ``[0, 1]`` and ``F[i, j] <= min(1, Σ_k Â_1[k, j])``
(the source and sink cuts); the values do not depend on ``workers``.

State: none at module level in the calling process. Each call builds read-only contexts
(``_Network``, ``_Certificate``) and passes them to the job functions as an argument; worker
processes receive them through the pool's ``initializer`` (forked, so inherited rather than
pickled). Calls from several threads are therefore independent and may run concurrently.

Memory: O(L·N²): a float64 copy of ``Â``, two ``[L + 1, N, N]`` boolean reachability masks
and ``[N, N]`` bounds; push-relabel adds two ``[L, N, N]`` float64 flow arrays per thread and
``[N, (L−1)·N]`` initial labels; the scipy stages O(``_EDGE_BUDGET``) per batch of max-flows
in each process (each forked worker shares the parent's arrays copy-on-write).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Bool, Float
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from headscope.analyses.checks import check_pattern
from headscope.errors import InputError
from headscope.solvers import pushrelabel

__all__ = ["FlowSolveStats", "PairwiseFlow", "pairwise_max_flow"]

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
# The shared certificate runs on the top-k edges per row and column (a subgraph: its flows
# are still lower bounds), which is enough for dense attention and many times faster.
_SHARED_K = 16
# Below this many L·N³ operations forking workers costs more than it saves.
_PARALLEL_WORK = 4_000_000
# ... but push-relabel (threads, nothing forked) uses them once its pairs hold this many
# edges in all (pairs · L·N²; real maps: about 0.1 s of work).
_PARALLEL_EDGES = 2_000_000
# Push-relabel chunks per thread: enough to balance uneven pairs, few enough that each chunk's
# two [L, N, N] flow arrays are reused over many pairs.
_CHUNKS_PER_THREAD = 4
_DEFAULT_WORKERS = 2

_Edges = tuple[tuple[np.ndarray, np.ndarray], ...]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FlowSolveStats:
    """How one :func:`pairwise_max_flow` call solved its N² pairs, and the seconds per stage.

    The counts partition the pairs: ``closed_form + unreachable + shared + push_relabel +
    full == N²``. ``closed_form``: one or two layers (every pair from a formula);
    ``unreachable``: no path, flow 0; ``shared``, ``push_relabel``, ``full``: stages 2–4 of
    :func:`pairwise_max_flow`. ``workers``: the processes (stages 2 and 4) or threads
    (stage 3) the stages could use (1 = in the calling thread).
    """

    closed_form: int = 0
    unreachable: int = 0
    shared: int = 0
    push_relabel: int = 0
    full: int = 0
    shared_seconds: float = 0.0
    push_relabel_seconds: float = 0.0
    full_seconds: float = 0.0
    workers: int = 1


@dataclass(frozen=True, eq=False)
class PairwiseFlow:
    """Raw max-flow ``values[i, j]`` from output token ``i`` to input token ``j`` (float64,
    read-only, each in ``[0, 1]``; rows are not normalized) and how they were solved."""

    values: Float[np.ndarray, "query key"]
    stats: FlowSolveStats


# --------------------------------------------------------------------------- entry point


def pairwise_max_flow(
    ahat: Float[np.ndarray, "layer query key"], *, workers: int | None = None
) -> PairwiseFlow:
    """Exact max-flow from every output token to every input token of the layered network.

    ``ahat[l − 1]`` holds the capacities of the edges ``(l, i) -> (l − 1, j)``; layers are
    ordered input to output and every ``ahat[l]`` must be row-stochastic (entries below 0
    within ``check_pattern``'s tolerance count as 0, like the omitted edges of
    ``flow.flow_graph``). The input is copied, never mutated.

    Known answers: one layer gives ``F = Â``; two layers give
    ``F[i, j] = Σ_k min(Â_2[i, k], Â_1[k, j])`` exactly (paths through different middle
    tokens share no edge), used directly. Three or more layers, exact to 1e-12 (the tests
    compare with networkx):

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
    3. Push-relabel per pair on the dense graph (``headscope.solvers.pushrelabel``,
       compiled): highest-label, exact initial labels, gap heuristic. It returns a feasible
       flow and the capacity of a cut; the pair is solved when they agree to 1e-12
       (measured gap on MiniLM maps: below 5e-15). Real attention maps land here: their
       flow runs through thousands of small edges, one augmenting path each for Dinic but
       one scan per node for push-relabel (docs/methods.md §1.2).
    4. A pair stage 3 could not certify (its relabel budget ran out, or the gap exceeded
       1e-12; no input measured so far) gets scipy's max-flow on its full pruned graph.

    Stages 2 and 4 are exact in float64 (see ``_exact_max_flow``: scipy's integer Dinic
    plus residual refinement, stopped when a flow and a cut agree to 1e-13), many small
    networks solved in one call as disjoint components. Worst case O(N²) max-flows on
    O(L·N²)-edge graphs; dense synthetic inputs need O(N). Memory: see the module docstring.

    ``workers``: processes for the max-flows of stages 2 and 4 (fork; 1 wherever fork is
    unavailable) and threads for stage 3. ``None`` uses up to 2 when ``L·N³ >= 4e6``, and
    threads for stage 3 also when its pairs hold ``>= 2e6`` edges in all; 1 means the
    calling thread. The pool is shut down, and the threads joined, before the call returns
    or raises, so no worker outlives it. Raises
    :class:`~headscope.errors.InputError` for a bad ``ahat`` or ``workers < 1``.
    """
    capacities = _checked_capacities(ahat)
    n_layers, n, _ = capacities.shape
    automatic = workers is None
    workers = _resolve_workers(workers, n_layers, n)
    if n_layers <= 2:
        values = capacities[0].copy() if n_layers == 1 else _two_layer_flow(capacities)
        stats = FlowSolveStats(closed_form=n * n, workers=workers)
    else:
        values, stats = _layered_flow(capacities, workers, automatic)
    values.flags.writeable = False
    return PairwiseFlow(values=values, stats=stats)


def _checked_capacities(ahat: Any) -> Float[np.ndarray, "layer query key"]:
    """A validated float64 C-contiguous copy of ``ahat`` with negative entries set to 0."""
    if not isinstance(ahat, np.ndarray):
        raise InputError(f"ahat must be a numpy array, got {type(ahat).__name__}")
    if ahat.ndim != 3:
        raise InputError(f"ahat must be [layer query key], got shape {ahat.shape}")
    if not np.issubdtype(ahat.dtype, np.floating):
        raise InputError(f"ahat must be a floating-point array, got {ahat.dtype}")
    capacities = np.array(ahat, dtype=np.float64, order="C")
    check_pattern(torch.from_numpy(capacities), name="ahat", min_dims=3)
    # check_pattern lets entries down to -atol through; an edge of capacity <= 0 is no edge.
    np.maximum(capacities, 0.0, out=capacities)
    return capacities


def _resolve_workers(workers: int | None, n_layers: int, n: int) -> int:
    if workers is None:
        big = n_layers * n**3 >= _PARALLEL_WORK
        workers = min(_DEFAULT_WORKERS, os.cpu_count() or 1) if big else 1
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise InputError(f"workers must be an int >= 1 or None, got {workers!r}")
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return int(workers)


# --------------------------------------------------------------------------- exact max-flow


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


# --------------------------------------------------------------------------- job contexts


@dataclass(frozen=True, eq=False)
class _Network:
    """Read-only inputs of the per-pair stages (3 and 4), shared with worker processes."""

    ahat: Float[np.ndarray, "layer query key"]
    down: Bool[np.ndarray, "node_layer output token"]  # output i reaches node (l, k)
    up: Bool[np.ndarray, "node_layer token input"]  # node (l, k) reaches input j
    bound: Float[np.ndarray, "query key"]  # min of the source and sink cuts


@dataclass(frozen=True, eq=False)
class _Certificate:
    """Read-only inputs of the shared-certificate max-flows (stage 2)."""

    ahat: Float[np.ndarray, "layer query key"]
    mu: Float[np.ndarray, " token"]  # flow the average output delivers to the middle layer
    middle: int
    edges: _Edges  # top-k edges per row and column plus the diagonal, per layer


# The pool's initializer stores its context here, and only in worker processes (forked
# children, which inherit the initargs instead of unpickling them); the calling process
# never assigns it, so concurrent calls there share nothing.
_worker_context: Any = None


def _enter_worker(context: Any) -> None:
    """Pool initializer: runs once in each worker process."""
    global _worker_context
    parent = multiprocessing.parent_process()
    if parent is None:
        raise RuntimeError("_enter_worker must only run in a worker process")
    _die_with_parent(parent.pid)
    _worker_context = context


# prctl(2) option: the signal the kernel sends when the thread that forked us exits.
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int | None) -> None:
    """Process hygiene: a worker must not outlive the process that started it.

    On Linux the kernel sends SIGTERM to this worker when the thread that forked it exits,
    however it ends (a SIGKILL or the OOM killer included); that thread is the one calling
    :func:`_run`, which joins the pool before it returns. SIGTERM gets its default action
    here: a handler inherited from the caller (e.g. a server's) could otherwise catch it.
    Elsewhere nothing changes (the pool is still joined on every normal exit)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: keep the default behaviour
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect: the signal will never come


def _call_in_worker(function: Callable[[Any, Any], np.ndarray], job: Any) -> np.ndarray:
    return function(_worker_context, job)


def _run(
    function: Callable[[Any, Any], np.ndarray], context: Any, jobs: list[Any], workers: int
) -> list[np.ndarray]:
    """``[function(context, job) for job in jobs]``, over ``workers`` forked processes when
    that helps. The pool is always shut down before this returns or raises."""
    if workers <= 1 or len(jobs) <= 1:
        return [function(context, job) for job in jobs]
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_enter_worker,
        initargs=(context,),
    )
    try:
        return list(pool.map(partial(_call_in_worker, function), jobs))
    finally:
        # On an error (or KeyboardInterrupt) drop the queued jobs rather than run them;
        # wait=True joins every worker, so none is left orphaned.
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- flow stages


def _two_layer_flow(ahat: np.ndarray) -> np.ndarray:
    """Closed form for two layers: paths through different middle tokens share no edge."""
    top, bottom = ahat[1], ahat[0]
    n = top.shape[0]
    out = np.empty((n, n))
    # Chunks of rows keep the [rows, N, N] temporary near 2e6 floats (16 MB).
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


def _top_k_edges(ahat: np.ndarray, k: int, diagonal: bool) -> _Edges:
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
    return tuple(edges)


def _layer_block(first: int, n: int) -> Callable[[int, np.ndarray], np.ndarray]:
    """Local node numbering of a component holding layers ``first, first+1, ...``."""

    def node(layer: int, token: np.ndarray) -> np.ndarray:
        return (layer - first) * n + token

    return node


def _source_side_job(certificate: _Certificate, sources: np.ndarray) -> np.ndarray:
    """Max-flow from each output token to the target vector μ at the middle layer."""
    ahat, mu, middle = certificate.ahat, certificate.mu, certificate.middle
    n_layers, n, _ = ahat.shape
    per = (n_layers - middle) * n + 2
    node = _layer_block(middle, n)
    src_local, sink_local = (n_layers - middle) * n, (n_layers - middle) * n + 1
    us, vs, cs, bs = [], [], [], []
    count = len(sources)
    base = np.arange(count) * per
    for layer in range(middle + 1, n_layers):
        a, b = certificate.edges[layer]
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


def _sink_side_job(certificate: _Certificate, sinks: np.ndarray) -> np.ndarray:
    """Max-flow from the vector μ at the middle layer into each input token."""
    ahat, mu, middle = certificate.ahat, certificate.mu, certificate.middle
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
        a, b = certificate.edges[layer]
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
    network: _Network, queries: np.ndarray, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Edges of the pruned flow network of each pair (every edge between nodes that lie on
    some path from (L, i) to (0, j)), numbered per component."""
    ahat, down, up = network.ahat, network.down, network.up
    n_layers, n, _ = ahat.shape
    count = len(queries)
    per = (n_layers + 1) * n
    relevant = down[:, queries, :].transpose(1, 0, 2) & up[:, :, keys].transpose(2, 0, 1)
    base = np.arange(count) * per
    us, vs, cs, bs = [], [], [], []
    for layer in range(1, n_layers + 1):
        matrix = ahat[layer - 1]
        mask = relevant[:, layer, :, None] & relevant[:, layer - 1, None, :] & (matrix > 0)
        p, a, b = np.nonzero(mask)
        us.append(base[p] + layer * n + a)
        vs.append(base[p] + (layer - 1) * n + b)
        cs.append(matrix[a, b])
        bs.append(p)
    u, v, c, comp = _concat(us, vs, cs, bs)
    return u, v, c, comp.astype(np.int64), per


def _pairs_job(network: _Network, job: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Max-flow of each pair on its full pruned graph (the min-cut capacity, within 1e-13)."""
    queries, keys = job
    n_layers, n = network.ahat.shape[0], network.ahat.shape[1]
    u, v, c, comp, per = _pair_edges(network, queries, keys)
    base = np.arange(len(queries)) * per
    _, upper, _ = _exact_max_flow(
        len(queries) * per, per, u, v, c, comp, base + n_layers * n + queries, base + keys
    )
    return upper


def _chunks(items: np.ndarray, size: int) -> list[np.ndarray]:
    size = max(1, int(size))
    return [items[start : start + size] for start in range(0, len(items), size)]


def _pair_jobs(
    queries: np.ndarray, keys: np.ndarray, per_pair: np.ndarray, workers: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split pairs into jobs of about ``_EDGE_BUDGET`` edges, at least ``2·workers`` jobs."""
    total = float(per_pair.sum())
    budget = min(_EDGE_BUDGET, max(1.0, total / max(2 * workers, 1)))
    jobs, start, acc = [], 0, 0.0
    for index, edges in enumerate(per_pair):
        acc += edges
        if acc >= budget:
            jobs.append((queries[start : index + 1], keys[start : index + 1]))
            start, acc = index + 1, 0.0
    if start < len(queries):
        jobs.append((queries[start:], keys[start:]))
    return jobs


def _push_relabel_threads(workers: int, automatic: bool, pairs: int, shape: tuple[int, ...]) -> int:
    """Threads for push-relabel: ``workers``, or (``workers=None`` given) up to 2 once the
    pairs hold ``_PARALLEL_EDGES`` edges in all, whatever the ``L·N³`` rule said."""
    if automatic and workers == 1 and pairs * shape[0] * shape[1] * shape[2] >= _PARALLEL_EDGES:
        return _resolve_workers(None, 1, 1 << 20)  # as many as a large input
    return workers


def _push_relabel(
    ahat: np.ndarray,
    queries: np.ndarray,
    keys: np.ndarray,
    threads: int,
    price: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flow value and certifying cut capacity (summed over ``price``, default ``ahat``) of
    each pair from the compiled push-relabel kernel, over ``threads`` threads (it releases
    the GIL). NaN where its budget ran out."""
    if not len(queries):
        return np.empty(0), np.empty(0)
    pieces = min(len(queries), threads * _CHUNKS_PER_THREAD)
    chunks = np.array_split(np.arange(len(queries)), pieces)

    def solve(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return pushrelabel.pair_flows(ahat, queries[chunk], keys[chunk], price)

    if threads <= 1:
        results = [solve(chunk) for chunk in chunks]
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="headscope-flow") as pool:
            results = list(pool.map(solve, chunks))
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def _layered_flow(
    ahat: np.ndarray, workers: int, automatic: bool = False
) -> tuple[np.ndarray, FlowSolveStats]:
    """Raw max-flow for every (output, input) pair of a network with three or more layers.

    ``automatic`` (the caller passed ``workers=None``): push-relabel also uses threads once
    its pairs hold at least ``_PARALLEL_EDGES`` edges in all, whatever N: on real maps the
    shared certificate solves nothing and every pair lands there."""
    n_layers = ahat.shape[0]
    down, up = _reachability(ahat)
    reach = down[0]
    bound_src = ahat[n_layers - 1] @ up[n_layers - 1].astype(np.float64)
    bound_snk = down[1].astype(np.float64) @ ahat[0]
    bound = np.where(reach, np.minimum(bound_src, bound_snk), 0.0)
    raw = np.where(reach, np.nan, 0.0)
    unreachable = int((~reach).sum())
    network = _Network(ahat, down, up, bound)
    down_count, up_count = down.sum(axis=2), up.sum(axis=1)

    start = time.perf_counter()
    if n_layers >= 4 and reach.all():
        solved = _shared_certificate(ahat, bound, workers)
        raw[solved] = bound[solved]
    shared = int((~np.isnan(raw)).sum()) - unreachable
    shared_seconds = time.perf_counter() - start

    start = time.perf_counter()
    queries, keys = np.nonzero(np.isnan(raw))
    threads = _push_relabel_threads(workers, automatic, len(queries), ahat.shape)
    value, cut = _push_relabel(ahat, queries, keys, threads)
    certified = np.isfinite(value) & (cut - value <= _CERTIFY_TOL)
    raw[queries[certified], keys[certified]] = np.clip(
        value[certified], 0.0, bound[queries[certified], keys[certified]]
    )
    push_relabel = int(certified.sum())
    push_relabel_seconds = time.perf_counter() - start

    start = time.perf_counter()
    queries, keys = queries[~certified], keys[~certified]
    if len(queries):  # a pair push-relabel could not certify (none measured): scipy
        counts = np.minimum(down_count[:, queries], up_count[:, keys]).astype(np.float64)
        per_pair = (counts[1:] * counts[:-1]).sum(axis=0) + 1
        jobs = _pair_jobs(queries, keys, per_pair, workers)
        raw[queries, keys] = np.concatenate(_run(_pairs_job, network, jobs, workers))
    full_seconds = time.perf_counter() - start
    if np.isnan(raw).any():  # pragma: no cover - the full-graph stage always certifies
        raise RuntimeError("attention_flow: some pairs were not solved")
    stats = FlowSolveStats(
        unreachable=unreachable,
        shared=shared,
        push_relabel=push_relabel,
        full=len(queries),
        shared_seconds=shared_seconds,
        push_relabel_seconds=push_relabel_seconds,
        full_seconds=full_seconds,
        workers=max(workers, threads),
    )
    return raw, stats


def _shared_certificate(
    ahat: np.ndarray, bound: np.ndarray, workers: int
) -> Bool[np.ndarray, "query key"]:
    """Pairs certified to have ``F[i, j] = bound[i, j]``, found with 2N max-flows, not N².

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
    target = mu.sum() - _CERTIFY_TOL
    probe = np.arange(min(n, 4))
    strictest = bound.max(axis=0)
    k = _SHARED_K
    while True:  # the sparsest subgraph on which a few probe pairs certify
        certificate = _Certificate(ahat, mu, middle, _top_k_edges(ahat, k, True))
        probe_sources = _source_side_job(certificate, probe) >= target
        probe_rho = _sink_side_job(certificate, probe)
        probe_sinks = probe_rho >= strictest[probe] - _CERTIFY_TOL
        if (probe_sources.all() and probe_sinks.all()) or k >= n:
            break
        k *= 2
    if not (probe_sources.any() and probe_sinks.any()):
        return np.zeros((n, n), dtype=bool)
    edges_side = sum(len(a) for a, _ in certificate.edges) / 2 + 2 * n
    size = max(1, int(_EDGE_BUDGET // edges_side))
    jobs = _chunks(np.arange(len(probe), n), size)
    source_flow = _run(_source_side_job, certificate, jobs, workers)
    sink_flow = _run(_sink_side_job, certificate, jobs, workers)
    good_sources = np.concatenate([probe_sources, *(flow >= target for flow in source_flow)])
    rho = np.concatenate([probe_rho, *sink_flow])
    return good_sources[:, None] & (rho[None, :] >= bound - _CERTIFY_TOL)
