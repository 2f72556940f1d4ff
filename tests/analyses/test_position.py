"""Position-bias graphs and attention sinks against closed forms (docs/methods.md §3)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headscope.analyses.flow import rollout
from headscope.analyses.position import (
    SINK_FLOOR,
    SINK_MIN_QUERIES,
    SINK_RATIO,
    SinkDecision,
    cumulative_influence,
    influence_by_distance,
    mask_attention,
    mask_graph,
    most_influential_distance,
    sink_baseline,
    sink_decision,
    sink_heads,
    sink_scores,
)
from headscope.errors import InputError

# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    ("kind", "params", "allowed"),
    [
        ("causal", {}, lambda i, j: j <= i),
        ("bidirectional", {}, lambda i, j: True),
        ("sliding_window", {"window": 3}, lambda i, j: 0 <= i - j < 3),
        ("prefix", {"prefix": 3}, lambda i, j: j <= i or (i < 3 and j < 3)),
        ("decay", {"m": 0.5}, lambda i, j: j <= i),
    ],
)
def test_mask_graph_edges_point_from_query_to_allowed_key(kind, params, allowed) -> None:
    n = 6
    graph = mask_graph(kind, n, **params)
    assert set(graph.nodes) == set(range(n))
    expected = {(i, j) for i in range(n) for j in range(n) if allowed(i, j)}
    assert set(graph.edges) == expected
    attention = mask_attention(kind, n, **params).numpy()
    assert {tuple(index) for index in np.argwhere(attention > 0)} == expected
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-15)


def test_decay_weights_are_powers_of_gamma() -> None:
    n, gamma = 7, 0.8
    graph = mask_graph("decay", n, gamma=gamma)
    assert graph.edges[5, 2]["weight"] == pytest.approx(gamma**3, rel=1e-12)
    attention = mask_attention("decay", n, m=-math.log(gamma)).numpy()
    for i in range(n):
        expected = np.array([gamma ** (i - j) if j <= i else 0.0 for j in range(n)])
        np.testing.assert_allclose(attention[i], expected / expected.sum(), atol=1e-14)


def test_uniform_masks_are_uniform_over_allowed_keys() -> None:
    attention = mask_attention("sliding_window", 6, window=2).numpy()
    assert attention[0, 0] == 1.0
    np.testing.assert_allclose(attention[4, 3:5], [0.5, 0.5])
    prefix = mask_attention("prefix", 5, prefix=3).numpy()
    np.testing.assert_allclose(prefix[0, :3], 1 / 3)
    np.testing.assert_allclose(prefix[4], 1 / 5)


@pytest.mark.parametrize(
    ("kind", "n", "params", "message"),
    [
        ("rope", 4, {}, "unknown mask kind"),
        ("causal", 0, {}, "positive int"),
        ("causal", 4, {"window": 2}, "unknown parameter"),
        ("sliding_window", 4, {}, "window"),
        ("sliding_window", 4, {"window": 0}, "window"),
        ("prefix", 4, {"prefix": 5}, "prefix"),
        ("decay", 4, {}, "exactly one of m"),
        ("decay", 4, {"m": 1.0, "gamma": 0.5}, "exactly one of m"),
        ("decay", 4, {"m": -1.0}, "slope m"),
        ("decay", 4, {"gamma": 1.5}, "gamma"),
    ],
)
def test_bad_masks_raise_input_errors(kind, n, params, message, unchecked) -> None:
    with pytest.raises(InputError, match=message), unchecked():
        mask_graph(kind, n, **params)
    with pytest.raises(InputError, match=message), unchecked():
        mask_attention(kind, n, **params)


# ----------------------------------------------------------------------------- influence


@pytest.mark.parametrize("t", range(1, 9))
def test_uniform_causal_influence_of_second_token_on_first(t: int) -> None:
    # 1-indexed (C^t)[2, 1] = 1 - 2^-t in Wu et al.; 0-indexed [1, 0]
    influence = cumulative_influence(mask_attention("causal", 5), n_layers=t)
    assert influence[t - 1][1, 0].item() == pytest.approx(1 - 2.0**-t, abs=1e-14)


def test_uniform_causal_last_row_mass_on_first_token_matches_the_paper() -> None:
    influence = cumulative_influence(mask_attention("causal", 8), n_layers=8)
    paper = {1: 0.125, 2: 0.340, 4: 0.728, 8: 0.975}
    for t, value in paper.items():
        assert round(influence[t - 1][7, 0].item(), 3) == value


def test_cumulative_influence_is_the_product_of_layers() -> None:
    rng = np.random.default_rng(0)
    weights = rng.random((3, 2, 5, 5))
    pattern = torch.tensor(weights / weights.sum(-1, keepdims=True))
    mean = pattern.numpy().mean(axis=1)
    expected = mean[2] @ mean[1] @ mean[0]
    np.testing.assert_allclose(cumulative_influence(pattern)[-1].numpy(), expected, atol=1e-14)
    with_residual = [0.25 * np.eye(5) + 0.75 * layer for layer in mean]
    expected = with_residual[2] @ with_residual[1] @ with_residual[0]
    got = cumulative_influence(pattern, residual=0.25)[-1].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-14)


def test_cumulative_influence_is_rollout_without_the_residual() -> None:
    # Wu et al.'s P^(t) is Abnar & Zuidema's rollout with residual 0, for every input form
    rng = np.random.default_rng(2)
    weights = np.tril(rng.random((3, 2, 6, 6)))
    pattern = torch.tensor(weights / weights.sum(-1, keepdims=True))
    assert torch.equal(cumulative_influence(pattern), rollout(pattern, 0.0))
    assert torch.equal(cumulative_influence(pattern, 0.3), rollout(pattern, 0.3))
    single = pattern[0, 1]
    repeated = single.expand(4, 6, 6).contiguous()
    assert torch.equal(cumulative_influence(single, n_layers=4), rollout(repeated, 0.0))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 9),
    n_layers=st.integers(1, 6),
    kind=st.sampled_from(["causal", "bidirectional", "decay"]),
    residual=st.one_of(st.none(), st.floats(0, 1)),
)
def test_cumulative_influence_rows_sum_to_one(n, n_layers, kind, residual) -> None:
    params = {"gamma": 0.7} if kind == "decay" else {}
    attention = mask_attention(kind, n, **params)
    influence = cumulative_influence(attention, residual, n_layers=n_layers)
    assert influence.shape == (n_layers, n, n)
    np.testing.assert_allclose(influence.sum(-1).numpy(), 1.0, atol=1e-12)
    curve = influence_by_distance(influence)
    np.testing.assert_allclose(curve.sum(-1).numpy(), 1.0, atol=1e-12)


@pytest.mark.parametrize(("gamma", "k", "peak"), [(0.8, 2, 4), (0.8, 10, 36), (0.8, 20, 76)])
def test_decay_mask_peak_distance_matches_the_paper(gamma: float, k: int, peak: int) -> None:
    slope = -math.log(gamma)
    assert (k - 1) / (math.exp(slope) - 1) == pytest.approx(peak)
    n = 400  # long enough that the last query does not see the sequence start
    influence = cumulative_influence(mask_attention("decay", n, gamma=gamma), n_layers=k)
    assert most_influential_distance(influence[-1], query=-1).item() == peak
    # the negative binomial's two central values tie exactly at an integer peak
    row = influence[-1][n - 1]
    assert row[n - 1 - peak].item() == pytest.approx(row[n - peak].item(), rel=1e-9)
    assert row[n - 1 - peak].item() > row[n - 2 - peak].item()


@pytest.mark.parametrize(("slope", "k"), [(0.3, 10), (0.7, 5), (0.15, 3)])
def test_decay_mask_peak_is_the_floor_when_not_an_integer(slope: float, k: int) -> None:
    peak = (k - 1) / (math.exp(slope) - 1)
    assert peak != int(peak)
    n = 300
    influence = cumulative_influence(mask_attention("decay", n, m=slope), n_layers=k)
    assert most_influential_distance(influence, query=n - 1)[-1].item() == math.floor(peak)


def test_influence_by_distance_averages_over_queries_that_reach_the_distance() -> None:
    influence = torch.tensor(
        [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]], dtype=torch.float64
    )
    curve = influence_by_distance(influence, normalize=False).numpy()
    # distance 0: (1 + 0.5 + 0.6)/3; distance 1: (0.5 + 0.2)/2; distance 2: 0.2/1
    np.testing.assert_allclose(curve, [2.1 / 3, 0.35, 0.2], atol=1e-15)
    signed = influence_by_distance(influence.T.contiguous(), normalize=False, signed=True)
    np.testing.assert_allclose(signed.numpy(), [0.2, 0.35, 2.1 / 3, 0, 0], atol=1e-15)
    normalized = influence_by_distance(influence[None]).numpy()
    np.testing.assert_allclose(normalized[0], curve / curve.sum(), atol=1e-15)
    assert most_influential_distance(influence).item() == 0
    assert most_influential_distance(influence, query=2).item() == 0
    assert most_influential_distance(influence, query=1).item() == 1  # tie: longer distance


def test_influence_works_on_a_model_like_stack_and_the_mask_baseline() -> None:
    rng = np.random.default_rng(1)
    weights = np.tril(rng.random((4, 3, 6, 6)))
    pattern = torch.tensor(weights / weights.sum(-1, keepdims=True))
    model = influence_by_distance(cumulative_influence(pattern))
    baseline = influence_by_distance(cumulative_influence(mask_attention("causal", 6), n_layers=4))
    assert model.shape == baseline.shape == (4, 6)


@pytest.mark.parametrize(
    ("attention", "kwargs", "message"),
    [
        (torch.full((3, 3), 1 / 3, dtype=torch.float64), {}, "n_layers"),
        (torch.full((2, 3, 3), 1 / 3, dtype=torch.float64), {"n_layers": 2}, "n_layers only"),
        (torch.full((3, 3), 0.5, dtype=torch.float64), {"n_layers": 2}, "row-stochastic"),
        (torch.full((3, 4), 0.25, dtype=torch.float64), {"n_layers": 2}, "square"),
        (torch.full((3, 3), float("nan")), {"n_layers": 2}, "NaN"),
        (
            torch.full((3, 3), 1 / 3, dtype=torch.float64),
            {"n_layers": 2, "residual": 2.0},
            "residual",
        ),
    ],
)
def test_cumulative_influence_rejects_bad_input(attention, kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        cumulative_influence(attention, **kwargs)


def test_influence_by_distance_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="square"):
        influence_by_distance(torch.zeros(2, 3, 4))
    with pytest.raises(InputError, match="NaN"):
        influence_by_distance(torch.full((3, 3), float("nan")))
    with pytest.raises(InputError, match="out of range"):
        most_influential_distance(torch.eye(3), query=3)


def test_influence_does_not_mutate_inputs() -> None:
    attention = mask_attention("causal", 5).float()
    before = attention.clone()
    influence = cumulative_influence(attention, 0.5, n_layers=3)
    kept = influence.clone()
    influence_by_distance(influence)
    most_influential_distance(influence, query=-1)
    assert torch.equal(attention, before)
    assert torch.equal(influence, kept)


# ----------------------------------------------------------------------------- sinks


def uniform_causal_heads(n_layers: int, n_heads: int, n: int) -> torch.Tensor:
    return mask_attention("causal", n).expand(n_layers, n_heads, n, n).clone()


def harmonic(n: int) -> float:
    return sum(1.0 / q for q in range(1, n + 1))


def test_uniform_causal_sink_score_is_harmonic_over_length() -> None:
    t = 64
    scores = sink_scores(uniform_causal_heads(2, 3, t), causal=True)
    assert scores.shape == (2, 3, t)
    np.testing.assert_allclose(scores[..., 0].numpy(), harmonic(t) / t, atol=1e-14)
    assert scores[0, 0, 0].item() == pytest.approx(0.074, abs=5e-4)
    # key k is seen by T - k queries, each giving 1/(q + 1)
    k = 10
    expected = sum(1.0 / (q + 1) for q in range(k, t)) / (t - k)
    assert scores[1, 2, k].item() == pytest.approx(expected, abs=1e-14)
    assert sink_heads(uniform_causal_heads(2, 3, t), causal=True) == []


def test_a_head_attending_to_the_first_key_is_a_sink_head() -> None:
    t = 16
    pattern = uniform_causal_heads(3, 4, t)
    pattern[1, 2] = 0.0
    pattern[1, 2, :, 0] = 1.0
    scores = sink_scores(pattern, causal=True)
    assert scores[1, 2, 0].item() == pytest.approx(1.0)
    assert sink_heads(pattern, causal=True) == [(1, 2)]
    assert sink_heads(pattern, key=1, causal=True) == []


def test_sink_scores_use_the_given_mask_or_bidirectional_visibility() -> None:
    t = 6
    bidirectional = torch.full((1, 1, t, t), 1.0 / t, dtype=torch.float64)
    scores = sink_scores(bidirectional, causal=False)
    np.testing.assert_allclose(scores.numpy(), 1.0 / t, atol=1e-15)
    window = mask_attention("sliding_window", t, window=2)
    pattern = window.expand(1, 1, t, t)
    mask = window > 0
    scores = sink_scores(pattern, mask=mask)[0, 0].numpy()
    # each key k < t-1 is seen by queries k and k+1, receiving 1 (k=0 from q=0) or 1/2
    expected = [(1.0 + 0.5) / 2] + [0.5] * (t - 2) + [0.5]
    np.testing.assert_allclose(scores, expected, atol=1e-15)


def test_batched_sink_scores_respect_padding_lengths() -> None:
    t = 8
    first = uniform_causal_heads(2, 2, t)
    second = torch.zeros_like(first)
    second[..., :5, :5] = mask_attention("causal", 5)
    batch = torch.stack([first, second])
    scores = sink_scores(batch, causal=True, lengths=torch.tensor([8, 5]))
    assert scores.shape == (2, 2, 2, t)
    assert scores[0, 0, 0, 0].item() == pytest.approx(harmonic(8) / 8, abs=1e-14)
    assert scores[1, 0, 0, 0].item() == pytest.approx(harmonic(5) / 5, abs=1e-14)
    assert torch.isnan(scores[1, :, :, 5:]).all()
    # the decision pools the (prompt, query) pairs: 8 + 5 queries see key 0, and uniform
    # attention is its own baseline (ratio 1), so no head is a sink
    decision = sink_decision(batch, causal=True, lengths=[8, 5])
    assert decision.support[0].item() == 13 and decision.support[-1].item() == 1
    pooled = (harmonic(8) + harmonic(5)) / 13
    np.testing.assert_allclose(decision.alpha[..., 0].numpy(), pooled, atol=1e-14)
    assert decision.baseline[0].item() == pytest.approx(pooled, abs=1e-14)
    np.testing.assert_allclose(decision.ratio[..., :5].numpy(), 1.0, atol=1e-12)
    assert decision.heads() == []
    every_head = [(0, 0), (0, 1), (1, 0), (1, 1)]
    loose = {"ratio": 0.999, "floor": 0.0}
    assert sink_heads(batch, causal=True, lengths=[8, 5], **loose) == every_head


# -- the content-free baseline


def test_sink_baseline_closed_forms() -> None:
    t = 8
    causal = sink_baseline(t, causal=True)
    assert causal[0].item() == pytest.approx(harmonic(t) / t, abs=1e-14)
    assert causal[0].item() == pytest.approx(0.340, abs=5e-4)  # above Gu et al.'s 0.3
    for k in range(t):
        want = sum(1.0 / (q + 1) for q in range(k, t)) / (t - k)
        assert causal[k].item() == pytest.approx(want, abs=1e-14)
    np.testing.assert_allclose(sink_baseline(t, causal=False).numpy(), 1.0 / t, atol=1e-15)
    padded = sink_baseline(t, causal=False, lengths=[8, 5])
    assert padded.shape == (2, t) and padded[1, 0].item() == pytest.approx(0.2)
    assert torch.isnan(padded[1, 5:]).all()


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("causal", {}),
        ("bidirectional", {}),
        ("sliding_window", {"window": 3}),
        ("prefix", {"prefix": 4}),
    ],
)
def test_sink_baseline_is_the_sink_score_of_uniform_attention(kind, params) -> None:
    t = 9
    uniform = mask_attention(kind, t, **params)
    mask = uniform > 0
    scores = sink_scores(uniform.expand(1, 1, t, t), mask=mask)[0, 0]
    np.testing.assert_allclose(sink_baseline(t, mask=mask).numpy(), scores.numpy(), atol=1e-14)


def test_a_bare_tensor_must_say_whether_it_is_causal(unchecked) -> None:
    pattern = uniform_causal_heads(1, 1, 5)
    for call in (sink_scores, sink_decision, sink_heads):
        with pytest.raises(InputError, match="causal="):
            call(pattern)
    with pytest.raises(InputError, match="causal="):
        sink_baseline(5)


def test_a_record_gives_causality_and_padding() -> None:
    t = 6
    bidirectional = torch.softmax(torch.randn(2, 1, 2, t, t, dtype=torch.float64), -1)
    bidirectional[1, ..., 4:, :] = 0.0
    bidirectional[1, ..., :4, 4:] = 0.0
    bidirectional[1] = bidirectional[1] / bidirectional[1].sum(-1, keepdim=True).clamp_min(1e-30)
    record = SimpleNamespace(
        pattern=bidirectional, spec=SimpleNamespace(causal=False), lengths=(6, 4)
    )
    want = sink_scores(bidirectional, causal=False, lengths=[6, 4])
    torch.testing.assert_close(sink_scores(record), want, equal_nan=True)
    decision = sink_decision(record)
    assert decision.causal is False and decision.support.tolist() == [10] * 4 + [6, 6]
    with pytest.raises(InputError, match="contradicts"):
        sink_scores(record, causal=True)
    with pytest.raises(InputError, match="lengths come from the record"):
        sink_scores(record, lengths=[6, 4])


# -- the decision


def test_a_perfect_sink_needs_a_prompt_long_enough_to_beat_the_causal_baseline() -> None:
    """Key 0 can get at most 1, i.e. T/H_T times the causal baseline: 3.18 at T = 9, below
    the ratio of 4, so on 9 tokens no head is a sink; from T = 13 (4.09) a perfect one is."""
    for t, found in ((9, []), (12, []), (13, [(0, 0)]), (64, [(0, 0)])):
        pattern = torch.zeros(1, 1, t, t, dtype=torch.float64)
        pattern[..., 0] = 1.0
        decision = sink_decision(pattern, causal=True)
        assert decision.ratio[0, 0, 0].item() == pytest.approx(t / harmonic(t), rel=1e-12)
        assert decision.heads() == found, t
    # bidirectional: the baseline is 1/T, so the floor decides on short prompts
    pattern = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    pattern[..., 0] = 1.0
    assert sink_heads(pattern, causal=False) == [(0, 0)]


def test_a_previous_token_head_is_not_a_sink_at_the_last_keys() -> None:
    t = 12
    pattern = torch.zeros(1, 1, t, t, dtype=torch.float64)
    pattern[0, 0, 0, 0] = 1.0
    pattern[0, 0, torch.arange(1, t), torch.arange(0, t - 1)] = 1.0
    scores = sink_scores(pattern, causal=True)[0, 0]
    assert scores[t - 2].item() == pytest.approx(0.5)  # one of the two queries that see it
    decision = sink_decision(pattern, causal=True)
    assert decision.support[-3:].tolist() == [3, 2, 1]
    assert not decision.tested[-3:].any() and decision.tested[: t - 3].all()
    assert decision.pairs() == []
    # the old rule (α > 0.3 alone) called the keys seen by 3 and 2 queries sinks
    assert (scores > SINK_FLOOR).nonzero().flatten().tolist() == [t - 3, t - 2]


def test_sink_decision_carries_its_evidence() -> None:
    t = 16
    pattern = uniform_causal_heads(1, 2, t).double()
    pattern[0, 1] = 0.0
    pattern[0, 1, :, 0] = 1.0
    decision = sink_decision(pattern, causal=True)
    assert isinstance(decision, SinkDecision)
    assert (decision.min_ratio, decision.floor, decision.min_queries) == (
        SINK_RATIO,
        SINK_FLOOR,
        SINK_MIN_QUERIES,
    )
    torch.testing.assert_close(decision.baseline, sink_baseline(t, causal=True))
    assert decision.support.tolist() == list(range(t, 0, -1))
    threshold = torch.clamp(SINK_RATIO * decision.baseline, min=SINK_FLOOR)
    torch.testing.assert_close(decision.threshold, threshold)
    assert decision.heads() == [(0, 1)] and decision.pairs() == [(0, 1, 0)]
    assert "4× uniform" in decision.rule() and "causal" in decision.rule()
    with pytest.raises(InputError, match="key"):
        decision.heads(t)
    with pytest.raises(InputError, match="min_queries"):
        sink_decision(pattern, causal=True, min_queries=0)


@pytest.mark.parametrize(
    ("pattern", "kwargs", "message"),
    [
        (torch.full((2, 4, 4), 0.25, dtype=torch.float64), {}, r"\[layer head query key\]"),
        (torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64), {}, "row-stochastic"),
        (torch.full((1, 1, 4, 3), 0.25, dtype=torch.float64), {}, "square"),
        (torch.full((1, 1, 3, 3), float("nan")), {}, "NaN"),
        (torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64), {"lengths": [2]}, "lengths"),
        (torch.full((1, 1, 1, 4, 4), 0.25, dtype=torch.float64), {"lengths": [5]}, "lengths"),
        (torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64), {"mask": torch.ones(3, 3)}, "mask"),
    ],
)
def test_sink_scores_reject_bad_input(pattern, kwargs, message, unchecked) -> None:
    with pytest.raises(InputError, match=message), unchecked():
        sink_scores(pattern, **{"causal": True, **kwargs})


def test_sink_scores_do_not_mutate_inputs() -> None:
    pattern = uniform_causal_heads(1, 2, 5).float()
    before = pattern.clone()
    sink_scores(pattern, causal=True)
    sink_heads(pattern, causal=True)
    sink_decision(pattern, causal=False)
    assert torch.equal(pattern, before)
