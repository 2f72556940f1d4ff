"""The built-in toy-induction model shows its circuit (docs/methods.md §5.2)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import headscope as hs
from headscope.models.induction_data import random_repeat_batch, repeated_random_batch
from headscope.models.toy_training import BOS_ID, WORD_RANGE
from headscope.models.zoo import BUILTINS


@pytest.fixture(scope="module")
def repeated():
    generator = torch.Generator().manual_seed(7)
    return repeated_random_batch(
        16, 15, prefix_length=3, vocab=WORD_RANGE, bos_id=BOS_ID, generator=generator
    )


def second_half_nll(logits, tokens, layout):
    logprobs = logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    s1, s2, t = layout.first_start, layout.second_start, layout.repeat_length
    return -logprobs[:, s1 : s2 - 1].mean().item(), -logprobs[:, s2 : s2 + t - 1].mean().item()


def test_weights_ship_small_with_a_model_card():
    directory = BUILTINS["toy-induction"].path()
    assert (directory / "model.safetensors").stat().st_size < 2_000_000
    card = (directory / "MODEL_CARD.md").read_text()
    assert "second-half loss" in card and "Reproduce" in card
    numbers = json.loads((directory / "training.json").read_text())
    assert numbers["best_previous_token"][2] > 0.8 and numbers["best_induction"][2] > 0.8


def test_spec_and_text_prompts(toy_model):
    spec = toy_model.spec
    assert (spec.n_layers, spec.n_heads, spec.positional, spec.causal) == (2, 4, "rotary", True)
    assert spec.has_lm_head and spec.prepends_bos
    batch = toy_model.tokenize("red cat blue dog")
    assert batch.tokens[0] == ("<bos>", "red", "cat", "blue", "dog")


def test_capture_finds_the_previous_token_and_induction_heads(toy_model, repeated):
    tokens, layout = repeated
    record = hs.capture(toy_model, tokens)
    pattern = record.pattern.mean(0)  # [layer, head, query, key] averaged over prompts
    q = torch.arange(1, tokens.shape[1])
    previous = pattern[0][:, q, q - 1].mean(-1)
    q2 = torch.arange(layout.second_start, layout.length)
    induction = pattern[1][:, q2, q2 - layout.repeat_length + 1].mean(-1)
    assert previous.max() > 0.8
    assert induction.max() > 0.8


def test_second_half_loss_far_below_first_half(toy_model, repeated):
    tokens, layout = repeated
    with torch.no_grad():
        logits = toy_model.forward(toy_model.tokenize(tokens)).logits
    first, second = second_half_nll(logits, tokens, layout)
    assert first > 0.8 * math.log(61)
    assert second < 0.1 * first


def test_ablating_either_circuit_head_breaks_induction(toy_model, repeated):
    tokens, layout = repeated
    batch = toy_model.tokenize(tokens)
    record = hs.capture(toy_model, tokens).pattern.mean(0)
    q = torch.arange(1, tokens.shape[1])
    prev_head = int(record[0][:, q, q - 1].mean(-1).argmax())
    q2 = torch.arange(layout.second_start, layout.length)
    ind_head = int(record[1][:, q2, q2 - layout.repeat_length + 1].mean(-1).argmax())
    for layer, head in ((0, prev_head), (1, ind_head)):
        gates = torch.ones(2, 4)
        gates[layer, head] = 0
        with torch.no_grad(), hs.gate_heads(toy_model, gates):
            _, second = second_half_nll(toy_model.forward(batch).logits, tokens, layout)
        assert second > 0.5 * math.log(61), (layer, head, second)


def test_random_repeat_batches_vary_length_and_offset():
    generator = torch.Generator().manual_seed(0)
    layouts = {
        random_repeat_batch(2, vocab=(3, 64), bos_id=1, generator=generator)[1] for _ in range(40)
    }
    assert len({lay.repeat_length for lay in layouts}) > 5
    assert len({lay.prefix_length for lay in layouts}) > 5
    tokens, layout = repeated_random_batch(3, 5, prefix_length=2, vocab=(3, 64), bos_id=1)
    assert tokens.shape == (3, layout.length) and (tokens[:, 0] == 1).all()
    first = tokens[:, layout.first_start : layout.second_start]
    assert torch.equal(first, tokens[:, layout.second_start :])
