"""Approximate attention flow on pruned networks: the certified bracket
``values <= exact <= upper`` against independent exact max-flows (docs/methods.md §1.2)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headscope.analyses import prunedflow
from headscope.analyses.flow import approximate_flow, augment
from headscope.analyses.prunedflow import PrunedFlow, prior_bound, pruned_max_flow, pruning_mask
from headscope.errors import InputError


def random_ahat(rng: np.random.Generator, n_layers: int, n: int, kind: str) -> np.ndarray:
    """Augmented maps (0.5·I + 0.5·A): dense, causal, softmax of peaky logits, or sparse."""
    shape = (n_layers, n, n)
    if kind in ("softmax", "peaky"):
        weights = np.exp(3 * rng.standard_normal(shape))
        if kind == "peaky":
            weights = weights * (rng.random(shape) < 0.4) + np.eye(n) * 1e-6
    else:
        weights = rng.random(shape)
    if kind == "causal":
        weights = np.tril(weights)
    return 0.5 * np.eye(n) + 0.5 * weights / weights.sum(-1, keepdims=True)


def networkx_flow(ahat: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Reference: one networkx max-flow per pair, on the edges ``keep`` selects (all if None)."""
    n_layers, n, _ = ahat.shape
    graph = nx.DiGraph()
    graph.add_nodes_from((layer, token) for layer in range(n_layers + 1) for token in range(n))
    mask = ahat > 0 if keep is None else keep & (ahat > 0)
    for layer in range(1, n_layers + 1):
        for a, b in zip(*np.nonzero(mask[layer - 1]), strict=True):
            graph.add_edge((layer, int(a)), (layer - 1, int(b)), capacity=ahat[layer - 1, a, b])
    return np.array(
        [[nx.maximum_flow_value(graph, (n_layers, i), (0, j)) for j in range(n)] for i in range(n)]
    )


@settings(max_examples=25, deadline=None)
@given(
    n_layers=st.integers(1, 5),
    n=st.integers(2, 7),
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["dense", "causal", "softmax", "peaky"]),
    rule=st.sampled_from([("top_k", 1), ("top_k", 2), ("mass", 0.2), ("mass", 0.5)]),
    keep_ends=st.booleans(),
)
def test_exact_flow_lies_in_the_certified_bracket(
    n_layers: int, n: int, seed: int, kind: str, rule: tuple, keep_ends: bool
) -> None:
    ahat = random_ahat(np.random.default_rng(seed), n_layers, n, kind)
    solved = pruned_max_flow(ahat, **{rule[0]: rule[1]}, keep_ends=keep_ends, workers=1)
    exact = networkx_flow(ahat)
    assert (solved.values <= exact + 1e-12).all()
    assert (exact <= solved.upper + 1e-12).all()
    assert (solved.bound >= 0).all()
    # values are the max-flow of the pruned network itself (networkx on the kept edges)
    keep = pruning_mask(ahat, **{rule[0]: rule[1]}, keep_ends=keep_ends)
    if n_layers >= 3:
        np.testing.assert_allclose(solved.values, networkx_flow(ahat, keep), atol=1e-9)
    # the a priori bound holds for every pair
    assert (exact - solved.values <= prior_bound(ahat, keep) + 1e-12).all()


@pytest.mark.parametrize("kind", ["dense", "causal", "softmax", "peaky"])
def test_bracket_on_larger_random_maps_against_networkx(kind: str) -> None:
    ahat = random_ahat(np.random.default_rng(31), 6, 10, kind)
    exact = networkx_flow(ahat)
    for k in (1, 2, 4):
        solved = pruned_max_flow(ahat, top_k=k, workers=1)
        assert (solved.values <= exact + 1e-12).all() and (exact <= solved.upper + 1e-12).all()


