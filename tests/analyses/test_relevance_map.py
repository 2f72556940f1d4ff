"""Chefer et al. relevance from patterns and gradients (docs/methods.md §1.3): the closed
form with unit gradients, clamping before the head mean, input checks."""

from __future__ import annotations

import pytest
import torch

from headscope.analyses.relevance import relevance_from_gradients
from headscope.errors import InputError


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


def test_inputs_are_not_mutated_and_bad_input_is_rejected(unchecked):
    pattern = random_pattern(2, 2, 5)
    gradient = torch.randn_like(pattern)
    before = (pattern.clone(), gradient.clone())
    relevance_from_gradients(pattern, gradient)
    assert torch.equal(pattern, before[0]) and torch.equal(gradient, before[1])
    with pytest.raises(InputError, match="differs"), unchecked():
        relevance_from_gradients(pattern, gradient[..., :4])
    with pytest.raises(InputError, match="NaN"):
        relevance_from_gradients(pattern, gradient.masked_fill(gradient > 1, float("nan")))
    with pytest.raises(InputError, match="row-stochastic"):
        relevance_from_gradients(pattern * 2, gradient)
