"""Retrieval, echo and long-range scores on constructed patterns, checked against
loops written from the definitions and closed forms; the long-context labels."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from headscope.analyses import retrieval as r
from headscope.analyses.taxonomy import (
    head_labels,
    head_taxonomy_from_pattern,
    long_context_labels,
)
from headscope.analyses.uncertainty import Interval
from headscope.errors import InputError


def causal_uniform(n_batch: int, n_layers: int, n_heads: int, n: int) -> torch.Tensor:
    rows = torch.tril(torch.ones(n, n, dtype=torch.float64))
    rows = rows / rows.sum(-1, keepdim=True)
    return rows.expand(n_batch, n_layers, n_heads, n, n).clone()


def copy_sequences(n_batch: int, source: int, cue: int, seed: int = 0):
    """[BOS, s_1..s_T, s_1..s_T] whose positions 1 + T + cue.. are 'generated'."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_batch):
        s = (torch.randperm(30, generator=generator)[:source] + 3).tolist()
        rows.append([1, *s, *s])
    ids = torch.tensor(rows)
    n = ids.shape[1]
    src = torch.zeros(n_batch, n, dtype=torch.bool)
    src[:, 1 : 1 + source] = True
    generated = torch.zeros(n_batch, n, dtype=torch.bool)
    generated[:, 1 + source + cue :] = True
    return ids, src, generated


def test_retrieval_score_of_a_copying_head_is_1_and_of_uniform_attention_its_baseline() -> None:
    n_batch, source, cue = 3, 6, 2
    ids, src, generated = copy_sequences(n_batch, source, cue)
    n = ids.shape[1]
    pattern = causal_uniform(n_batch, 1, 3, n)
    # head 0 attends from each query q to the first-copy position of token q + 1
    # (the induction target), head 2 always to BOS
    copier = torch.zeros(n, n, dtype=torch.float64)
    for q in range(n):
        copier[q, 0] = 1.0
    for q in range(source, n - 1):
        copier[q] = 0.0
        copier[q, q + 1 - source] = 1.0
    pattern[:, 0, 0] = copier
    pattern[:, 0, 2] = 0.0
    pattern[:, 0, 2, :, 0] = 1.0
    result = r.retrieval_score(pattern, ids, src, generated)
    steps = n_batch * (source - cue)
    assert result.support.tolist() == [[steps] * 3]
    assert result.score[0, 0] == 1.0 and result.score[0, 2] == 0.0
    # uniform: every visible key ties, and 1 of the p visible keys holds the token
    chance = sum(1 / p for p in range(1 + source + cue, n)) / (source - cue)
    assert result.score[0, 1] == pytest.approx(chance, abs=1e-12)
    assert result.baseline[0, 1] == pytest.approx(chance, abs=1e-12)
    # Wilson interval against scipy's, for whole-number hits
    ci = stats.binomtest(steps, steps).proportion_ci(method="wilson")
    assert float(result.low[0, 0]) == pytest.approx(ci.low, abs=1e-9)
    assert float(result.high[0, 0]) == pytest.approx(ci.high, abs=1e-9)
    ci = stats.binomtest(0, steps).proportion_ci(method="wilson")
    assert float(result.high[0, 2]) == pytest.approx(ci.high, abs=1e-9)


def test_a_hit_needs_the_key_in_the_source_span_and_a_copied_token() -> None:
    ids, src, generated = copy_sequences(1, 5, 1)
    n = ids.shape[1]
    pattern = causal_uniform(1, 1, 2, n)
    # head 0 attends to the previous occurrence in the *generated* copy region (not
    # the source): with the source span limited to position 1 only, most steps have
    # no hit set and stop counting as copy steps
    narrow = torch.zeros_like(src)
    narrow[:, 1] = True
    result = r.retrieval_score(pattern, ids, narrow, generated)
    assert int(result.support[0, 0]) == 0 and math.isnan(float(result.score[0, 0]))
    assert math.isnan(float(result.low[0, 0]))


def test_retrieval_score_matches_a_loop_over_steps_on_random_maps() -> None:
    ids, src, generated = copy_sequences(2, 5, 1, seed=3)
    n = ids.shape[1]
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, n, n, generator=generator, dtype=torch.float64)
    logits = logits.masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)), -math.inf)
    pattern = logits.softmax(-1)
    result = r.retrieval_score(pattern, ids, src, generated)
    for layer in range(2):
        for head in range(3):
            hits = steps = 0
            for b in range(2):
                for p in range(1, n):
                    if not generated[b, p]:
                        continue
                    w = int(ids[b, p])
                    hit_keys = [k for k in range(p) if src[b, k] and int(ids[b, k]) == w]
                    if not hit_keys:
                        continue
                    steps += 1
                    hits += int(int(pattern[b, layer, head, p - 1].argmax()) in hit_keys)
            assert float(result.score[layer, head]) == pytest.approx(hits / steps)


