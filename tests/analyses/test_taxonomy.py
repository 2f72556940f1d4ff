"""Head taxonomy scores against hand-built heads, closed forms and a brute-force loop."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headscope.analyses.taxonomy import (
    CATEGORIES,
    DEFAULT_THRESHOLDS,
    INSUFFICIENT,
    MIN_SUPPORT,
    HeadTaxonomy,
    head_label_details,
    head_label_sets,
    head_labels,
    head_scores,
    head_scores_from_pattern,
    head_taxonomy,
    head_taxonomy_from_pattern,
    induction_score,
    previous_token_score,
)
from headscope.errors import InputError

_head_labels, _head_label_sets = head_labels, head_label_sets
BOS = 1


def repeated_tokens(t: int, prefix: int = 0) -> torch.Tensor:
    """[BOS, p_1..p_prefix, r_1..r_T, r_1..r_T] with all p and r distinct."""
    body = torch.arange(10, 10 + prefix + t)
    return torch.cat([torch.tensor([BOS]), body, body[prefix:]])


def one_hot_rows(targets: list[int], n: int) -> torch.Tensor:
    """[query, key] with all of query q's attention on key targets[q]."""
    rows = torch.zeros(n, n)
    rows[torch.arange(n), torch.tensor(targets)] = 1.0
    return rows


def uniform_causal(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]


def previous_head(n: int) -> torch.Tensor:
    return one_hot_rows([max(q - 1, 0) for q in range(n)], n)


def induction_head(t: int, offset: int) -> torch.Tensor:
    n = offset + 2 * t
    targets = [0] * n  # everything else on BOS
    for i in range(t):
        targets[offset + t + i] = offset + i + 1
    return one_hot_rows(targets, n)


def duplicate_head(t: int, offset: int) -> torch.Tensor:
    n = offset + 2 * t
    targets = [0] * n
    for i in range(t):
        targets[offset + t + i] = offset + i
    return one_hot_rows(targets, n)


def heads(*maps: torch.Tensor) -> torch.Tensor:
    """[1 layer, head, query, key]."""
    return torch.stack(maps)[None]


def brute_force(pattern, ids, *, bos, causal, window=2):
    """Direct per-query loops over the definitions in the module docstring; one prompt."""
    n_layers, n_heads, n, _ = pattern.shape
    out = {
        name: torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
        for name in CATEGORIES
    }
    ids = ids.tolist()
    for layer in range(n_layers):
        for head in range(n_heads):
            A = pattern[layer, head].double()
            values = {name: [] for name in CATEGORIES}
            for q in range(n):
                if q >= 1:
                    values["previous_token"].append(A[q, q - 1].item())
                    values["first_token_sink"].append(A[q, 0].item())
                if q + 1 < n and not causal:
                    values["next_token"].append(A[q, q + 1].item())
                copies = [k for k in range(q) if ids[k] == ids[q] and not (bos and k == 0)]
                if copies:
                    values["duplicate_token"].append(sum(A[q, k].item() for k in copies))
                    values["induction"].append(sum(A[q, k + 1].item() for k in copies))
                if q >= (1 if bos else 0):
                    keys = [k for k in range(n) if abs(q - k) <= window and not (bos and k == 0)]
                    values["local"].append(sum(A[q, k].item() for k in keys))
                seen = list(range(q + 1)) if causal else list(range(n))
                if len(seen) >= 2:
                    values["uniform"].append(sum(min(A[q, k].item(), 1 / len(seen)) for k in seen))
            for name, vals in values.items():
                if vals:
                    out[name][layer, head] = sum(vals) / len(vals)
    return out


def random_causal(generator, n_layers, n_heads, n, sharp=3.0):
    logits = torch.randn(n_layers, n_heads, n, n, generator=generator) * sharp
    logits = logits.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), -math.inf)
    return logits.softmax(-1)


# -- closed forms -----------------------------------------------------------------------------


