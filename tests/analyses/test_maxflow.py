"""The pairwise max-flow solver on its own: networkx oracle, stats, no state, worker pools."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import networkx as nx
import numpy as np
import pytest

from headscope.analyses import maxflow
from headscope.analyses.maxflow import FlowSolveStats, PairwiseFlow, pairwise_max_flow
from headscope.errors import InputError


def random_capacities(
    rng: np.random.Generator, n_layers: int, n: int, kind: str = "dense"
) -> np.ndarray:
    """Row-stochastic ``[layer query key]`` maps with the residual mixed in, as attention
    flow builds them: dense, causal, or peaky (sparse rows, so some pairs have no path)."""
    if kind == "peaky":
        weights = np.exp(3 * rng.standard_normal((n_layers, n, n)))
        weights *= rng.random((n_layers, n, n)) < 0.4
        weights += np.eye(n) * 1e-6  # keep every row non-empty
    else:
        weights = rng.random((n_layers, n, n))
    if kind == "causal":
        weights = np.tril(weights)
    return 0.5 * np.eye(n) + 0.5 * weights / weights.sum(-1, keepdims=True)


def networkx_flow(ahat: np.ndarray) -> np.ndarray:
    """Reference: one networkx max-flow per pair on the layered graph built from ``ahat``."""
    n_layers, n, _ = ahat.shape
    graph = nx.DiGraph()
    graph.add_nodes_from((layer, token) for layer in range(n_layers + 1) for token in range(n))
    for layer in range(1, n_layers + 1):
        for i, j in zip(*np.nonzero(ahat[layer - 1] > 0), strict=True):
            graph.add_edge((layer, int(i)), (layer - 1, int(j)), capacity=ahat[layer - 1, i, j])
    return np.array(
        [[nx.maximum_flow_value(graph, (n_layers, i), (0, j)) for j in range(n)] for i in range(n)]
    )


@pytest.mark.parametrize(
    ("n_layers", "n", "kind", "seed"),
    [
        (1, 5, "dense", 0),
        (2, 6, "peaky", 1),
        (3, 7, "causal", 2),
        (4, 8, "peaky", 3),
        (5, 9, "dense", 4),
        (5, 8, "causal", 5),
        (6, 7, "peaky", 6),
    ],
)
def test_matches_networkx(n_layers: int, n: int, kind: str, seed: int) -> None:
    ahat = random_capacities(np.random.default_rng(seed), n_layers, n, kind)
    solved = pairwise_max_flow(ahat, workers=1)
    assert isinstance(solved, PairwiseFlow)
    assert solved.values.shape == (n, n) and solved.values.dtype == np.float64
    assert np.abs(solved.values - networkx_flow(ahat)).max() <= 1e-9


@pytest.mark.parametrize(("n_layers", "kind"), [(1, "dense"), (2, "causal"), (4, "dense")])
def test_stats_partition_the_pairs(n_layers: int, kind: str) -> None:
    n = 9
    for seed in range(3):
        ahat = random_capacities(np.random.default_rng(seed), n_layers, n, kind)
        stats = pairwise_max_flow(ahat, workers=1).stats
        assert isinstance(stats, FlowSolveStats)
        counts = [
            stats.closed_form,
            stats.unreachable,
            stats.shared,
            stats.push_relabel,
            stats.full,
        ]
        assert sum(counts) == n * n
        assert (stats.closed_form == n * n) == (n_layers <= 2)
        assert min(stats.shared_seconds, stats.push_relabel_seconds, stats.full_seconds) >= 0


def test_causal_stats_count_the_pairs_without_a_path() -> None:
    ahat = random_capacities(np.random.default_rng(7), 5, 8, "causal")
    solved = pairwise_max_flow(ahat, workers=1)
    # a causal network has a path from output i to input j exactly when j <= i
    assert solved.stats.unreachable == 8 * 7 // 2
    assert (solved.values[np.triu_indices(8, 1)] == 0).all()


def test_results_are_immutable_and_inputs_untouched() -> None:
    ahat = random_capacities(np.random.default_rng(8), 4, 6)
    before = ahat.copy()
    solved = pairwise_max_flow(ahat, workers=1)
    np.testing.assert_array_equal(ahat, before)
    with pytest.raises(ValueError, match="read-only"):
        solved.values[0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        solved.stats.full = 0  # type: ignore[misc]


def test_float32_input_gives_the_float64_result() -> None:
    ahat = random_capacities(np.random.default_rng(9), 4, 6).astype(np.float32)
    solved = pairwise_max_flow(ahat, workers=1)
    assert solved.values.dtype == np.float64
    np.testing.assert_allclose(solved.values, networkx_flow(ahat.astype(np.float64)), atol=1e-9)


def test_tiny_negative_entries_are_missing_edges() -> None:
    # check_pattern accepts entries down to -1e-4; the network has no edge there, as in
    # flow_graph, rather than an edge of negative capacity
    ahat = random_capacities(np.random.default_rng(10), 4, 6, "causal")
    ahat[:, 3, 5] = -1e-6
    solved = pairwise_max_flow(ahat, workers=1).values
    np.testing.assert_allclose(solved, networkx_flow(ahat), atol=1e-9)


@pytest.mark.parametrize(
    ("ahat", "workers", "message"),
    [
        (np.full((2, 3, 3), 1 / 3).tolist(), 1, "numpy array"),
        (np.full((3, 3), 1 / 3), 1, r"\[layer query key\]"),
        (np.ones((2, 3, 3), dtype=np.int64), 1, "floating-point"),
        (np.full((2, 3, 3), 0.5), 1, "row-stochastic"),
        (np.full((2, 3, 4), 0.25), 1, "square"),
        (np.full((2, 3, 3), np.nan), 1, "NaN"),
        (np.full((2, 3, 3), 1 / 3), 0, "workers"),
        (np.full((2, 3, 3), 1 / 3), True, "workers"),
    ],
)
def test_rejects_bad_input(ahat, workers, message: str, unchecked) -> None:
    with pytest.raises(InputError, match=message), unchecked():
        pairwise_max_flow(ahat, workers=workers)


# ----------------------------------------------------------------------------- no state, pools


def _mutable_globals() -> dict[str, object]:
    return {
        name: value
        for name, value in vars(maxflow).items()
        if not name.startswith("__")
        and not callable(value)
        and not isinstance(value, type(maxflow))
    }


def test_calls_leave_no_state_in_the_calling_process() -> None:
    before = {name: repr(value) for name, value in _mutable_globals().items()}
    ahat = random_capacities(np.random.default_rng(11), 5, 12, "causal")
    one = pairwise_max_flow(ahat, workers=1)
    two = pairwise_max_flow(ahat, workers=2)
    after = {name: repr(value) for name, value in _mutable_globals().items()}
    assert after == before
    assert maxflow._worker_context is None  # only the pool's workers set it
    np.testing.assert_array_equal(two.values, one.values)
    assert (two.stats.push_relabel, two.stats.full) == (one.stats.push_relabel, one.stats.full)
    assert (one.stats.workers, two.stats.workers) == (1, 2)


def test_concurrent_calls_from_threads_do_not_interfere() -> None:
    rng = np.random.default_rng(12)
    inputs = [random_capacities(rng, 5, 10, kind) for kind in ("dense", "causal", "peaky")]
    expected = [pairwise_max_flow(ahat, workers=1).values for ahat in inputs]
    jobs = [(ahat, workers) for workers in (1, 2) for ahat in inputs]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda job: pairwise_max_flow(job[0], workers=job[1]), jobs))
    for index, result in enumerate(results):
        np.testing.assert_array_equal(result.values, expected[index % len(inputs)])


def _failing_job(context: object, job: object) -> np.ndarray:
    raise RuntimeError("job failed")


def _uncertified(
    ahat: np.ndarray, queries: np.ndarray, keys: np.ndarray, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Push-relabel's answer for a budget that ran out on every pair."""
    return np.full(len(queries), np.nan), np.full(len(queries), np.nan)