def echo_loop(pattern: torch.Tensor, ids: torch.Tensor, bos: bool) -> torch.Tensor:
    n_batch, n_layers, n_heads, n, _ = pattern.shape
    out = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    for layer in range(n_layers):
        for head in range(n_heads):
            per_prompt = []
            for b in range(n_batch):
                values = []
                for q in range(n):
                    keys = [k for k in range(int(bos), q) if int(ids[b, k]) == int(ids[b, q])]
                    if keys:
                        values.append(sum(float(pattern[b, layer, head, q, k]) for k in keys))
                per_prompt.append(sum(values) / len(values))
            out[layer, head] = sum(per_prompt) / n_batch
    return out


def test_echo_score_equals_its_closed_form() -> None:
    # [BOS, a, b, a, b, a]: queries 3 (one earlier a), 4 (one b), 5 (two a's)
    ids = torch.tensor([[1, 7, 8, 7, 8, 7]])
    n = 6
    pattern = causal_uniform(1, 1, 2, n)
    echo_head = torch.zeros(n, n, dtype=torch.float64)
    echo_head[:, 0] = 1.0
    for q, keys in ((3, [1]), (4, [2]), (5, [1, 3])):
        echo_head[q] = 0.0
        for k in keys:
            echo_head[q, k] = 1.0 / len(keys)
    pattern[0, 0, 1] = echo_head
    result = r.echo_score(pattern, ids)
    uniform = (1 / 4 + 1 / 5 + 2 / 6) / 3
    assert result.score[0, 0] == pytest.approx(uniform)
    assert result.baseline[0, 0] == pytest.approx(uniform)
    assert result.score[0, 1] == pytest.approx(1.0)
    assert int(result.support[0, 0]) == 3
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 7, (3, 9), generator=generator)
    ids[:, 0] = 1
    logits = torch.randn(3, 2, 2, 9, 9, generator=generator, dtype=torch.float64)
    logits = logits.masked_fill(~torch.tril(torch.ones(9, 9, dtype=torch.bool)), -math.inf)
    pattern = logits.softmax(-1)
    result = r.echo_score(pattern, ids)
    assert torch.allclose(result.score, echo_loop(pattern, ids, True))
    assert bool((result.low <= result.score).all() and (result.score <= result.high).all())


def test_echo_score_is_the_taxonomys_duplicate_token_key_set() -> None:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 6, (10,), generator=generator)
    ids[0] = 1
    logits = torch.randn(2, 3, 10, 10, generator=generator, dtype=torch.float64)
    logits = logits.masked_fill(~torch.tril(torch.ones(10, 10, dtype=torch.bool)), -math.inf)
    pattern = logits.softmax(-1).float()
    taxonomy = head_taxonomy_from_pattern(pattern, ids)
    echo = r.echo_score(pattern[None], ids[None])
    assert torch.allclose(echo.score.float(), taxonomy.scores["duplicate_token"], atol=1e-6)


def test_long_range_scores_of_streaming_uniform_and_retrieving_heads() -> None:
    n, sink, window = 12, 1, 3
    pattern = causal_uniform(2, 1, 3, n)
    streaming = torch.zeros(n, n, dtype=torch.float64)
    streaming[:, 0] = 0.5
    streaming[torch.arange(n), torch.arange(n)] += 0.5
    pattern[:, 0, 0] = streaming
    far = torch.zeros(n, n, dtype=torch.float64)
    far[:, 0] = 1.0
    far[sink + window :, 0] = 0.0
    far[torch.arange(sink + window, n), 1] = 1.0  # key 1: outside the window for q >= 4
    pattern[:, 0, 2] = far
    mass = r.long_range_mass(pattern, sink=sink, window=window)
    peak = r.long_range_peak(pattern, sink=sink, window=window)
    queries = range(sink + window, n)
    uniform_mass = sum((q + 1 - sink - window) / (q + 1) for q in queries) / len(queries)
    uniform_peak = sum(1 / (q + 1) for q in queries) / len(queries)
    assert mass.score[0, 0] == pytest.approx(0.0) and peak.score[0, 0] == pytest.approx(0.0)
    assert mass.score[0, 1] == pytest.approx(uniform_mass)
    assert mass.baseline[0, 1] == pytest.approx(uniform_mass)
    assert peak.score[0, 1] == pytest.approx(uniform_peak)
    assert peak.baseline[0, 1] == pytest.approx(uniform_peak)
    assert mass.score[0, 2] == pytest.approx(1.0) and peak.score[0, 2] == pytest.approx(1.0)
    assert int(mass.support[0, 0]) == 2 * len(queries)
    # identical prompts: a zero-width bootstrap interval at the score
    assert float(mass.low[0, 2]) == pytest.approx(1.0) == float(mass.high[0, 2])


def test_padding_is_ignored() -> None:
    n = 8
    pattern = causal_uniform(2, 1, 1, n)
    pattern[1, :, :, 5:] = 0.0
    pattern[1, :, :, :, 5:] = 0.0
    full = r.long_range_mass(pattern[:1], sink=1, window=2)
    short = r.long_range_mass(pattern[1:, :, :, :5, :5], sink=1, window=2)
    both = r.long_range_mass(pattern, lengths=[8, 5], sink=1, window=2)
    assert float(both.score[0, 0]) == pytest.approx(
        (float(full.score[0, 0]) + float(short.score[0, 0])) / 2
    )


