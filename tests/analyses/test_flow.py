"""Rollout and attention flow against closed forms and networkx (docs/methods.md §1)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headscope.analyses import maxflow
from headscope.analyses.flow import (
    attention_flow,
    augment,
    content_free_baseline,
    flow_graph,
    iter_rollout,
    rollout,
    rollout_per_head,
)
from headscope.errors import InputError

# ----------------------------------------------------------------------------- helpers


def random_pattern(
    rng: np.random.Generator,
    n_layers: int,
    n: int,
    *,
    heads: int | None = None,
    kind: str = "dense",
) -> torch.Tensor:
    """Random row-stochastic attention: dense, causal, softmax of peaky logits (all entries
    positive, but bottlenecks make flows fall short of the end cuts), or sparse and peaky."""
    shape = (n_layers, n, n) if heads is None else (n_layers, heads, n, n)
    if kind == "softmax":
        weights = np.exp(3 * rng.standard_normal(shape))
    elif kind == "peaky":
        weights = np.exp(3 * rng.standard_normal(shape)) * (rng.random(shape) < 0.4)
        weights += np.eye(n) * 1e-6  # keep every row non-empty
    else:
        weights = rng.random(shape)
    if kind == "causal":
        weights = np.tril(weights)
    return torch.tensor(weights / weights.sum(-1, keepdims=True))


def networkx_flow(pattern: torch.Tensor, residual: float = 0.5) -> np.ndarray:
    """Reference raw flow: one networkx max-flow per (output, input) pair."""
    graph = flow_graph(pattern, residual)
    n_layers = pattern.shape[0]
    n = pattern.shape[-1]
    return np.array(
        [[nx.maximum_flow_value(graph, (n_layers, i), (0, j)) for j in range(n)] for i in range(n)]
    )


def numpy_augmented(pattern: torch.Tensor, residual: float = 0.5) -> np.ndarray:
    mean = pattern.numpy()
    if mean.ndim == 4:
        mean = mean.mean(axis=1)
    return residual * np.eye(mean.shape[-1]) + (1 - residual) * mean


# ----------------------------------------------------------------------------- augment


def test_augment_averages_heads_then_mixes_residual() -> None:
    rng = np.random.default_rng(0)
    pattern = random_pattern(rng, 2, 5, heads=3)
    expected = 0.3 * np.eye(5) + 0.7 * pattern.numpy().mean(axis=1)
    np.testing.assert_allclose(augment(pattern, 0.3).numpy(), expected, atol=1e-15)


def test_augment_head_weights_are_a_normalized_weighted_mean() -> None:
    rng = np.random.default_rng(1)
    pattern = random_pattern(rng, 2, 4, heads=3)
    weights = torch.tensor([1.0, 0.0, 3.0])
    expected = (pattern[:, 0] * 0.25 + pattern[:, 2] * 0.75).numpy()
    got = augment(pattern, 0.0, head_weights=weights).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-15)
    per_layer = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    got = augment(pattern, 0.0, head_weights=per_layer).numpy()
    np.testing.assert_allclose(got[0], pattern[0, 0].numpy(), atol=1e-15)
    np.testing.assert_allclose(got[1], pattern[1, 1].numpy(), atol=1e-15)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.ones(4), "head_weights must have shape"),
        (torch.tensor([1.0, -1.0, 1.0]), "non-negative"),
        (torch.zeros(3), "positive sum"),
    ],
)
def test_augment_rejects_bad_head_weights(weights: torch.Tensor, message: str, unchecked) -> None:
    pattern = random_pattern(np.random.default_rng(2), 2, 4, heads=3)
    with pytest.raises(InputError, match=message), unchecked():
        augment(pattern, head_weights=weights)


def test_head_weights_need_a_head_dimension() -> None:
    pattern = random_pattern(np.random.default_rng(2), 2, 4)
    with pytest.raises(InputError, match="head dimension"):
        rollout(pattern, head_weights=torch.ones(2))


# ----------------------------------------------------------------------------- rollout


def test_rollout_one_layer_is_half_attention_plus_half_identity() -> None:
    pattern = random_pattern(np.random.default_rng(3), 1, 6, heads=2)
    expected = 0.5 * pattern.numpy().mean(axis=1)[0] + 0.5 * np.eye(6)
    np.testing.assert_allclose(rollout(pattern)[0].numpy(), expected, atol=1e-15)


def test_rollout_of_identity_is_identity() -> None:
    pattern = torch.eye(5, dtype=torch.float64).expand(4, 2, 5, 5)
    result = rollout(pattern)
    for layer in range(4):
        np.testing.assert_allclose(result[layer].numpy(), np.eye(5), atol=1e-15)


@pytest.mark.parametrize("n_layers", [1, 2, 5])
def test_rollout_of_uniform_bidirectional_attention_has_closed_form(n_layers: int) -> None:
    n = 7
    pattern = torch.full((n_layers, 3, n, n), 1.0 / n, dtype=torch.float64)
    result = rollout(pattern)
    for layer in range(1, n_layers + 1):
        expected = 0.5**layer * np.eye(n) + (1 - 0.5**layer) * np.full((n, n), 1.0 / n)
        np.testing.assert_allclose(result[layer - 1].numpy(), expected, atol=1e-14)


def test_rollout_matches_an_independent_product() -> None:
    pattern = random_pattern(np.random.default_rng(4), 4, 6, heads=3)
    ahat = numpy_augmented(pattern)
    expected = ahat[0]
    for layer in range(1, 4):
        expected = ahat[layer] @ expected
    np.testing.assert_allclose(rollout(pattern)[-1].numpy(), expected, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(
    n_layers=st.integers(1, 5),
    n=st.integers(1, 8),
    heads=st.integers(1, 3),
    residual=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    causal=st.booleans(),
)
def test_rollout_rows_sum_to_one(
    n_layers: int, n: int, heads: int, residual: float, seed: int, causal: bool
) -> None:
    kind = "causal" if causal else "dense"
    pattern = random_pattern(np.random.default_rng(seed), n_layers, n, heads=heads, kind=kind)
    result = rollout(pattern, residual)
    np.testing.assert_allclose(result.sum(-1).numpy(), 1.0, atol=1e-12)
    assert (result >= 0).all()


def test_rollout_does_not_mutate_inputs() -> None:
    pattern = random_pattern(np.random.default_rng(5), 3, 5, heads=2).float()
    weights = torch.tensor([0.2, 0.8])
    before, before_w = pattern.clone(), weights.clone()
    rollout(pattern, head_weights=weights)
    rollout_per_head(pattern)
    attention_flow(pattern, workers=1)
    assert torch.equal(pattern, before)
    assert torch.equal(weights, before_w)


def test_iter_rollout_streams_layers_one_at_a_time() -> None:
    # a generator of float32 layers gives the rollout of the stacked float64 pattern, and
    # each layer is requested only after the rollout of the one before it was yielded
    pattern = random_pattern(np.random.default_rng(21), 4, 9, heads=3)
    weights = torch.tensor([0.5, 0.25, 0.25])
    expected = rollout(pattern, head_weights=weights)
    events: list[str] = []

    def layers():
        for layer in range(pattern.shape[0]):
            events.append(f"load {layer}")
            yield pattern[layer].float()

    got = []
    for layer, current in enumerate(iter_rollout(layers(), head_weights=weights)):
        events.append(f"yield {layer}")
        got.append(current)
    assert events == [f"{kind} {layer}" for layer in range(4) for kind in ("load", "yield")]
    torch.testing.assert_close(torch.stack(got), expected, atol=1e-6, rtol=0)
    # the stacked tensor itself streams to the same layers in float64
    torch.testing.assert_close(
        torch.stack(list(iter_rollout(pattern, 0.3))), rollout(pattern, 0.3), atol=0, rtol=0
    )


def test_rollout_at_moderate_n_matches_a_numpy_product() -> None:
    # N = 512: the last layer equals an independent float64 product of Â_l in numpy
    n, n_layers = 512, 3
    rng = np.random.default_rng(22)
    logits = 4.0 * rng.standard_normal((n_layers, n, n))
    maps = np.exp(logits - logits.max(-1, keepdims=True))
    maps /= maps.sum(-1, keepdims=True)
    stream = (torch.from_numpy(layer).float() for layer in maps)
    *_, last = iter_rollout(stream)
    expected = np.eye(n)
    for layer in maps.astype(np.float32).astype(np.float64):
        expected = (0.5 * np.eye(n) + 0.5 * layer) @ expected
    assert last.dtype == torch.float64 and last.shape == (n, n)
    np.testing.assert_allclose(last.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(last.sum(1).numpy(), 1.0, atol=1e-5)  # float32 rows


@pytest.mark.parametrize(
    ("layers", "kwargs", "message"),
    [
        ([torch.full((3, 3), 1 / 3), torch.full((4, 4), 1 / 4)], {}, "layers before it"),
        ([torch.full((3,), 1 / 3)], {}, "layer 0 must be"),
        ([[0.5, 0.5]], {}, "layer 0 must be"),
        ([torch.full((3, 3), 0.5)], {}, "row"),
        ([torch.full((3, 3), 1 / 3)], {"head_weights": [1.0]}, "head dimension"),
        ([torch.full((2, 3, 3), 1 / 3)], {"head_weights": [[1.0, 1.0]]}, "head_weights"),
        ([torch.full((3, 3), 1 / 3)], {"residual": 2.0}, "residual"),
    ],
)
def test_iter_rollout_rejects_bad_layers(layers, kwargs: dict, message: str, unchecked) -> None:
    with pytest.raises(InputError, match=message), unchecked():
        list(iter_rollout(layers, **kwargs))


def test_rollout_per_head_composes_each_head_with_the_rollout_below() -> None:
    pattern = random_pattern(np.random.default_rng(6), 3, 5, heads=2)
    result = rollout_per_head(pattern, 0.5).numpy()
    ahat = numpy_augmented(pattern)
    per_head = 0.5 * np.eye(5) + 0.5 * pattern.numpy()
    np.testing.assert_allclose(result[0], per_head[0], atol=1e-15)
    below = ahat[0]
    for layer in range(1, 3):
        for head in range(2):
            np.testing.assert_allclose(
                result[layer, head], per_head[layer, head] @ below, atol=1e-14
            )
        below = ahat[layer] @ below
    np.testing.assert_allclose(result.sum(-1), 1.0, atol=1e-12)
    # the head mean of the per-head rollout is the rollout itself
    np.testing.assert_allclose(result.mean(axis=1), rollout(pattern).numpy(), atol=1e-14)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (torch.full((2, 3, 4), 0.25, dtype=torch.float64), "square"),
        (torch.full((2, 4, 4), 0.5, dtype=torch.float64), "row-stochastic"),
        (torch.full((2, 4, 4), float("nan"), dtype=torch.float64), "NaN"),
        (torch.full((4, 4), 0.25, dtype=torch.float64), "at least 3 dims"),
        (torch.full((1, 1, 2, 4, 4), 0.25, dtype=torch.float64), r"\[layer head query key\]"),
    ],
)
@pytest.mark.parametrize("function", [rollout, attention_flow, flow_graph])
def test_bad_patterns_raise_input_errors(
    function, pattern: torch.Tensor, message: str, unchecked
) -> None:
    with pytest.raises(InputError, match=message), unchecked():
        function(pattern)


@pytest.mark.parametrize("residual", [-0.1, 1.5])
def test_residual_must_be_a_fraction(residual: float) -> None:
    pattern = random_pattern(np.random.default_rng(7), 2, 3)
    with pytest.raises(InputError, match="residual"):
        rollout(pattern, residual)


def test_rollout_per_head_needs_heads(unchecked) -> None:
    with pytest.raises(InputError, match="at least 4 dims"), unchecked():
        rollout_per_head(random_pattern(np.random.default_rng(8), 2, 3))


def test_workers_must_be_positive() -> None:
    with pytest.raises(InputError, match="workers"):
        attention_flow(random_pattern(np.random.default_rng(8), 3, 3), workers=0)


# ----------------------------------------------------------------------------- flow graph


def test_flow_graph_has_layered_nodes_and_augmented_capacities() -> None:
    pattern = random_pattern(np.random.default_rng(9), 2, 3, kind="causal")
    graph = flow_graph(pattern)
    ahat = numpy_augmented(pattern)
    assert set(graph.nodes) == {(layer, token) for layer in range(3) for token in range(3)}
    assert graph.number_of_edges() == 2 * 6  # causal: 6 non-zero entries per layer
    for (layer, i), (below, j), capacity in graph.edges(data="capacity"):
        assert below == layer - 1
        assert capacity == pytest.approx(ahat[layer - 1, i, j], abs=0)


# ----------------------------------------------------------------------------- flow


def test_flow_of_one_layer_is_the_augmented_matrix() -> None:
    pattern = random_pattern(np.random.default_rng(10), 1, 6, heads=2)
    raw = attention_flow(pattern, normalize=False)
    np.testing.assert_allclose(raw.numpy(), numpy_augmented(pattern)[0], atol=1e-15)


@pytest.mark.parametrize("kind", ["dense", "causal", "peaky"])
def test_flow_of_two_layers_is_a_sum_of_minima(kind: str) -> None:
    pattern = random_pattern(np.random.default_rng(11), 2, 6, kind=kind)
    ahat = numpy_augmented(pattern)
    expected = np.minimum(ahat[1][:, :, None], ahat[0][None, :, :]).sum(axis=1)
    raw = attention_flow(pattern, normalize=False).numpy()
    np.testing.assert_allclose(raw, expected, atol=1e-15)
    np.testing.assert_allclose(raw, networkx_flow(pattern), atol=1e-12)


def _networkx_cases() -> list[tuple[int, int, str, int]]:
    cases = []
    for seed in range(18):
        kind = ("dense", "causal", "peaky")[seed % 3]
        n_layers = 3 + seed % 2 if seed < 12 else 4 + seed % 2
        cases.append((n_layers, 4 + seed % 7, kind, seed))
    # seeds where the shared certificate solves some pairs but not all (flow < end cuts)
    cases += [(4 + seed % 2, 8, "softmax", seed) for seed in (0, 1, 6, 13)]
    return cases


@pytest.mark.parametrize(("n_layers", "n", "kind", "seed"), _networkx_cases())
def test_flow_matches_networkx(n_layers: int, n: int, kind: str, seed: int) -> None:
    pattern = random_pattern(np.random.default_rng(100 + seed), n_layers, n, heads=2, kind=kind)
    raw = attention_flow(pattern, normalize=False, workers=1).numpy()
    reference = networkx_flow(pattern)
    assert np.abs(raw - reference).max() <= 1e-9


def test_every_flow_stage_is_checked_against_networkx() -> None:
    """The networkx comparisons above must reach every stage of the algorithm (the scipy
    fallback for pairs push-relabel cannot certify: test_maxflow.py)."""
    seen = {"unreachable": 0, "shared": 0, "push_relabel": 0}
    for n_layers, n, kind, seed in _networkx_cases():
        pattern = random_pattern(np.random.default_rng(100 + seed), n_layers, n, heads=2, kind=kind)
        solved = maxflow.pairwise_max_flow(augment(pattern).numpy(), workers=1)
        raw = attention_flow(pattern, normalize=False, workers=1).numpy()
        np.testing.assert_array_equal(raw, solved.values)  # the same solve
        for stage in seen:
            seen[stage] += getattr(solved.stats, stage)
    for stage, count in seen.items():
        assert count > 0, stage


def test_flow_with_other_residuals_matches_networkx() -> None:
    rng = np.random.default_rng(12)
    for residual in (0.0, 0.2, 0.9, 1.0):
        pattern = random_pattern(rng, 4, 6, kind="dense")
        raw = attention_flow(pattern, residual, normalize=False, workers=1).numpy()
        np.testing.assert_allclose(raw, networkx_flow(pattern, residual), atol=1e-9)


def test_flow_in_two_processes_equals_one() -> None:
    rng = np.random.default_rng(13)
    for kind in ("dense", "causal", "peaky"):
        pattern = random_pattern(rng, 5, 12, kind=kind)
        one = attention_flow(pattern, normalize=False, workers=1)
        two = attention_flow(pattern, normalize=False, workers=2)
        np.testing.assert_allclose(two.numpy(), one.numpy(), atol=1e-12)


def test_flow_calls_from_threads_do_not_interfere() -> None:
    rng = np.random.default_rng(14)
    patterns = [random_pattern(rng, 4, 7, kind=kind) for kind in ("dense", "causal", "peaky")]
    expected = [attention_flow(p, workers=1) for p in patterns]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda p: attention_flow(p, workers=1), patterns * 3))
    for index, result in enumerate(results):
        np.testing.assert_allclose(result.numpy(), expected[index % 3].numpy(), atol=1e-15)


def widest_path(ahat: np.ndarray) -> np.ndarray:
    """Best single-path bottleneck from each output to each input (a flow lower bound)."""
    best = ahat[-1]
    for layer in range(ahat.shape[0] - 2, -1, -1):
        best = np.minimum(best[:, :, None], ahat[layer][None, :, :]).max(axis=1)
    return best


@settings(max_examples=30, deadline=None)
@given(
    n_layers=st.integers(1, 5),
    n=st.integers(1, 7),
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["dense", "causal", "peaky"]),
)
def test_flow_lies_between_the_widest_path_and_the_end_cuts(
    n_layers: int, n: int, seed: int, kind: str
) -> None:
    pattern = random_pattern(np.random.default_rng(seed), n_layers, n, kind=kind)
    ahat = numpy_augmented(pattern)
    raw = attention_flow(pattern, normalize=False, workers=1).numpy()
    assert (raw >= -1e-12).all() and (raw <= 1 + 1e-12).all()
    # every path starts with a source edge (row i sums to 1) and ends with an edge into j
    column_capacity = ahat[0].sum(axis=0)
    assert (raw <= np.minimum(1.0, column_capacity)[None, :] + 1e-12).all()
    assert (raw >= widest_path(ahat) - 1e-12).all()
    normalized = attention_flow(pattern, workers=1).numpy()
    np.testing.assert_allclose(normalized.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(normalized, raw / raw.sum(axis=1, keepdims=True), atol=1e-12)


# ----------------------------------------------------------------------------- baseline


def test_content_free_rollout_is_rollout_of_uniform_attention() -> None:
    n, n_layers = 6, 3
    uniform = np.tril(np.ones((n, n)))
    uniform /= uniform.sum(axis=1, keepdims=True)
    ahat = 0.5 * np.eye(n) + 0.5 * uniform
    expected = np.linalg.matrix_power(ahat, n_layers)
    result = content_free_baseline(n, n_layers=n_layers).numpy()
    assert result.shape == (n_layers, n, n)
    np.testing.assert_allclose(result[-1], expected, atol=1e-14)
    # causal rows drift toward token 0 as layers stack
    deep = content_free_baseline(n, n_layers=20).numpy()
    assert (np.diff(deep[:, -1, 0]) > 0).all()
    assert deep[-1, -1, 0] > 0.5


def test_content_free_bidirectional_rollout_has_closed_form() -> None:
    n, n_layers = 5, 4
    result = content_free_baseline(n, n_layers=n_layers, causal=False).numpy()
    expected = 0.5**n_layers * np.eye(n) + (1 - 0.5**n_layers) / n
    np.testing.assert_allclose(result[-1], expected, atol=1e-14)


def test_content_free_flow_matches_networkx_and_mask_argument() -> None:
    n, n_layers = 6, 3
    raw = content_free_baseline(n, n_layers=n_layers, method="flow", normalize=False)
    uniform = torch.tril(torch.ones(n, n, dtype=torch.float64))
    uniform = uniform / uniform.sum(dim=1, keepdim=True)
    stack = uniform.expand(n_layers, n, n)
    np.testing.assert_allclose(raw.numpy(), networkx_flow(stack), atol=1e-12)
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
    by_mask = content_free_baseline(mask=mask, n_layers=n_layers, method="flow")
    by_flag = content_free_baseline(n, n_layers=n_layers, method="flow")
    np.testing.assert_allclose(by_mask.numpy(), by_flag.numpy(), atol=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 4, "n_layers": 2, "method": "gradient"}, "method"),
        ({"n": 0, "n_layers": 2}, "n must be"),
        ({"n": 4, "n_layers": 0}, "n_layers"),
        ({"mask": torch.zeros(3, 3, dtype=torch.bool), "n_layers": 2}, "no allowed key"),
        ({"mask": torch.ones(3, 4, dtype=torch.bool), "n_layers": 2}, "square"),
    ],
)
def test_content_free_baseline_rejects_bad_arguments(kwargs: dict, message: str, unchecked) -> None:
    with pytest.raises(InputError, match=message), unchecked():
        content_free_baseline(**kwargs)
