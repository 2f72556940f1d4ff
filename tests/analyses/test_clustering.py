"""Head clustering (analyses.clustering, docs/methods.md §2.12): constructed maps whose
cluster structure is known, checked against identities that must hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headscope.analyses import clustering
from headscope.errors import InputError


def _softmax_maps(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def two_patterns(
    *, prompts: int = 4, n: int = 12, noise: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps [prompt, 1, 4, n, n]: heads 0 and 2 are noisy copies of one random
    pattern, heads 1 and 3 of another; causal, no padding."""
    g = torch.Generator().manual_seed(seed)
    mask = clustering.visible_pairs(torch.ones(prompts, n, dtype=torch.bool), causal=True)
    base = [3 * torch.randn(prompts, n, n, generator=g, dtype=torch.float64) for _ in range(2)]
    heads = []
    for head in range(4):
        scores = base[head % 2] + noise * torch.randn(
            prompts, n, n, generator=g, dtype=torch.float64
        )
        heads.append(_softmax_maps(scores, mask))
    return torch.stack(heads, 1)[:, None], mask


def test_two_noisy_patterns_give_two_clusters_at_the_elbow() -> None:
    maps, mask = two_patterns()
    result = clustering.cluster_heads(maps, mask)
    layer = result.layers[0]
    assert layer.k == 2 and layer.clear
    assert set(layer.clusters) == {(0, 2), (1, 3)}
    assert layer.errors[0] > layer.errors[1] and float(layer.errors[-1]) == pytest.approx(
        0, abs=1e-9
    )
    hier = clustering.cluster_heads(maps, mask, method="hierarchical").layers[0]
    assert set(hier.clusters) == {(0, 2), (1, 3)} and hier.linkage is not None


def test_correlation_is_pearson_symmetric_with_unit_diagonal() -> None:
    maps, mask = two_patterns(seed=3)
    features = clustering.map_features(maps, mask)
    correlation = clustering.head_correlation(features)[0]
    assert torch.allclose(correlation, correlation.T)
    assert torch.allclose(correlation.diagonal(), torch.ones(4, dtype=torch.float64))
    reference = np.corrcoef(features[0].numpy())
    assert np.allclose(correlation.numpy(), reference, atol=1e-10)
    cross = clustering.cross_layer_correlation(features)
    assert torch.allclose(cross[0, :, 0, :], correlation)


def test_permuting_heads_permutes_labels_only() -> None:
    maps, mask = two_patterns(seed=5)
    first = clustering.cluster_heads(maps, mask).layers[0]
    permutation = torch.tensor([3, 0, 2, 1])
    second = clustering.cluster_heads(maps[:, :, permutation], mask).layers[0]
    assert second.k == first.k
    assert torch.allclose(second.errors, first.errors, atol=1e-9)
    # head i of the permuted set is head permutation[i] of the original
    mapped = {tuple(sorted(int(permutation[i]) for i in c)) for c in second.clusters}
    assert mapped == set(first.clusters)
    assert torch.allclose(second.correlation, first.correlation[permutation][:, permutation])


def test_within_cluster_error_equals_kmeans_objective_on_standardized_features() -> None:
    maps, mask = two_patterns(seed=7, noise=1.0)
    features = clustering.map_features(maps, mask)[0]
    z = (features - features.mean(1, keepdim=True)) / features.std(1, unbiased=False, keepdim=True)
    correlation = clustering.head_correlation(features[None])[0]
    labels = torch.tensor([0, 1, 0, 0])
    direct = 0.0
    for c in (0, 1):
        members = z[labels == c]
        direct += float(((members - members.mean(0)) ** 2).sum())
    direct /= z.shape[1] * z.shape[0]
    assert clustering.within_cluster_error(correlation, labels) == pytest.approx(direct, rel=1e-9)


def test_kmeans_finds_the_exhaustive_optimum() -> None:
    g = torch.Generator().manual_seed(11)
    features = torch.randn(7, 40, generator=g, dtype=torch.float64)
    features[3] += features[0]
    features[5] += 2 * features[1]
    correlation = clustering.head_correlation(features[None])[0]
    for k in (2, 3):
        labels = clustering.kmeans_labels(correlation, k)
        best = min(
            clustering.within_cluster_error(correlation, torch.tensor(assign))
            for assign in np.ndindex(*([k] * 7))
            if len(set(assign)) == k
        )
        assert clustering.within_cluster_error(correlation, labels) == pytest.approx(best, abs=1e-9)


def test_identical_heads_form_one_cluster_and_independent_heads_show_no_clear_elbow() -> None:
    maps, mask = two_patterns(noise=0.0)
    same = maps[:, :, [0, 0, 0, 0]]
    assert clustering.cluster_heads(same, mask).layers[0].k == 1
    g = torch.Generator().manual_seed(2)
    scores = 3 * torch.randn(4, 1, 6, 12, 12, generator=g, dtype=torch.float64)
    causal = clustering.cluster_heads(_softmax_maps(scores, mask[:, None, None]), mask).layers[0]
    assert not causal.clear
    # Independent maps still correlate under a causal mask (short rows weigh alike), not
    # without one.
    both = torch.ones_like(mask)
    free = clustering.cluster_heads(_softmax_maps(scores, both[:, None, None]), both).layers[0]
    assert not free.clear
    assert abs(free.mean_off_diagonal) < 0.05 < causal.mean_off_diagonal


def test_random_map_baseline_is_positive_on_a_causal_mask_and_near_zero_bidirectional() -> None:
    lengths = torch.ones(3, 16, dtype=torch.bool)
    causal = clustering.random_map_correlation(clustering.visible_pairs(lengths, causal=True))
    both = clustering.random_map_correlation(clustering.visible_pairs(lengths, causal=False))
    assert causal > 0.3  # short rows put large weights on the same entries in every map
    assert abs(both) < 0.05
    assert causal == clustering.random_map_correlation(
        clustering.visible_pairs(lengths, causal=True)
    )


def test_padding_is_not_counted() -> None:
    attention = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    mask = clustering.visible_pairs(attention, causal=True)
    assert int(mask[1].sum()) == 6 and int(mask[0].sum()) == 15
    maps, _ = two_patterns(prompts=2, n=5)
    padded = maps.clone()
    padded[1, ..., 3:, :] = float("nan")  # padded queries never enter the features
    padded[1, ..., :, 3:] = float("nan")
    assert clustering.map_features(padded, mask).shape == (1, 4, 21)


def test_bad_inputs_raise_input_error(unchecked) -> None:
    maps, mask = two_patterns()
    with pytest.raises(InputError):
        clustering.map_features(maps, torch.zeros_like(mask))
    correlation = clustering.head_correlation(clustering.map_features(maps, mask))[0]
    with pytest.raises(InputError):
        clustering.kmeans_labels(correlation, 5)
    with pytest.raises(InputError), unchecked():
        clustering.cluster_layer(correlation, method="spectral")  # type: ignore[arg-type]