def test_a_failing_job_leaves_no_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not multiprocessing.active_children()
    monkeypatch.setattr(maxflow, "_push_relabel", _uncertified)  # every pair to stage 4
    monkeypatch.setattr(maxflow, "_pairs_job", _failing_job)
    ahat = random_capacities(np.random.default_rng(13), 5, 12, "causal")
    with pytest.raises(RuntimeError, match="job failed"):
        pairwise_max_flow(ahat, workers=2)
    assert not multiprocessing.active_children()


_ORPHAN_SCRIPT = """
import sys
import numpy as np
from headscope.analyses import maxflow
if sys.argv[1] == "unguarded":  # the behaviour before workers died with their parent
    maxflow._die_with_parent = lambda parent_pid: None
rng = np.random.default_rng(0)
ahat = rng.dirichlet(np.full(300, 0.3), size=(6, 300))  # ~3 s in the shared stage, 2 workers
maxflow.pairwise_max_flow(ahat, workers=2)
"""


def _worker_pids_after_parent_killed(mode: str) -> tuple[list[int], list[int]]:
    """Start a process solving a big input with workers=2, SIGKILL it once its pool is up;
    (the worker pids, those still alive 5 s later)."""
    import os
    import signal
    import subprocess
    import time

    psutil = pytest.importorskip("psutil")
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, mode])
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            workers = psutil.Process(parent.pid).children()
            time.sleep(0.01)
        assert len(workers) == 2, "the pool never started"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)

        def alive(worker: psutil.Process) -> bool:
            try:
                return worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 5
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [w.pid for w in workers if alive(w)]
        for worker in workers:
            if alive(worker):
                worker.kill()
        return [w.pid for w in workers], left
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_workers_die_when_their_parent_is_killed() -> None:
    pids, left = _worker_pids_after_parent_killed("guarded")
    assert len(pids) == 2 and left == []