def test_perfect_previous_token_head():
    n = 12
    scores = head_scores_from_pattern(heads(previous_head(n)), torch.arange(20, 20 + n))
    assert scores["previous_token"][0, 0] == pytest.approx(1.0, abs=1e-6)
    assert scores["first_token_sink"][0, 0] == pytest.approx(1 / (n - 1), abs=1e-6)
    # bos excludes key 0 from the local window: query 1 (attending to BOS) scores 0.
    assert scores["local"][0, 0] == pytest.approx((n - 2) / (n - 1), abs=1e-6)
    assert previous_token_score(heads(previous_head(n)))[0, 0] == pytest.approx(1.0)
    no_bos = head_scores_from_pattern(heads(previous_head(n)), torch.arange(n), bos=False)
    assert no_bos["local"][0, 0] == pytest.approx(1.0, abs=1e-6)


def test_uniform_causal_head_closed_forms():
    n = 16
    expected = sum(1 / (q + 1) for q in range(1, n)) / (n - 1)
    pattern = heads(uniform_causal(n))
    scores = head_scores_from_pattern(pattern, torch.arange(20, 20 + n))
    assert scores["previous_token"][0, 0] == pytest.approx(expected, abs=1e-6)
    assert previous_token_score(pattern)[0, 0] == pytest.approx(expected, abs=1e-6)
    assert scores["first_token_sink"][0, 0] == pytest.approx(expected, abs=1e-6)
    assert scores["uniform"][0, 0] == pytest.approx(1.0, abs=1e-6)
    # local window 2 without key 0: min(q, 3) keys of q + 1 for q >= 1.
    local = sum(min(q, 3) / (q + 1) for q in range(1, n)) / (n - 1)
    assert scores["local"][0, 0] == pytest.approx(local, abs=1e-6)
    # no token repeats: duplicate and induction are undefined
    assert math.isnan(scores["duplicate_token"][0, 0])
    assert math.isnan(scores["induction"][0, 0])


def test_sink_head_uniform_score_is_mean_inverse_visible_count():
    n = 10
    pattern = heads(one_hot_rows([0] * n, n))
    scores = head_scores_from_pattern(pattern, torch.arange(20, 20 + n))
    assert scores["first_token_sink"][0, 0] == pytest.approx(1.0)
    expected = sum(1 / (q + 1) for q in range(1, n)) / (n - 1)
    assert scores["uniform"][0, 0] == pytest.approx(expected, abs=1e-6)
    assert scores["local"][0, 0] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("prefix", [0, 3])
def test_induction_and_duplicate_heads_on_a_repeated_sequence(prefix):
    T = 7
    offset = 1 + prefix
    ids = repeated_tokens(T, prefix)
    pattern = heads(induction_head(T, offset), duplicate_head(T, offset), previous_head(len(ids)))
    scores = head_scores_from_pattern(pattern, ids)
    assert scores["induction"][0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    assert scores["duplicate_token"][0].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)
    assert scores["previous_token"][0, 2] == pytest.approx(1.0, abs=1e-6)
    # the shortcut: induction_score with the layout agrees with the general score
    direct = induction_score(pattern, T, offset)
    assert direct[0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    # a uniform head on the induction layout: the mean of 1/(q + 1) over the T queries
    uniform = induction_score(uniform_causal(len(ids)), T, offset)
    want = sum(1 / (offset + T + i + 1) for i in range(T)) / T
    assert uniform.item() == pytest.approx(want, abs=1e-6)


def test_induction_score_matches_uniform_closed_form_and_validates():
    T, offset = 5, 2
    n = offset + 2 * T
    pattern = uniform_causal(n)
    expected = sum(1 / (offset + T + i + 1) for i in range(T)) / T
    assert induction_score(pattern, T, offset).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InputError):
        induction_score(pattern, T, offset + 1)  # runs past the end
    with pytest.raises(InputError):
        induction_score(pattern, 0, offset)


def test_bidirectional_uniform_head():
    n = 9
    full = torch.full((n, n), 1 / n)
    scores = head_scores_from_pattern(heads(full), torch.arange(20, 20 + n))
    assert scores["uniform"][0, 0] == pytest.approx(1.0, abs=1e-6)
    # against causal visibility the same map is far from uniform on early queries
    forced = head_scores_from_pattern(heads(full), torch.arange(20, 20 + n), causal=True)
    assert forced["uniform"][0, 0] < 0.9


