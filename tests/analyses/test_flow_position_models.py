"""Flow, rollout and sinks on the built-in models (docs/methods.md §1, §3; tier 3/4):
toy-induction's second-copy queries route mass to the token after their first
occurrence beyond the content-free baseline; minilm's first-token sink heads are
found by `sink_heads` and really do attend mostly to the first token."""

from __future__ import annotations

import torch

import headscope as hs
from headscope.analyses.flow import attention_flow, content_free_baseline, rollout
from headscope.analyses.position import sink_heads, sink_scores
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


def test_minilm_first_token_sink_heads(minilm_model):
    record = hs.capture(minilm_model, SENTENCES)
    lengths = torch.tensor(record.lengths)
    found = sink_heads(record.pattern, causal=False, lengths=lengths)
    assert found, "minilm has heads that attend mostly to [CLS]"
    # independently: the share of each real query's attention that lands on key 0
    mass = []
    for index, n in enumerate(record.lengths):
        mass.append(record.pattern[index, :, :, :n, 0].mean(-1))  # [layer head]
    first = torch.stack(mass).mean(0)
    for layer, head in found:
        assert first[layer, head] > 0.3
    others = torch.ones_like(first, dtype=torch.bool)
    for layer, head in found:
        others[layer, head] = False
    assert (first[others] <= 0.3 + 1e-6).all()
    # a bidirectional encoder: a uniform head would score 1/T, far below the threshold
    alpha = sink_scores(record.pattern, causal=False, lengths=lengths)[..., 0]
    assert alpha.nanmean(0).max() > 0.5
