"""Patching per (head, position) and the "activation" method of score_heads:
equal to a hand-written patch of one slice of z, identities that must hold
(positions of a last-layer head add up to the head; positions before the
first changed token restore nothing; attribution terms sum to attribution
patching), and the patching baseline's clean and corrupted ends."""

from __future__ import annotations

import pytest
import torch

from headscope.errors import InputError
from headscope.experiments.corruption import replace_repeat, swap_token
from headscope.experiments.metrics import logit_difference, next_token_loss, resolve_metric
from headscope.experiments.patching import (
    activation_patching,
    activation_patching_positions,
    attribution_patching,
    attribution_patching_positions,
)
from headscope.experiments.scoring import (
    ScoringPrompt,
    patching_baseline,
    position_patching,
    score_heads,
)
from headscope.probes.run import run
from headscope.probes.sites import Site

TOY = "red cat blue dog sun tree key pen milk ship red cat blue dog sun tree key pen milk ship"


@pytest.fixture(scope="module")
def toy_pair(toy_model):
    corrupted = replace_repeat(toy_model, TOY).text
    clean_batch, corrupted_batch = toy_model.tokenize(TOY), toy_model.tokenize(corrupted)
    # The second copy after its first word: the tokens induction predicts (by hand).
    targets = torch.zeros_like(clean_batch.ids, dtype=torch.bool)
    targets[0, 12:] = True
    metric = next_token_loss(targets, labels=clean_batch.ids)
    return corrupted, clean_batch, corrupted_batch, targets, metric


def _patched_by_hand(model, clean, corrupted, metric, layer, head, position):
    """One forward of the corrupted prompts with z[:, position, head] of one layer
    set to its clean value: the (M_patch − M_corr)/(M_clean − M_corr) of one cell."""
    bound = resolve_metric(model, metric, clean)
    site = Site(layer, "z")
    with torch.no_grad():
        clean_z = run(model, clean, read=[site])[site]

        def edit(z):
            z = z.clone()
            z[:, position, head] = clean_z[:, position, head].to(z)
            return z

        values = [
            bound(run(model, batch, edit=edits).output, batch).double().mean()
            for batch, edits in ((clean, {}), (corrupted, {}), (corrupted, {site: edit}))
        ]
    clean_value, corrupted_value, patched = values
    return float((patched - corrupted_value) / (clean_value - corrupted_value))


def test_position_patching_equals_patching_one_slice_by_hand(tiny_models):
    model = tiny_models["gpt2"]
    clean = model.tokenize(["t5 t6 t7 t8 t9", "t20 t21 t22 t23 t24"])
    corrupted = model.tokenize(["t5 t40 t7 t8 t9", "t20 t41 t22 t23 t24"])
    metric = logit_difference([10, 11], [12, 13])
    heads = [(0, 1), (1, 2)]
    got = activation_patching_positions(model, clean, corrupted, metric, heads, batch_size=3)
    assert got.shape == (2, clean.length) and got.dtype == torch.float64
    for row, (layer, head) in enumerate(heads):
        for position in range(clean.length):
            expected = _patched_by_hand(model, clean, corrupted, metric, layer, head, position)
            assert abs(got[row, position].item() - expected) < 1e-5


def test_last_layer_positions_add_up_to_the_head(toy_model, toy_pair):
    _, clean, corrupted, targets, metric = toy_pair
    heads = [(layer, head) for layer in range(2) for head in range(4)]
    per_position = activation_patching_positions(toy_model, clean, corrupted, metric, heads)
    whole = activation_patching(toy_model, clean, corrupted, metric)
    for row, (layer, head) in enumerate(heads):
        values = per_position[row]
        # Before the first changed token (11) clean and corrupted z are equal: nothing to restore.
        assert values[:11].abs().max() < 1e-9
        if layer == 1:
            # A last-layer head changes only its own position's logits, and the loss is a
            # sum over positions: its positions add up; unscored positions give 0.
            assert abs(values.sum().item() - whole[1, head].item()) < 1e-5
            scored = [*targets[0, 1:].tolist(), False]  # position p predicts token p + 1
            unscored = [p for p, s in enumerate(scored) if not s]
            assert values[unscored].abs().max() < 1e-9


