"""gated_run scores the loss on the prompt's target tokens ("auto" rule): on a
repeated sequence, the tokens a copying circuit can predict, not the
unpredictable first copy."""

from __future__ import annotations

import math

import torch

from headscope.dashboard.examples import TOY_PROMPTS
from headscope.experiments.attention import gated_run
from headscope.experiments.metrics import evaluate_metric, next_token_loss
from headscope.experiments.targets import resolve_targets
from headscope.models.toy_training import WORD_RANGE

LOG_VOCAB = math.log(WORD_RANGE[1] - WORD_RANGE[0])  # uniform guess over the toy's words


def test_loss_scores_the_repeated_tokens(toy_model, circuit):
    batch = toy_model.tokenize(TOY_PROMPTS[0])  # <bos> + 10 words, twice
    ones = torch.ones(toy_model.spec.n_layers, toy_model.spec.n_heads)
    clean = gated_run(toy_model, batch, ones)
    assert clean.target_rule == "repeats" and clean.target_tokens == 9
    every = float(evaluate_metric(toy_model, "loss", batch)[0])
    assert clean.loss < 0.25 * LOG_VOCAB and clean.loss < every - 1
    # the same number as the metric on the rule's marks
    _, marks = resolve_targets("repeats", batch.ids[0].tolist(), None)
    targets = torch.tensor([marks])
    assert math.isclose(
        clean.loss,
        float(evaluate_metric(toy_model, next_token_loss(targets), batch)[0]),
        rel_tol=1e-5,
    )
    # without the previous-token head the induction circuit cannot copy
    layer, head = circuit.previous_head
    scaled, off = ones.clone(), ones.clone()
    scaled[layer, head], off[layer, head] = 0.2, 0.0
    partial = gated_run(toy_model, batch, scaled)
    ablated = gated_run(toy_model, batch, off)
    assert clean.loss + 1 < partial.loss <= ablated.loss + 0.1
    assert ablated.loss > 0.8 * LOG_VOCAB and ablated.target_tokens == 9


def test_loss_without_repeats_scores_every_token(toy_model):
    batch = toy_model.tokenize("red cat blue dog sun")
    ones = torch.ones(toy_model.spec.n_layers, toy_model.spec.n_heads)
    run = gated_run(toy_model, batch, ones)
    assert run.target_rule == "all" and run.target_tokens == 5
    assert run.target_meaning == "every token after the first"
    assert math.isclose(run.loss, float(evaluate_metric(toy_model, "loss", batch)[0]), rel_tol=1e-5)


def test_one_token_has_no_loss(toy_model):
    ones = torch.ones(toy_model.spec.n_layers, toy_model.spec.n_heads)
    run = gated_run(toy_model, toy_model.tokenize(torch.tensor([1])), ones)
    assert run.loss is None and run.target_rule is None and run.target_tokens == 0
    assert run.target_meaning is None