# -- against the brute-force loop -------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 11),
    vocab=st.integers(1, 5),
    bos=st.booleans(),
    causal=st.booleans(),
    window=st.integers(0, 3),
)
def test_matches_brute_force(seed, n, vocab, bos, causal, window):
    generator = torch.Generator().manual_seed(seed)
    if causal:
        pattern = random_causal(generator, 2, 3, n)
    else:
        pattern = (torch.randn(2, 3, n, n, generator=generator) * 3).softmax(-1)
    ids = torch.randint(3, 3 + vocab, (n,), generator=generator)
    if bos:
        ids[0] = BOS
    got = head_scores_from_pattern(pattern, ids, bos=bos, causal=causal, window=window)
    want = brute_force(pattern, ids, bos=bos, causal=causal, window=window)
    assert set(got) == set(CATEGORIES)
    for name in CATEGORIES:
        assert got[name].shape == (2, 3)
        assert torch.allclose(got[name].double(), want[name], atol=1e-5, equal_nan=True), name
        finite = got[name][~got[name].isnan()]
        assert ((finite >= 0) & (finite <= 1)).all()


def test_batch_with_padding_is_the_mean_of_trimmed_prompts():
    generator = torch.Generator().manual_seed(0)
    lengths = [9, 6, 4]
    n = max(lengths)
    patterns, ids = [], []
    for length in lengths:
        p = torch.zeros(2, 3, n, n)
        p[..., :length, :length] = random_causal(generator, 2, 3, length)
        patterns.append(p)
        row = torch.full((n,), 0)  # pad id 0
        row[:length] = torch.randint(3, 6, (length,), generator=generator)
        row[0] = BOS
        ids.append(row)
    pattern, token_ids = torch.stack(patterns), torch.stack(ids)
    got = head_scores_from_pattern(pattern, token_ids, lengths=lengths)
    singles = [
        head_scores_from_pattern(patterns[i][..., :L, :L], ids[i][:L])
        for i, L in enumerate(lengths)
    ]
    for name in CATEGORIES:
        stacked = torch.stack([s[name] for s in singles])  # [prompt, layer, head]
        defined = ~stacked.isnan().all(-1).all(-1)
        want = stacked[defined].mean(0)
        assert torch.allclose(got[name], want, atol=1e-6, equal_nan=True), name
    # what sits in the padding cannot matter
    token_ids[1, 6:] = token_ids[1, 1]
    again = head_scores_from_pattern(pattern, token_ids, lengths=lengths)
    for name in CATEGORIES:
        assert torch.allclose(got[name], again[name], equal_nan=True), name


def test_all_nan_heads_score_nan_and_do_not_disturb_others():
    n = 8
    ids = torch.arange(20, 20 + n)
    pattern = heads(previous_head(n), uniform_causal(n))
    holey = pattern.clone()
    holey[0, 1] = float("nan")
    scores = head_scores_from_pattern(holey, ids)
    full = head_scores_from_pattern(pattern, ids)
    for name in ("previous_token", "first_token_sink", "local", "uniform"):
        assert math.isnan(scores[name][0, 1])
        assert scores[name][0, 0] == full[name][0, 0]


# -- records and labels -----------------------------------------------------------------------


def test_head_scores_on_a_record_reads_bos_and_causality_from_the_spec():
    n = 8
    ids = torch.arange(20, 20 + n)
    ids[0] = BOS
    pattern = heads(previous_head(n))
    record = SimpleNamespace(
        pattern=pattern,
        token_ids=ids,
        lengths=None,
        layer_index=(3,),
        head_index=(5,),
        spec=SimpleNamespace(causal=True, bos_token_id=BOS),
    )
    with_bos = head_scores(record)
    assert with_bos["local"][0, 0] == pytest.approx((n - 2) / (n - 1), abs=1e-6)
    record.spec = SimpleNamespace(causal=True, bos_token_id=99)  # first token is not BOS
    assert head_scores(record)["local"][0, 0] == pytest.approx(1.0, abs=1e-6)


