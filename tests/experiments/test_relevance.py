"""Chefer et al. relevance on models: attention gradients equal autograd; the relevance
of toy-induction finds the induction source (the pure map is tested in tests/analyses)."""

from __future__ import annotations

import pytest
import torch

from headscope.errors import InputError
from headscope.experiments.relevance import attention_gradients, relevance


def random_pattern(layers, heads, n, seed=0, causal=True):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, n, n, generator=generator)
    if causal:
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1)


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