def test_automatic_workers_use_threads_for_a_large_push_relabel_stage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # workers=None: a small input (L·N³ below the rule) still uses threads when the
    # push-relabel stage holds many edges, as real maps do; the values do not depend on it
    ahat = random_capacities(np.random.default_rng(12), 5, 9, "peaky")
    one = pairwise_max_flow(ahat, workers=1)
    assert one.stats.push_relabel > 0
    assert pairwise_max_flow(ahat).stats.workers == 1  # below both thresholds
    monkeypatch.setattr(maxflow, "_PARALLEL_EDGES", 1)
    auto = pairwise_max_flow(ahat)
    assert auto.stats.workers == min(2, os.cpu_count() or 1)
    np.testing.assert_array_equal(auto.values, one.values)


@pytest.mark.parametrize("workers", [1, 2])
def test_pairs_push_relabel_cannot_certify_go_to_the_full_graph(
    monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    # stage 4 takes the pairs whose budget ran out (NaN) or whose flow and cut disagree
    pair_flows = maxflow.pushrelabel.pair_flows

    def unreliable(capacities, queries, keys, price=None):  # type: ignore[no-untyped-def]
        value, cut = pair_flows(capacities, queries, keys, price)
        value[::3] = np.nan
        cut[1::3] += 1e-6
        return value, cut

    monkeypatch.setattr(maxflow.pushrelabel, "pair_flows", unreliable)
    ahat = random_capacities(np.random.default_rng(2), 5, 12, "peaky")
    solved = pairwise_max_flow(ahat, workers=workers)
    assert solved.stats.full > 0 and solved.stats.push_relabel > 0
    assert solved.stats.full >= 2 * solved.stats.push_relabel - 2
    assert np.abs(solved.values - networkx_flow(ahat)).max() <= 1e-9
