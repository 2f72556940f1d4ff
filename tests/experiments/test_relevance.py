"""Chefer et al. relevance: closed form with unit gradients; gradients equal autograd."""

from __future__ import annotations

import pytest
import torch

from headscope.analyses.relevance import relevance_from_gradients
from headscope.errors import InputError
from headscope.experiments.relevance import attention_gradients, relevance


def random_pattern(layers, heads, n, seed=0, causal=True):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, n, n, generator=generator)
    if causal:
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_unit_gradients_give_two_to_the_L_times_rollout(layers):
    pattern = random_pattern(layers, 3, 6, seed=layers)
    result = relevance_from_gradients(pattern, torch.ones_like(pattern))
    eye = torch.eye(6, dtype=torch.float64)
    rollout = eye
    for layer in range(layers):
        rollout = (0.5 * eye + 0.5 * pattern[layer].double().mean(0)) @ rollout
    assert torch.allclose(result, 2**layers * rollout, atol=1e-12)


def test_negative_contributions_are_clamped_before_the_head_mean():
    pattern = random_pattern(1, 2, 4)
    gradient = torch.ones_like(pattern)
    gradient[0, 1] = -1.0  # head 1 only contributes negatively
    result = relevance_from_gradients(pattern, gradient)
    expected = torch.eye(4, dtype=torch.float64) + 0.5 * pattern[0, 0].double()
    assert torch.allclose(result, expected, atol=1e-12)


def test_inputs_are_not_mutated_and_bad_input_is_rejected():
    pattern = random_pattern(2, 2, 5)
    gradient = torch.randn_like(pattern)
    before = (pattern.clone(), gradient.clone())
    relevance_from_gradients(pattern, gradient)
    assert torch.equal(pattern, before[0]) and torch.equal(gradient, before[1])
    with pytest.raises(ValueError, match="differs"):
        relevance_from_gradients(pattern, gradient[..., :4])
    with pytest.raises(ValueError, match="NaN"):
        relevance_from_gradients(pattern, gradient.masked_fill(gradient > 1, float("nan")))
    with pytest.raises(ValueError, match="row-stochastic"):
        relevance_from_gradients(pattern * 2, gradient)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gradient_through_z_equals_autograd_on_the_pattern(tiny_models, arch):
    model = tiny_models[arch]
    batch = model.tokenize("t5 t9 t13 t5 t9")
    ours = attention_gradients(model, batch)
    kept = {}

    def retain(layer):
        def hook(pattern, hook):
            pattern.retain_grad()
            kept[layer] = pattern
            return pattern

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_pattern", retain(layer)) for layer in range(2)]
    logits = model.forward(batch, hooks=hooks).logits
    logits[0, -1, ours.target].backward()
    expected = torch.stack([kept[layer].grad[0] for layer in range(2)])
    assert ours.target == int(logits[0, -1].argmax())
    assert torch.allclose(ours.gradient, expected, atol=1e-6)


def test_encoders_without_lm_head_need_a_callable_target(minilm_model):
    with pytest.raises(InputError, match="no trained LM head"):
        relevance(minilm_model, "The cat sat.")
    result = relevance(minilm_model, "The cat sat.", target=lambda out, batch: out.embedding.norm())
    assert result.shape == (6, 6) and torch.isfinite(result).all()
    assert (result.diagonal() >= 1).all()


def test_toy_induction_relevance_points_at_the_induction_source(toy_model):
    from headscope.models.induction_data import repeated_random_batch
    from headscope.models.toy_training import BOS_ID, WORD_RANGE

    tokens, layout = repeated_random_batch(
        1, 12, vocab=WORD_RANGE, bos_id=BOS_ID, generator=torch.Generator().manual_seed(3)
    )
    # A second-copy query inside the sequence (the last position was never trained
    # to predict anything), predicting the next token of the repeat.
    query = layout.second_start + 8
    result = relevance(toy_model, tokens[0, : query + 1])
    source = query - layout.repeat_length + 1  # the token after the query's first occurrence
    row = result[query]
    others = [k for k in range(1, query - 1) if k != source]  # not BOS, self or q-1
    assert row[source] > 2 * row[others].max()
