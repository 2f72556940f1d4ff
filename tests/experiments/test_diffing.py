"""Model diffing (docs/methods.md §2.14): deltas with intervals, label changes,
and heads matched by map similarity, on known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headscope as hs
from headscope.analyses.diffing import map_similarity, match_heads, score_deltas
from headscope.errors import InputError
from headscope.experiments.diffing import diff_models
from headscope.experiments.dynamics import repeat_prompts
from headscope.figures.dynamics import diff_heatmap, similarity_heatmap
from headscope.models.zoo import BUILTINS

PROMPTS = repeat_prompts(8, 8, seed=5)
D_HEAD = 32


@pytest.fixture(scope="module")
def series():
    return hs.load_checkpoints("toy-induction")


def permuted_toy(directory, permutations: dict[int, list[int]]):
    """toy-induction with the heads of some layers permuted: new head j is old
    head perm[j] (rows of W_Q, W_K, W_V and columns of W_O move together), so
    the function is unchanged and only the head indices differ."""
    from transformers import LlamaForCausalLM

    source = BUILTINS["toy-induction"].path()
    model = LlamaForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for layer, perm in permutations.items():
            attention = model.model.layers[layer].self_attn
            rows = torch.cat([torch.arange(h * D_HEAD, (h + 1) * D_HEAD) for h in perm])
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                projection.weight.copy_(projection.weight[rows])
            attention.o_proj.weight.copy_(attention.o_proj.weight[:, rows])
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((source / name).read_bytes())
    return hs.load_model(directory)


def test_a_model_diffed_with_itself_changes_nothing(toy_model):
    diff = diff_models(toy_model, toy_model, PROMPTS)
    for key, delta in diff.deltas.items():
        finite = torch.isfinite(delta.mean)
        assert bool((delta.mean[finite] == 0).all()), key
        assert bool((delta.low[finite] == 0).all() and (delta.high[finite] == 0).all()), key
        assert not bool(delta.significant.any()), key
    assert diff.identity_matched
    assert torch.allclose(diff.matched_similarity, torch.ones(2, 4))
    assert not bool(diff.label_changed.any())
    assert "importance" in diff.deltas and diff.prompts == len(PROMPTS)
    # the two <bos>-sink heads attend alike (r ~ 0.999): the maps cannot tell which
    # is which, so their pairs are ambiguous; the previous-token head 0.2 is unique
    assert bool(diff.ambiguous[1, 1]) and bool(diff.ambiguous[1, 2])
    assert not bool(diff.ambiguous[0, 2])
    swap = 2 - 2 * float(diff.similarity[1, 1, 2])  # closed form of the 1.1 <-> 1.2 swap
    assert float(diff.matching_margin[1, 1]) == pytest.approx(swap, abs=1e-9)


def test_first_against_last_checkpoint(series):
    diff = diff_models(series.load(0), series.load(3000), PROMPTS)
    induction = diff.deltas["induction"]
    # head 1.3 became an induction head: its delta's interval excludes 0
    assert float(induction.low[1, 3]) > 0.5
    assert bool(induction.significant[1, 3])
    assert diff.labels_b[1][3] == "induction" and diff.labels_a[1][3] != "induction"
    assert bool(diff.label_changed[1, 3])
    assert float(diff.deltas["importance"].low[1, 3]) > 1.0
    # the delta is the difference of the two models' mean scores
    expected = diff.scores_b["induction"] - diff.scores_a["induction"]
    assert torch.allclose(induction.mean.float(), expected, atol=1e-5)


def test_matching_recovers_a_permutation_of_heads(toy_model, tmp_path):
    perm = {0: [2, 0, 3, 1], 1: [3, 2, 0, 1]}
    permuted = permuted_toy(tmp_path / "permuted", perm)
    batch = toy_model.tokenize(PROMPTS[0])
    with torch.no_grad():
        same = toy_model.forward(batch).logits, permuted.forward(batch).logits
    assert torch.allclose(*same, atol=1e-4)  # the function is unchanged
    diff = diff_models(toy_model, permuted, PROMPTS)
    for layer, order in perm.items():
        # old head h of A is new head order.index(h) of B
        expected = [order.index(h) for h in range(4)]
        assert diff.matching[layer].tolist() == expected
        assert torch.allclose(diff.matched_similarity[layer], torch.ones(4), atol=1e-4)
    # unmatched, the heads look changed: B's head 1.2 is A's induction head 1.0,
    # where A has a sink head
    assert float(diff.deltas["induction"].low[1, 2]) > 0.5
    assert diff.labels_b[1][2] == diff.labels_a[1][0] == "induction"
    assert diff.labels_a[1][2] != "induction" and bool(diff.label_changed[1, 2])
    with pytest.raises(InputError):
        diff_heatmap(diff, "no-such-score")
    figure = similarity_heatmap(diff, 1)
    outlined = {(round(s.y0 + 0.5), round(s.x0 + 0.5)) for s in figure.layout.shapes}
    assert outlined == {(h, perm[1].index(h)) for h in range(4)}


def test_map_similarity_is_pearson_over_visible_entries():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 2, 3, 6, 6, generator=generator)
    causal = torch.ones(6, 6).tril().bool()
    lengths = torch.tensor([6, 4, 5])
    a = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    b = (
        (scores + torch.randn(scores.shape, generator=generator))
        .masked_fill(~causal, -1e9)
        .softmax(-1)
    )
    similarity = map_similarity(a, b, lengths)
    for layer in range(2):
        for i in range(3):
            for j in range(3):
                xs, ys = [], []
                for prompt, n in enumerate(lengths.tolist()):
                    for q in range(n):
                        for k in range(q + 1):
                            xs.append(float(a[prompt, layer, i, q, k]))
                            ys.append(float(b[prompt, layer, j, q, k]))
                expected = np.corrcoef(xs, ys)[0, 1]
                assert float(similarity[layer, i, j]) == pytest.approx(expected, abs=1e-6)


def test_match_heads_and_score_deltas_on_small_cases():
    base = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.2, 0.3, 0.7]])
    order = [2, 0, 1]
    matching, matched = match_heads(base[:, order][None])
    assert matching[0].tolist() == [1, 2, 0]
    assert torch.allclose(matched[0], torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64))
    # a greedy pick would take (0, 0) = 0.6 first and lose; the optimum does not
    tricky = torch.tensor([[0.6, 0.5], [0.55, 0.0]])
    assert match_heads(tricky[None])[0][0].tolist() == [1, 0]
    a = {"x": torch.zeros(4, 1, 2), "y": torch.zeros(4, 1, 2)}
    b = {"x": torch.ones(4, 1, 2), "y": torch.ones(4, 1, 2)}
    b["y"][0] = float("nan")  # undefined on one prompt: left out of that key only
    deltas = score_deltas(a, b)
    assert deltas["x"].n == 4 and deltas["y"].n == 3
    assert torch.allclose(deltas["y"].mean, torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(InputError):
        score_deltas({"x": torch.zeros(2, 1, 2)}, {"x": torch.zeros(3, 1, 2)})
