"""Flow, rollout and sinks on the built-in models (docs/methods.md §1, §3; tier 3/4):
toy-induction's second-copy queries route mass to the token after their first
occurrence beyond the content-free baseline; the sink decision (ratio to uniform
attention, minimum support, causality from the record) finds the heads whose map has a
solid first-token column and nothing else, on short and long prompts, causal and
bidirectional."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import headscope as hs
from headscope.analyses.flow import (
    approximate_flow,
    attention_flow,
    content_free_baseline,
    flow_graph,
    rollout,
)
from headscope.analyses.position import (
    SINK_FLOOR,
    SINK_RATIO,
    sink_baseline,
    sink_decision,
    sink_heads,
    sink_scores,
)
from headscope.dashboard.examples import TOY_PROMPTS
from headscope.models.induction_data import repeated_random_batch
from headscope.models.toy_training import BOS_ID, WORD_RANGE

SENTENCES = [
    "The cat sat on the mat and looked out of the window.",
    "A researcher studies how attention heads move information.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "She bought apples, pears and a loaf of bread at the market.",
]


def test_toy_induction_flow_and_rollout_reach_the_induction_source(toy_model):
    tokens, layout = repeated_random_batch(
        1,
        10,
        prefix_length=2,
        vocab=WORD_RANGE,
        bos_id=BOS_ID,
        generator=torch.Generator().manual_seed(5),
    )
    record = hs.capture(toy_model, tokens[0])
    pattern = record.pattern.double()
    n = pattern.shape[-1]
    rolled = rollout(pattern)[-1]
    flowed = attention_flow(pattern)
    base_roll = content_free_baseline(n, n_layers=2, method="rollout")[-1]
    base_flow = content_free_baseline(n, n_layers=2, method="flow")
    margins_roll, margins_flow = [], []
    for query in range(layout.second_start + 1, layout.length - 1):
        source = query - layout.repeat_length + 1  # the token after the first occurrence
        margins_roll.append(float(rolled[query, source] - base_roll[query, source]))
        margins_flow.append(float(flowed[query, source] - base_flow[query, source]))
    assert all(m > 0 for m in margins_roll), margins_roll
    assert all(m > 0 for m in margins_flow), margins_flow
    assert sum(margins_roll) / len(margins_roll) > 0.05
    # on the first copy there is nothing to copy: no such excess at distance T − 1
    early = [q for q in range(layout.first_start + 1, layout.second_start) if q - 9 >= 1]
    for query in early:
        assert rolled[query, query - 9] <= base_roll[query, query - 9] + 0.05


def first_column(pattern: torch.Tensor) -> torch.Tensor:
    """Per head, the mean attention queries q >= 1 put on key 0, and the share of those
    queries whose largest weight is on key 0 (`[layer, head]` each)."""
    rows = pattern[..., 1:, :]
    return rows[..., 0].mean(-1), (rows.argmax(-1) == 0).float().mean(-1)


def test_readme_example_flags_at_most_one_dominant_sink(toy_model):
    """9 tokens: uniform causal attention already gives α_0 = H_9/9 = 0.31, above the old
    fixed 0.3, which flagged 7 of 8 heads."""
    record = hs.capture(toy_model, "red cat blue dog red cat blue dog")
    assert record.provenance.prepended_bos and len(record.tokens) == 9
    found = sink_heads(record.pattern, causal=record.spec.causal)
    assert found == sink_heads(record)
    assert len(found) <= 1, found
    mass, argmax_share = first_column(record.pattern)
    for layer, head in found:  # a flagged head's <bos> column really dominates
        assert mass[layer, head] > 0.9 and argmax_share[layer, head] == 1.0


def test_toy_dashboard_prompt_finds_the_solid_bos_columns(toy_model):
    record = hs.capture(toy_model, TOY_PROMPTS[0])
    mass, argmax_share = first_column(record.pattern)
    solid = {tuple(p) for p in ((mass > 0.9) & (argmax_share == 1.0)).nonzero().tolist()}
    assert solid, "toy-induction has heads parked on <bos>"
    found = set(sink_heads(record))
    assert solid <= found
    for layer, head in found:  # and nothing whose <bos> column is not the majority
        assert mass[layer, head] > 0.5, (layer, head)


def test_toy_previous_token_head_is_no_sink_at_the_last_keys(toy_model):
    for text in ("red cat blue dog red cat blue dog", TOY_PROMPTS[0]):
        record = hs.capture(toy_model, text)
        previous = record.pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)
        layer, head = divmod(int(previous.flatten().argmax()), previous.shape[1])
        assert previous[layer, head] > 0.8
        alpha = sink_scores(record)[layer, head]
        assert (alpha[-3:] > SINK_FLOOR).any()  # one or two queries see the last keys
        decision = sink_decision(record)
        assert not decision.sinks[layer, head].any(), text
        assert decision.support[-3:].tolist() == [3, 2, 1]


def test_minilm_cls_and_sep_sinks_use_the_bidirectional_baseline(minilm_model):
    record = hs.capture(minilm_model, SENTENCES)
    assert record.spec.causal is False and record.tokens[0][0] == "[CLS]"
    lengths = record.lengths
    alpha = sink_scores(record)  # [batch, layer, head, key]
    baseline = sink_baseline(record.pattern.shape[-1], causal=False, lengths=lengths)
    for b, n in enumerate(lengths):
        assert record.tokens[b][n - 1] == "[SEP]"
        # [SEP] (the last real key) is seen by every real query: the bidirectional mean
        every_query = record.pattern[b, :, :, :n, n - 1].double().mean(-1)
        torch.testing.assert_close(alpha[b, :, :, n - 1], every_query)
        assert baseline[b, n - 1].item() == pytest.approx(1 / n)
    decision = sink_decision(record)
    assert decision.causal is False and decision.support[0].item() == sum(lengths)
    # independently: each head's share of its real queries' attention on [CLS]
    share = torch.stack(
        [record.pattern[b, :, :, :n, 0].double().sum(-1) for b, n in enumerate(lengths)]
    ).sum(0) / sum(lengths)
    uniform = len(lengths) / sum(lengths)  # 1/T pooled over the queries
    torch.testing.assert_close(decision.alpha[..., 0], share)
    assert decision.baseline[0].item() == pytest.approx(uniform)
    cls = set(decision.heads(0))
    strong = {
        tuple(p) for p in (share > max(SINK_FLOOR, SINK_RATIO * uniform) + 0.05).nonzero().tolist()
    }
    weak = {tuple(p) for p in (share < max(SINK_FLOOR, SINK_RATIO * uniform)).nonzero().tolist()}
    assert len(strong) > 36 and strong <= cls and not (cls & weak)
    # [SEP]: one decision per prompt (its position moves); a flagged head must show it
    for b, n in enumerate(lengths):
        one = sink_decision(record.prompt(b))
        for layer, head in one.heads(n - 1):
            assert record.pattern[b, layer, head, :n, n - 1].mean() > SINK_FLOOR
        column = record.pattern[b, :, :, :n, n - 1].mean(-1)
        for layer, head in (column > 0.5).nonzero().tolist():
            assert (layer, head) in one.heads(n - 1)


def test_minilm_flow_matches_networkx_and_the_pruned_bracket_holds(minilm_model):
    # real maps (peaked, [CLS]/[SEP] sinks, capacities over several orders of magnitude):
    # exact flow equals one networkx max-flow per pair, and the pruned flow brackets it
    record = hs.capture(minilm_model, "Attention flow on a real map.")
    pattern = record.pattern.double()
    n_layers, n = pattern.shape[0], pattern.shape[-1]
    raw = attention_flow(pattern, normalize=False, workers=1).numpy()
    graph = flow_graph(pattern)
    reference = np.array(
        [[nx.maximum_flow_value(graph, (n_layers, i), (0, j)) for j in range(n)] for i in range(n)]
    )
    assert np.abs(raw - reference).max() <= 1e-9
    for rule in ({"top_k": 1}, {"top_k": 3}, {"mass": 0.2}, {"top_k": 2, "keep_ends": False}):
        solved = approximate_flow(pattern, workers=1, **rule)
        assert (solved.values <= raw + 1e-12).all() and (raw <= solved.upper + 1e-12).all()