def test_labels_pick_the_best_category_above_threshold():
    T, offset = 6, 1
    ids = repeated_tokens(T)
    n = len(ids)
    # 0.3 on BOS, 0.7 three tokens back: no category reaches its threshold
    mixed = 0.3 * one_hot_rows([0] * n, n) + 0.7 * one_hot_rows(
        [max(q - 3, 0) for q in range(n)], n
    )
    pattern = heads(
        induction_head(T, offset),
        previous_head(n),
        one_hot_rows([0] * n, n),
        uniform_causal(n),
        mixed,
    )
    record = SimpleNamespace(pattern=pattern, token_ids=ids, lengths=None, layer_index=(1,))
    labels = head_labels(record)
    assert labels == [["induction", "previous_token", "first_token_sink", "uniform", "none"]]
    taxonomy = head_taxonomy_from_pattern(pattern, ids, layer_index=[1])
    sets = head_label_sets(taxonomy)
    # previous and local tie-or-near-tie for the previous-token head; specific first
    assert sets[(0, 1)][0] == "previous_token" and "local" in sets[(0, 1)]
    assert sets[(0, 4)] == []
    # thresholds are per category and overridable
    lowered = head_labels(taxonomy, {"first_token_sink": 0.4})
    assert lowered[0][4] == "first_token_sink"
    assert set(DEFAULT_THRESHOLDS) == set(CATEGORIES)


def test_specific_categories_lead_and_ties_go_to_the_more_specific_one():
    scores = {name: torch.zeros(1, 1) for name in CATEGORIES}
    # support unknown (None, said explicitly); row 0 is model layer 1

    def head_labels(scores):
        return _head_labels(scores, support=None, layer_index=[1])

    def head_label_sets(scores):
        return _head_label_sets(scores, support=None, layer_index=[1])

    scores["previous_token"][0, 0] = 0.9
    scores["local"][0, 0] = 0.95  # the window contains the previous token
    assert head_labels(scores) == [["previous_token"]]
    assert head_label_sets(scores)[(0, 0)] == ["previous_token", "local"]
    scores["previous_token"][0, 0] = 0.3
    assert head_labels(scores) == [["local"]]
    scores["uniform"][0, 0] = 0.95 + 1e-8  # a tie between generic ones: local first
    assert head_labels(scores) == [["local"]]
    scores["induction"][0, 0] = 0.7
    scores["duplicate_token"][0, 0] = 0.7 + 1e-8
    scores["first_token_sink"][0, 0] = 0.6
    assert head_label_sets(scores)[(0, 0)] == [
        "induction",
        "duplicate_token",
        "first_token_sink",
        "local",
        "uniform",
    ]
    scores["induction"][0, 0] = float("nan")  # NaN never labels
    assert head_labels(scores) == [["duplicate_token"]]


def test_known_heads_of_toy_induction(toy_model):
    """docs/methods.md §5.2: a layer-0 previous-token head and layer-1 induction heads, found on
    repeated random sequences with a prefix (scores from the captured record)."""
    import headscope as hs
    from headscope.models.induction_data import repeated_random_batch
    from headscope.models.toy_training import BOS_ID, WORD_RANGE

    ids, layout = repeated_random_batch(
        4,
        15,
        prefix_length=3,
        vocab=WORD_RANGE,
        bos_id=BOS_ID,
        generator=torch.Generator().manual_seed(0),
    )
    record = hs.capture(toy_model, ids)
    scores = head_scores(record)
    labels = head_labels(record)
    previous = int(scores["previous_token"][0].argmax())
    assert scores["previous_token"][0, previous] > 0.8
    assert labels[0][previous] == "previous_token"
    induction = scores["induction"][1]
    assert (induction > 0.8).sum() >= 1
    for head in torch.nonzero(induction > 0.8).flatten().tolist():
        assert labels[1][head] == "induction"
    # the general score and the layout-based shortcut agree on this data
    direct = induction_score(record.pattern, layout.repeat_length, layout.first_start).mean(0)
    assert int(direct[1].argmax()) in torch.nonzero(induction > 0.8).flatten().tolist()


# -- bad input --------------------------------------------------------------------------------


