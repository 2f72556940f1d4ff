"""Head redundancy (experiments.redundancy, docs/methods.md §2.12) on the built-in models:
toy-induction's two induction heads cluster together, and ablating one costs less than
ablating both; the ablation numbers equal gates applied by hand."""

from __future__ import annotations

import math
import time

import pytest
import torch

import headscope as hs
from headscope.errors import InputError
from headscope.experiments.metrics import next_token_loss, resolve_metric
from headscope.experiments.redundancy import capture_maps, redundancy
from headscope.experiments.targets import repeated_tokens
from headscope.models.induction_data import repeated_random_batch
from headscope.models.toy_training import WORD_RANGE


def card_prompts(model, n: int = 64) -> list[str]:
    """The model card's evaluation set as text: [r_1..r_20, r_1..r_20], seed 1234 (the
    tokenizer prepends <bos>)."""
    ids, _ = repeated_random_batch(
        n, 20, vocab=WORD_RANGE, bos_id=None, generator=torch.Generator().manual_seed(1234)
    )
    return [" ".join(model.tokenizer.convert_ids_to_tokens(row.tolist())) for row in ids]


@pytest.fixture(scope="module")
def toy_redundancy(toy_model):
    return redundancy(toy_model, card_prompts(toy_model))


def _by_hand(model, prompts, heads):
    """Mean loss over the repeated tokens with `heads` zeroed by gate_heads, one forward."""
    batch = model.tokenize(prompts)
    targets = torch.zeros(batch.ids.shape, dtype=torch.bool)
    for i, length in enumerate(batch.lengths):
        targets[i, :length] = torch.tensor(repeated_tokens(batch.ids[i, :length].tolist()))
    metric = resolve_metric(model, next_token_loss(targets), batch)
    gates = torch.ones(model.spec.n_layers, model.spec.n_heads)
    for layer, head in heads:
        gates[layer, head] = 0
    with torch.no_grad(), hs.gate_heads(model, gates):
        return metric(model.forward(batch), batch).double()


def test_the_two_induction_heads_cluster_together(toy_redundancy, circuit):
    assert len(circuit.induction_heads) == 2  # 1.0 and 1.3 (model card)
    layer = toy_redundancy.clusters.layers[1]
    heads = sorted(h for _, h in circuit.induction_heads)
    assert any(set(heads) <= set(cluster) for cluster in layer.clusters)
    # they attend alike far above what random maps on the same support share
    assert layer.correlation[heads[0], heads[1]] > 0.9 > toy_redundancy.clusters.baseline + 0.3
    cross = toy_redundancy.clusters.cross_layer
    assert torch.allclose(cross[1, :, 1, :], layer.correlation)


def test_ablating_one_induction_head_costs_less_than_ablating_both(toy_redundancy, circuit):
    heads = sorted(circuit.induction_heads)
    check = toy_redundancy.ablation_of(*heads[0])
    assert check is not None and set(check.heads) == {h for _, h in heads}
    single, whole = check.single_interval(), check.whole_interval()
    assert toy_redundancy.metric.name == "loss" and check.sign == 1.0
    # each head alone hurts (the loss rises), both together hurt more, beyond the intervals
    assert bool((single.low > 0).all())
    assert float(whole.low[0]) > float(single.high.max())
    # both heads out sends the repeated tokens back to chance (log 61)
    assert float(check.whole.mean()) > 0.8 * math.log(61)


def test_the_ablation_numbers_equal_gates_applied_by_hand(toy_model, toy_redundancy, circuit):
    prompts = card_prompts(toy_model)
    heads = sorted(circuit.induction_heads)
    check = toy_redundancy.ablation_of(*heads[0])
    assert check is not None
    clean = _by_hand(toy_model, prompts, [])
    assert torch.allclose(check.clean, clean, atol=1e-5)
    for m, head in enumerate(check.heads):
        assert torch.allclose(check.single[m], _by_hand(toy_model, prompts, [(1, head)]), atol=1e-5)
    both = _by_hand(toy_model, prompts, [(1, h) for h in check.heads])
    assert torch.allclose(check.whole, both, atol=1e-5)
    assert toy_redundancy.target_tokens == tuple(
        sum(repeated_tokens(row)) for row in toy_model.tokenize(prompts).ids.tolist()
    )


def test_mean_ablation_and_hierarchical_clustering_find_the_same_pair(toy_model, circuit):
    prompts = card_prompts(toy_model, 16)
    result = redundancy(toy_model, prompts, method="hierarchical", mode="mean")
    heads = sorted(h for _, h in circuit.induction_heads)
    assert any(set(heads) <= set(c) for c in result.clusters.layers[1].clusters)
    check = result.ablation_of(1, heads[0])
    assert check is not None
    assert float(check.whole_harm.mean()) > float(check.single_harm.mean(1).max())


def test_minilm_clusters_and_checks_in_seconds(minilm_model):
    sentences = [
        "The cat sat on the mat.",
        "A man is playing a guitar.",
        "Stocks fell after the bank raised rates.",
        "The children are playing in the park.",
    ]
    start = time.perf_counter()
    result = redundancy(minilm_model, sentences)
    elapsed = time.perf_counter() - start
    assert result.metric.name == "embedding_cosine"
    assert len(result.clusters.layers) == 6
    assert all(layer.correlation.shape == (12, 12) for layer in result.clusters.layers)
    assert all(1 <= layer.k <= 12 for layer in result.clusters.layers)
    # an encoder's maps are not causal: random maps on its support barely correlate
    assert abs(result.clusters.baseline) < 0.1
    # the cosine to the unablated embedding is 1 at best: ablating never "helps"
    for check in result.ablations:
        assert bool((check.whole_harm > -1e-6).all())
    assert elapsed < 60  # a page can afford it (timings live in benchmarks/)


def test_capture_maps_masks_padding(toy_model):
    record, mask = capture_maps(toy_model, ["red cat blue dog", "red cat"])
    assert record.pattern.shape[:3] == (2, 2, 4)
    assert int(mask[1].sum()) == 6  # <bos> red cat: 3 queries, 1 + 2 + 3 visible keys


def test_bad_options_raise_input_error(toy_model):
    with pytest.raises(InputError):
        redundancy(toy_model, [])
    with pytest.raises(InputError):
        redundancy(toy_model, ["red cat red cat"], mode="resample")
    with pytest.raises(InputError):
        redundancy(toy_model, ["red cat red cat"], min_size=1)
    with pytest.raises(InputError, match="fewer or shorter prompts"):
        redundancy(toy_model, ["red cat red cat"] * 4, max_map_entries=4 * 5**2 * 8 - 1)