def test_more_edges_never_lower_the_flow_and_all_edges_give_it_exactly() -> None:
    ahat = random_ahat(np.random.default_rng(32), 5, 9, "softmax")
    exact = networkx_flow(ahat)
    previous = np.zeros_like(exact)
    for k in (1, 2, 3, 5, 9):
        solved = pruned_max_flow(ahat, top_k=k, keep_ends=False, workers=1)
        assert (solved.values >= previous - 1e-12).all()  # nested subgraphs
        previous = solved.values
    assert solved.kept == 1.0
    np.testing.assert_allclose(solved.values, exact, atol=1e-12)
    np.testing.assert_allclose(solved.upper, exact, atol=1e-12)
    assert prior_bound(ahat, pruning_mask(ahat, top_k=9)) == 0.0


def test_pruning_mask_keeps_what_it_says() -> None:
    ahat = random_ahat(np.random.default_rng(33), 4, 8, "softmax")
    keep = pruning_mask(ahat, top_k=2, keep_ends=False)
    for layer in range(4):
        for row in range(8):
            kept = set(np.nonzero(keep[layer, row])[0])
            largest = set(np.argsort(-ahat[layer, row])[:2])
            assert largest | {row} == kept
    keep = pruning_mask(ahat, mass=0.25, keep_ends=True)
    assert keep[0].all() and keep[-1].all()
    middle = np.where(keep[1:-1], ahat[1:-1], 0.0).sum(-1)
    assert (middle >= 0.75 - 1e-12).all()
    # the fewest entries: dropping the smallest kept off-diagonal entry falls below 0.75
    for layer in (1, 2):
        for row in range(8):
            kept = [b for b in np.nonzero(keep[layer, row])[0] if b != row]
            if kept:
                smallest = min(ahat[layer, row, b] for b in kept)
                assert middle[layer - 1, row] - smallest < 0.75 + ahat[layer, row, row]


def test_one_and_two_layers_are_exact() -> None:
    for n_layers in (1, 2):
        ahat = random_ahat(np.random.default_rng(34), n_layers, 6, "dense")
        solved = pruned_max_flow(ahat, top_k=1, workers=1)
        np.testing.assert_allclose(solved.values, networkx_flow(ahat), atol=1e-12)
        np.testing.assert_array_equal(solved.values, solved.upper)


def test_approximate_flow_wraps_augment_and_results_are_read_only() -> None:
    rng = np.random.default_rng(35)
    pattern = torch.tensor(rng.dirichlet(np.ones(7), size=(4, 2, 7)))
    solved = approximate_flow(pattern, 0.3, top_k=2, workers=1)
    assert isinstance(solved, PrunedFlow)
    direct = pruned_max_flow(augment(pattern, 0.3).numpy(), top_k=2, workers=1)
    np.testing.assert_array_equal(solved.values, direct.values)
    np.testing.assert_array_equal(solved.upper, direct.upper)
    with pytest.raises(ValueError, match="read-only"):
        solved.values[0, 0] = 1.0
    default = approximate_flow(pattern, workers=1)  # top_k = 8 >= N: nothing pruned
    np.testing.assert_allclose(default.values, networkx_flow(augment(pattern).numpy()), atol=1e-9)


def test_two_workers_give_the_same_bracket() -> None:
    ahat = random_ahat(np.random.default_rng(36), 5, 12, "softmax")
    one = pruned_max_flow(ahat, top_k=2, workers=1)
    two = pruned_max_flow(ahat, top_k=2, workers=2)
    np.testing.assert_allclose(two.values, one.values, atol=1e-12)
    np.testing.assert_allclose(two.upper, one.upper, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"top_k": 2, "mass": 0.1}, "exactly one"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"mass": 1.0}, "mass"),
        ({"mass": -0.1}, "mass"),
    ],
)
def test_rejects_bad_pruning(kwargs: dict, message: str, unchecked) -> None:
    ahat = random_ahat(np.random.default_rng(37), 3, 4, "dense")
    with pytest.raises(InputError, match=message), unchecked():
        prunedflow.pruned_max_flow(ahat, workers=1, **kwargs)