def test_sink_baseline_and_ranking() -> None:
    assert r.sink_baseline([3]) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert r.sink_baseline([3, 2]) == pytest.approx(((1 / 2 + 1 / 3) / 2 + 1 / 2) / 2)
    with pytest.raises(InputError):
        r.sink_baseline([1])
    score = torch.tensor([[0.2, float("nan")], [0.9, 0.2]], dtype=torch.float64)
    assert r.rank_by(score, 2) == [(1, 0), (0, 0)]
    assert r.rank_by(score, 2, top=False) == [(0, 0), (1, 1)]


def test_bad_inputs_are_refused() -> None:
    pattern = causal_uniform(1, 1, 1, 4)
    with pytest.raises(InputError, match="window"):
        r.long_range_mass(pattern, window=0)
    with pytest.raises(InputError, match="token_ids"):
        r.echo_score(pattern, torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(InputError, match="level"):
        r.wilson_interval(torch.tensor(1.0), torch.tensor(2), level=1.5)


def head_score(values, baseline=0.0, support=10, low=None, high=None) -> r.HeadScore:
    score = torch.tensor(values, dtype=torch.float64)
    nan = torch.full_like(score, math.nan)
    return r.HeadScore(
        measure="test",
        score=score,
        baseline=torch.full_like(score, baseline),
        support=torch.full(score.shape, support, dtype=torch.long),
        low=nan if low is None else torch.tensor(low, dtype=torch.float64),
        high=nan if high is None else torch.tensor(high, dtype=torch.float64),
        unit="steps",
    )


def test_long_context_labels_need_their_evidence() -> None:
    # one layer of three heads over [BOS, a, b, a, b]: head 0 a sink, head 1 uniform,
    # head 2 an echo head
    ids = torch.tensor([1, 7, 8, 7, 8])
    n = 5
    pattern = causal_uniform(1, 1, 3, n)[0]
    pattern[0, 0] = 0.0
    pattern[0, 0, :, 0] = 1.0
    pattern[0, 2, 3] = 0.0
    pattern[0, 2, 3, 1] = 1.0
    pattern[0, 2, 4] = 0.0
    pattern[0, 2, 4, 2] = 1.0
    taxonomy = head_taxonomy_from_pattern(pattern.float(), ids)
    before = head_labels(taxonomy)
    echo = r.echo_score(pattern[None], ids[None])
    assert long_context_labels(taxonomy) == {(0, h): [] for h in range(3)}
    labels = long_context_labels(taxonomy, echo=echo, min_support=2)
    assert [x.label for x in labels[(0, 2)]] == ["echo"]
    assert labels[(0, 2)][0].baseline == pytest.approx(float(echo.baseline[0, 2]))
    assert not labels[(0, 0)] and not labels[(0, 1)]
    # too little support: no label
    assert not long_context_labels(taxonomy, echo=echo)[(0, 2)]
    retrieval = head_score(
        [[0.9, 0.05, 0.3]], baseline=0.1, low=[[0.8, 0.0, 0.05]], high=[[1.0, 0.2, 0.6]]
    )
    labels = long_context_labels(taxonomy, retrieval=retrieval)
    assert [x.label for x in labels[(0, 0)]] == ["retrieval"]
    assert not labels[(0, 1)]  # below 0.1
    assert not labels[(0, 2)]  # above 0.1 but its interval reaches below chance
    gates = head_score([[1.0, 0.0, 0.2]])
    labels = long_context_labels(taxonomy, streaming=gates)
    assert [[x.label for x in labels[(0, h)]] for h in range(3)] == [
        ["retrieval"],
        ["streaming"],
        ["streaming"],
    ]
    # dormant: the sink head, only with ablation evidence equivalent to zero
    quiet = Interval(
        mean=torch.tensor([[0.001, 0.0, 0.3]], dtype=torch.float64),
        low=torch.tensor([[-0.01, -0.01, 0.2]], dtype=torch.float64),
        high=torch.tensor([[0.01, 0.01, 0.4]], dtype=torch.float64),
        n=8,
        level=0.95,
    )
    baseline = r.sink_baseline([n])
    labels = long_context_labels(taxonomy, ablation=quiet, sink_baseline=baseline)
    assert [x.label for x in labels[(0, 0)]] == ["dormant"]
    assert labels[(0, 0)][0].baseline == pytest.approx(baseline)
    assert not labels[(0, 1)]  # quiet but not sink-dominated
    assert not long_context_labels(taxonomy, ablation=quiet)[(0, 0)]  # no baseline
    wide = Interval(quiet.mean, quiet.low - 0.1, quiet.high, n=8, level=0.95)
    assert not long_context_labels(taxonomy, ablation=wide, sink_baseline=baseline)[(0, 0)]
    # the existing labels are untouched
    assert head_labels(taxonomy) == before
    with pytest.raises(InputError, match="do not match"):
        long_context_labels(taxonomy, echo=head_score([[0.1, 0.2]]))
