"""How firmly the maps decide a matching of heads (analyses.diffing.matching_margin):
closed forms, a brute force over every permutation, and the ambiguous flag."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from headscope.analyses.diffing import AMBIGUOUS_MARGIN, match_heads, matching_margin
from headscope.errors import InputError


def test_distinct_heads_have_a_margin_of_two():
    # similarity 1 with the same head, 0 with the others: any matching that drops
    # the pair (i, i) must also drop another diagonal pair, losing 1 + 1.
    similarity = torch.eye(5, dtype=torch.float64)[None].repeat(2, 1, 1)
    matching, _ = match_heads(similarity)
    margin = matching_margin(similarity, matching)
    assert torch.equal(matching, torch.arange(5)[None].repeat(2, 1))
    np.testing.assert_allclose(margin.numpy(), 2.0, atol=1e-12)


def test_indistinguishable_heads_are_ambiguous():
    # every head of A correlates the same with each head of B: every matching ties
    row = torch.tensor([0.72, 0.94, 0.34, 0.35], dtype=torch.float64)
    similarity = row[None, None].repeat(1, 4, 1)
    matching, _ = match_heads(similarity)
    margin = matching_margin(similarity, matching)
    np.testing.assert_allclose(margin.numpy(), 0.0, atol=1e-12)
    assert bool((margin < AMBIGUOUS_MARGIN).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_margin_equals_a_brute_force_over_permutations(seed):
    generator = torch.Generator().manual_seed(seed)
    similarity = torch.rand(2, 5, 5, generator=generator, dtype=torch.float64) * 2 - 1
    matching, _ = match_heads(similarity)
    margin = matching_margin(similarity, matching)
    for layer in range(2):
        values = similarity[layer].numpy()
        totals = {
            perm: sum(values[i, perm[i]] for i in range(5))
            for perm in itertools.permutations(range(5))
        }
        best = max(totals.values())
        chosen = matching[layer].tolist()
        assert sum(values[i, chosen[i]] for i in range(5)) == pytest.approx(best, abs=1e-12)
        for head in range(5):
            others = max(t for p, t in totals.items() if p[head] != chosen[head])
            assert margin[layer, head] == pytest.approx(best - others, abs=1e-12)
            assert margin[layer, head] >= -1e-12


def test_one_head_has_no_alternative_and_bad_shapes_are_refused():
    similarity = torch.ones(3, 1, 1, dtype=torch.float64)
    matching, _ = match_heads(similarity)
    assert torch.isinf(matching_margin(similarity, matching)).all()
    # under pytest the shape checker answers first; without it, InputError does
    refused = (InputError, TypeCheckError)
    with pytest.raises(refused, match="matching|similarity"):
        matching_margin(torch.zeros(2, 3, 3), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(refused, match="similarity"):
        matching_margin(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