def test_bad_inputs_raise(unchecked):
    n = 5
    good = heads(uniform_causal(n))
    ids = torch.arange(n)
    with pytest.raises(ValueError):  # rows do not sum to 1
        head_scores_from_pattern(good * 0.5, ids)
    with pytest.raises(ValueError), unchecked():  # wrong number of dims
        head_scores_from_pattern(good[0], ids)
    with pytest.raises(ValueError), unchecked():  # token ids of the wrong length
        head_scores_from_pattern(good, torch.arange(n + 1))
    with pytest.raises(ValueError):  # batched ids for a single prompt
        head_scores_from_pattern(good, ids[None])
    with pytest.raises(ValueError):  # lengths without a batch
        head_scores_from_pattern(good, ids, lengths=[n])
    with pytest.raises(ValueError):  # a length beyond the pattern
        head_scores_from_pattern(good[None], ids[None], lengths=[n + 1])
    with pytest.raises(ValueError), unchecked():  # float token ids
        head_scores_from_pattern(good, ids.float())
    with pytest.raises(ValueError):  # a real query row of zeros
        padded = good[None].clone()
        padded[0, 0, 0, 3] = 0
        head_scores_from_pattern(padded, ids[None], lengths=[n])
    with pytest.raises(ValueError):
        head_labels({"previous_token": torch.zeros(2, 2)}, {"bogus": 0.5}, support=None)
    with pytest.raises(InputError, match="support="):  # a dict of scores must say its support
        head_labels({"previous_token": torch.zeros(2, 2)})
    with pytest.raises(InputError, match="support of 'previous_token'"):
        head_labels({"previous_token": torch.zeros(2, 2)}, support={"previous_token": [1, 2]})
    with pytest.raises(ValueError):
        previous_token_score(torch.ones(1, 1))


# -- evidence: support, layer 0, next token, padding ------------------------------------------


def test_support_counts_the_defining_queries():
    T = 5
    ids = repeated_tokens(T)
    n = len(ids)
    taxonomy = head_taxonomy_from_pattern(heads(uniform_causal(n)), ids)
    support = {name: int(value[0, 0]) for name, value in taxonomy.support.items()}
    assert support == {
        "previous_token": n - 1,
        "duplicate_token": T,  # the second copy
        "induction": T,
        "next_token": 0,  # causal: no query sees its next token
        "first_token_sink": n - 1,
        "local": n - 1,  # bos: query 0 has no key
        "uniform": n - 1,  # query 0 sees one key
    }
    assert math.isnan(taxonomy.scores["next_token"][0, 0])
    # a batch adds its prompts' queries; uncaptured (NaN) heads have none
    two = heads(uniform_causal(n), uniform_causal(n))  # [1 layer, 2 heads, n, n]
    both = torch.stack([two, two])
    both[:, 0, 0] = float("nan")
    batch = head_taxonomy_from_pattern(both, torch.stack([ids, ids]), lengths=[n, 4])
    assert batch.support["previous_token"][0, 1].item() == (n - 1) + 3
    assert batch.support["previous_token"][0, 0].item() == 0