def test_attribution_positions_sum_to_attribution_patching(toy_model, toy_pair):
    _, clean, corrupted, _, metric = toy_pair
    grid = attribution_patching_positions(toy_model, clean, corrupted, metric)
    assert grid.shape == (2, 4, clean.length)
    total = attribution_patching(toy_model, clean, corrupted, metric)
    assert torch.allclose(grid.sum(-1), total, atol=1e-12)
    assert grid[..., :11].abs().max() < 1e-12


def test_score_heads_activation_equals_activation_patching(toy_model, toy_pair):
    corrupted, clean, corrupted_batch, _, metric = toy_pair
    prompt = ScoringPrompt(TOY, corrupted=corrupted)
    scores = score_heads(toy_model, [prompt], ["activation", "attribution"], "loss", "repeats")
    expected = activation_patching(toy_model, clean, corrupted_batch, metric)
    assert torch.allclose(scores.mean("activation"), expected, atol=1e-9)
    expected = attribution_patching(toy_model, clean, corrupted_batch, metric)
    assert torch.allclose(scores.mean("attribution"), expected, atol=1e-9)
    assert scores.target_tokens == (9,)
    with pytest.raises(InputError, match="'activation' needs a 'corrupted' prompt"):
        score_heads(toy_model, [TOY], ["activation"])


def test_position_patching_through_scoring(toy_model, toy_pair):
    corrupted, clean, corrupted_batch, _, metric = toy_pair
    prompt = ScoringPrompt(TOY, corrupted=corrupted)
    heads = [(1, 3), (0, 2)]
    got = position_patching(toy_model, prompt, heads, "activation", "loss", "repeats")
    expected = activation_patching_positions(toy_model, clean, corrupted_batch, metric, heads)
    assert torch.allclose(got.scores, expected, atol=1e-9)
    assert got.clean_tokens == clean.tokens[0] and got.heads == tuple(heads)
    first = position_patching(toy_model, prompt, heads, "attribution", "loss", "repeats")
    grid = attribution_patching_positions(toy_model, clean, corrupted_batch, metric)
    assert torch.allclose(first.scores, torch.stack([grid[1, 3], grid[0, 2]]), atol=1e-12)


def test_patching_baseline_ends_and_a_corruption_without_gap(toy_model, toy_pair):
    corrupted, clean, corrupted_batch, _, metric = toy_pair
    baseline = patching_baseline(toy_model, [ScoringPrompt(TOY, corrupted=corrupted)])
    bound = resolve_metric(toy_model, metric, clean)
    with torch.no_grad():
        clean_value = bound(run(toy_model, clean).output, clean).item()
        corrupted_value = bound(run(toy_model, corrupted_batch).output, corrupted_batch).item()
    assert abs(baseline.clean.item() - clean_value) < 1e-9
    assert abs(baseline.corrupted.item() - corrupted_value) < 1e-9
    assert baseline.corrupted.item() > baseline.clean.item() + 1.0  # induction broken
    assert baseline.without_gap == ()
    assert "9 scored tokens" in baseline.described
    # The last token changed: no logit before it sees it, and the loss scores the clean
    # token there, so the metric cannot change.
    last = swap_token(toy_model, TOY, 20).text
    flat = patching_baseline(toy_model, [ScoringPrompt(TOY, corrupted=last)])
    assert flat.without_gap == (0,)
    assert abs(flat.gap.item()) < 1e-9


def test_per_position_patching_refuses_bad_input(toy_model, toy_pair):
    _, clean, corrupted_batch, _, metric = toy_pair
    with pytest.raises(InputError, match="at least one head"):
        activation_patching_positions(toy_model, clean, corrupted_batch, metric, [])
    with pytest.raises(InputError, match="out of range"):
        activation_patching_positions(toy_model, clean, corrupted_batch, metric, [(2, 0)])
    with pytest.raises(InputError, match="one token length"):
        attribution_patching_positions(
            toy_model, ["red cat blue dog", "red cat"], ["red cat sun dog", "red sun"], "loss"
        )
    with pytest.raises(InputError, match="equal token"):
        patching_baseline(toy_model, [ScoringPrompt(TOY, corrupted="red cat")])
