"""gated_run scores the loss on the prompt's target tokens ("auto" rule): on a
repeated sequence, the tokens a copying circuit can predict, not the
unpredictable first copy. Value-weighted attention matches a direct computation
from the Hugging Face weights."""

from __future__ import annotations

import math

import pytest
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


# -- value-weighted attention (Kobayashi et al. 2020) -------------------------------------------


def _direct_value_weighted(hf, arch: str, ids: torch.Tensor) -> torch.Tensor:
    """α_{h,q,k}·‖v_{h,k}·W_O^h‖ from the Hugging Face weights themselves (eager
    attention, the layer's own norm, v and output projections), rows renormalized."""
    out = hf(ids, output_attentions=True, output_hidden_states=True)
    config = hf.config
    n_heads = config.num_attention_heads
    d_head = config.hidden_size // n_heads
    maps = []
    for layer, attention in enumerate(out.attentions):
        hidden = out.hidden_states[layer][0]
        if arch == "gpt2":
            block = hf.transformer.h[layer]
            x = block.ln_1(hidden)
            d = config.hidden_size
            v = x @ block.attn.c_attn.weight[:, 2 * d :] + block.attn.c_attn.bias[2 * d :]
            v = v.view(-1, n_heads, d_head)
            w_o = block.attn.c_proj.weight.view(n_heads, d_head, -1)  # Conv1D: [in, out]
        else:  # llama, grouped-query: 2 kv heads for 4 query heads
            block = hf.model.layers[layer]
            x = block.input_layernorm(hidden)
            n_kv = config.num_key_value_heads
            v = block.self_attn.v_proj(x).view(-1, n_kv, d_head)
            v = v.repeat_interleave(n_heads // n_kv, dim=1)
            w_o = block.self_attn.o_proj.weight.T.reshape(n_heads, d_head, -1)
        norms = torch.einsum("phd,hdm->hpm", v, w_o).norm(dim=-1)  # [head, key]
        weighted = attention[0] * norms[:, None, :]
        maps.append(weighted / weighted.sum(-1, keepdim=True))
    return torch.stack(maps).float()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_value_weighted_attention_matches_the_weights(tiny_dirs, tiny_models, arch):
    from tiny_models import load_eager_hf

    from headscope.experiments.attention import (
        capture,
        value_norms,
        value_weighted_attention,
        weight_by_value_norms,
    )

    model = tiny_models[arch]
    batch = model.tokenize("t5 t9 t7 t5 t9 t12")
    with torch.no_grad():
        expected = _direct_value_weighted(load_eager_hf(tiny_dirs[arch]), arch, batch.ids)
    got = value_weighted_attention(model, batch)
    assert got.shape == expected.shape == (2, 4, 7, 7)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(2, 4, 7), atol=1e-5)
    # it reweights: not the raw attention, and raw products keep the norms' units
    pattern = capture(model, batch).pattern
    assert (got - pattern).abs().max() > 1e-3
    norms = value_norms(model, batch)
    raw = weight_by_value_norms(pattern, norms, renormalize=False)
    torch.testing.assert_close(raw, pattern * norms[:, :, None, :])
    torch.testing.assert_close(value_weighted_attention(model, batch, pattern=pattern), got)


def test_value_weighted_attention_refuses_a_batch_and_a_wrong_pattern(toy_model):
    from headscope.errors import InputError
    from headscope.experiments.attention import value_norms, value_weighted_attention

    with pytest.raises(InputError, match="one prompt"):
        value_norms(toy_model, toy_model.tokenize(["red cat", "blue dog"]))
    with pytest.raises(InputError, match="does not match"):
        value_weighted_attention(toy_model, "red cat blue", pattern=torch.ones(2, 4, 3, 3))
    # a query row of zero mass stays zero (no division by zero)
    from headscope.experiments.attention import weight_by_value_norms

    zero = weight_by_value_norms(torch.zeros(1, 2, 2), torch.ones(1, 2))
    assert torch.equal(zero, torch.zeros(1, 2, 2))