def test_next_token_head_in_a_bidirectional_map():
    n = 9
    ids = torch.arange(20, 20 + n)
    nxt = one_hot_rows([min(q + 1, n - 1) for q in range(n)], n)
    taxonomy = head_taxonomy_from_pattern(heads(nxt, previous_head(n)), ids, causal=False)
    assert taxonomy.scores["next_token"][0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert taxonomy.support["next_token"][0, 0].item() == n - 1
    assert head_labels(taxonomy) == [["next_token", "previous_token"]]


def test_a_label_needs_support_and_induction_needs_an_earlier_layer():
    scores = {name: torch.zeros(2, 2) for name in CATEGORIES}
    scores["induction"][:] = 0.9
    scores["previous_token"][:, 1] = 0.6
    support = {name: 10 for name in CATEGORIES}
    support["induction"] = 1
    details = head_label_details(scores, support=support)
    # layer 0: induction is not a candidate at all; layer 1: it rests on one query
    assert [[cell.label for cell in row] for row in details] == [
        ["none", "previous_token"],
        [INSUFFICIENT, "previous_token"],
    ]
    cell = details[1][0]
    assert (cell.category, cell.score, cell.support) == ("induction", pytest.approx(0.9), 1)
    assert head_label_sets(scores, support=support)[(1, 0)] == []
    enough = {**support, "induction": MIN_SUPPORT}
    assert head_labels(scores, support=enough) == [
        ["none", "previous_token"],
        ["induction", "induction"],
    ]
    assert head_labels(scores, support=enough, layer_index=[3, 4])[0] == ["induction"] * 2
    assert head_labels(scores, support=None)[1] == ["induction", "induction"]


def test_previous_token_score_never_counts_padding():
    generator = torch.Generator().manual_seed(3)
    long = random_causal(generator, 2, 3, 9)
    short = random_causal(generator, 2, 3, 5)
    padded = torch.zeros(2, 2, 3, 9, 9)
    padded[0] = long
    padded[1, ..., :5, :5] = short
    got = previous_token_score(padded)
    torch.testing.assert_close(got[0], previous_token_score(long))
    torch.testing.assert_close(got[1], previous_token_score(short))


def test_padded_batch_previous_token_score_on_toy_induction(toy_model):
    import headscope as hs

    texts = ["red cat blue dog sun tree red cat blue dog sun tree", "red cat blue dog"]
    batch = hs.capture(toy_model, texts)
    short = batch.lengths[1]
    assert short < batch.pattern.shape[-1]  # right-padded
    alone = hs.capture(toy_model, texts[1])
    got = previous_token_score(batch.pattern)[1]
    torch.testing.assert_close(got, previous_token_score(alone.pattern), atol=1e-5, rtol=0)
    previous = int(previous_token_score(alone.pattern)[0].argmax())
    assert got[0, previous] > 0.8


def test_toy_layer0_heads_are_never_induction_heads(toy_model):
    """Mostly unknown words: every word but a few is <unk>, so "copies" abound and a
    spread-out layer-0 head puts about half its mass on the induction keys."""
    import headscope as hs

    record = hs.capture(
        toy_model, "The cat sat on the mat because it was tired and the dog was not"
    )
    assert record.tokens.count("<unk>") > len(record.tokens) // 2
    taxonomy = head_taxonomy(record)
    layer0 = record.layer_index.index(0)
    assert (taxonomy.scores["induction"][layer0] > 0.5).any()  # the raw score is there...
    assert taxonomy.support["induction"][layer0, 0] >= MIN_SUPPORT  # ...with support
    labels = head_labels(record)
    assert "induction" not in labels[layer0]  # ...but no layer-0 head is an induction head
    assert isinstance(taxonomy, HeadTaxonomy)


def test_minilm_next_token_head_is_labelled(minilm_model):
    import headscope as hs

    record = hs.capture(minilm_model, "The cat sat on the mat because it was tired.")
    pattern = record.pattern
    next_mass = pattern.diagonal(offset=1, dim1=-2, dim2=-1).mean(-1)  # [layer, head]
    flat = int(next_mass.flatten().argmax())
    layer, head = divmod(flat, pattern.shape[1])
    assert next_mass[layer, head] > 0.5
    labels = head_labels(record)
    assert labels[layer][head] == "next_token"
    taxonomy = head_taxonomy(record)
    score = taxonomy.scores["next_token"][layer, head].item()
    assert score == pytest.approx(next_mass[layer, head].item(), abs=1e-5)
    assert taxonomy.support["next_token"][layer, head].item() == pattern.shape[-1] - 1


def test_minilm_one_query_induction_is_insufficient_evidence(minilm_model):
    """One repeated word ("the ... the"): one query defines induction. A head that puts
    most of that one query's attention on the induction key used to be labelled."""
    import headscope as hs

    record = hs.capture(minilm_model, "The cat sat on the mat because it was tired.")
    ids = record.token_ids.tolist()
    repeats = [q for q in range(len(ids)) if ids[q] in ids[1:q]]
    assert len(repeats) == 1
    taxonomy = head_taxonomy(record)
    assert (taxonomy.support["induction"] == 1).all()
    lone = (taxonomy.scores["induction"] > DEFAULT_THRESHOLDS["induction"]).nonzero().tolist()
    assert lone, "a head attends to the induction key of the one repeated token"
    labels = head_label_details(record)
    for layer, head in lone:
        cell = labels[layer][head]
        assert cell.label == INSUFFICIENT and cell.category == "induction" and cell.support == 1
    flat = [cell.label for row in labels for cell in row]
    assert "induction" not in flat
