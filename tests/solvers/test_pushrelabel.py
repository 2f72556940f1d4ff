"""The compiled push-relabel solver against networkx, pair by pair, and its certificate."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import networkx as nx
import numpy as np
import pytest

from headscope.solvers import pushrelabel


def layered(rng: np.random.Generator, n_layers: int, n: int, kind: str) -> np.ndarray:
    """Row-stochastic ``[layer query key]`` capacities: dense, causal, peaky (many zero
    edges, some pairs without a path), or spread (many small edges, as real maps)."""
    if kind == "peaky":
        weights = np.exp(3 * rng.standard_normal((n_layers, n, n)))
        weights *= rng.random((n_layers, n, n)) < 0.3
        weights += np.eye(n) * 1e-6
    elif kind == "spread":
        weights = rng.dirichlet(np.full(n, 0.2), size=(n_layers, n))
    else:
        weights = rng.random((n_layers, n, n))
    if kind == "causal":
        weights = np.tril(weights)
    return 0.5 * np.eye(n) + 0.5 * weights / weights.sum(-1, keepdims=True)


def networkx_value(capacities: np.ndarray, i: int, j: int) -> float:
    n_layers = capacities.shape[0]
    graph = nx.DiGraph()
    for layer in range(1, n_layers + 1):
        for a, b in zip(*np.nonzero(capacities[layer - 1] > 0), strict=True):
            graph.add_edge(
                (layer, int(a)), (layer - 1, int(b)), capacity=capacities[layer - 1, a, b]
            )
    if (n_layers, i) not in graph or (0, j) not in graph:
        return 0.0
    return nx.maximum_flow_value(graph, (n_layers, i), (0, j))


def exact_values(capacities: np.ndarray, queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pairs = zip(queries, keys, strict=True)
    return np.array([networkx_value(capacities, int(i), int(j)) for i, j in pairs])


def all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    queries, keys = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return queries.ravel(), keys.ravel()


@pytest.mark.parametrize(
    ("n_layers", "n", "kind", "seed"),
    [
        (3, 5, "dense", 0),
        (3, 7, "causal", 1),
        (4, 8, "peaky", 2),
        (5, 9, "spread", 3),
        (6, 6, "causal", 4),
        (6, 10, "peaky", 5),
        (8, 7, "spread", 6),
    ],
)
def test_every_pair_matches_networkx_and_is_certified(
    n_layers: int, n: int, kind: str, seed: int
) -> None:
    capacities = layered(np.random.default_rng(seed), n_layers, n, kind)
    queries, keys = all_pairs(n)
    values, cuts = pushrelabel.pair_flows(capacities, queries, keys)
    expected = exact_values(capacities, queries, keys)
    assert np.isfinite(values).all()
    assert np.abs(values - expected).max() <= 1e-12
    # the flow is feasible and the cut a real cut: lower <= exact <= upper, and they meet
    assert (cuts - values).max() <= 1e-13
    assert (cuts >= expected - 1e-13).all() and (values <= expected + 1e-13).all()


def test_causal_pairs_without_a_path_have_zero_flow() -> None:
    capacities = layered(np.random.default_rng(7), 4, 8, "causal")
    queries, keys = np.triu_indices(8, 1)  # input after output: no path in a causal network
    values, cuts = pushrelabel.pair_flows(capacities, queries, keys)
    np.testing.assert_array_equal(values, 0.0)
    np.testing.assert_array_equal(cuts, 0.0)


def test_pairs_in_any_order_and_any_chunking_give_the_same_values() -> None:
    capacities = layered(np.random.default_rng(8), 5, 12, "spread")
    queries, keys = all_pairs(12)
    values, _ = pushrelabel.pair_flows(capacities, queries, keys)
    order = np.random.default_rng(0).permutation(len(queries))
    shuffled, _ = pushrelabel.pair_flows(capacities, queries[order], keys[order])
    np.testing.assert_allclose(shuffled, values[order], rtol=0, atol=1e-14)
    chunks = np.array_split(np.arange(len(queries)), 5)
    with ThreadPoolExecutor(max_workers=2) as pool:  # the GIL is released; nothing is shared
        parts = list(
            pool.map(lambda c: pushrelabel.pair_flows(capacities, queries[c], keys[c]), chunks)
        )
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), values, rtol=0, atol=1e-14)


def test_a_bottleneck_layer_caps_every_pair() -> None:
    # a middle layer that sends everything through token 0 with capacity 1 to itself: every
    # flow equals the bottleneck edge's share, whatever the other layers do
    rng = np.random.default_rng(9)
    capacities = layered(rng, 4, 6, "dense")
    capacities[1] = 0.0
    capacities[1][:, 0] = 1.0
    queries, keys = all_pairs(6)
    values, cuts = pushrelabel.pair_flows(capacities, queries, keys)
    expected = exact_values(capacities, queries, keys)
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    assert (cuts - values).max() <= 1e-13


def test_bad_input_is_refused() -> None:
    capacities = layered(np.random.default_rng(10), 2, 4, "dense")
    with pytest.raises(ValueError, match="L >= 3"):
        pushrelabel.pair_flows(capacities, np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="float64"):
        pushrelabel.pair_flows(np.zeros((3, 4, 4), dtype=np.float32), np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="token indices"):
        pushrelabel.pair_flows(np.zeros((3, 4, 4)), np.array([4]), np.array([0]))


def test_a_pruned_graphs_cut_priced_in_the_full_graph_brackets_its_flow() -> None:
    rng = np.random.default_rng(11)
    full = layered(rng, 5, 9, "spread")
    pruned = np.where(full >= np.quantile(full, 0.6, axis=2, keepdims=True), full, 0.0)
    queries, keys = all_pairs(9)
    values, cuts = pushrelabel.pair_flows(pruned, queries, keys, price=full)
    exact_pruned = exact_values(pruned, queries, keys)
    exact_full = exact_values(full, queries, keys)
    np.testing.assert_allclose(values, exact_pruned, rtol=0, atol=1e-12)
    assert (values <= exact_full + 1e-13).all() and (cuts >= exact_full - 1e-13).all()
    assert (cuts > values + 1e-3).any()  # the pruned edges crossing the cut are priced
    with pytest.raises(ValueError, match="price"):
        pushrelabel.pair_flows(pruned, queries, keys, price=full[:4])
