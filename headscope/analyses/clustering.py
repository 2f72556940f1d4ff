"""Head clustering by the correlation of attention maps (docs/methods.md §2.12).

CHAI (Agarwal et al. 2024, "CHAI: Clustered Head Attention for Efficient LLM
Inference") observes that many heads of a layer attend alike, clusters them by
the correlation of their attention scores, picks the number of clusters at the
elbow of the within-cluster error, and keeps one head per cluster. Cross-layer
sharing of attention (the premise of cross-layer KV sharing) asks the same of
heads in different layers.

A head's *feature* is its attention map over a prompt set, flattened over the
entries `(prompt, query, key)` that a mask marks (the real, visible pairs: k ≤ q
in a causal model, every real pair in an encoder). Two heads' similarity is the
Pearson correlation of their features. Clustering is k-means on the
standardized features: for z-scored vectors `‖x_i − x_j‖² = 2F(1 − r_ij)`, so
the k-means objective, divided by F, is a function of the correlation matrix
alone, `W(C) = Σ_c (|c| − (1/|c|) Σ_{i,j∈c} r_ij)`, and Lloyd's iterations run
on the `[head, head]` matrix (kernel k-means with the kernel R). `W(1) = H(1 −
mean r)` and `W(H) = 0`; `errors[k − 1] = W(best partition into k) / H`, the
fraction of the standardized variance left within clusters.

The number of clusters is the elbow of that curve: the k farthest below the
chord from k = 1 to k = H (Satopää et al. 2011, "Finding a 'Kneedle' in a
Haystack"), k = 1 when every head is alike (`W(1)/H` below `ALIKE`), and the
elbow is called unclear when no point lies `CLEAR_ELBOW` below the chord.
Hierarchical clustering (`scipy.cluster.hierarchy`, average linkage on the
distance 1 − r) is the alternative.

Baseline: maps drawn at random on the same support (each visible row an
independent Dirichlet(1) draw, i.e. uniform on the simplex of its visible keys)
correlate above 0, because every row of every map sums to 1 over the same
number of keys. `random_map_correlation` gives that content-free correlation.

Invariants: correlations are symmetric with unit diagonal; permuting heads
permutes the labels and nothing else (the initialisations run from every head).
Memory: the features, layer·head·entry floats (entry = Σ_prompt visible pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from torch import Tensor

from headscope.errors import InputError

ClusterMethod = Literal["kmeans", "hierarchical"]
CLUSTER_METHODS: tuple[str, ...] = ("kmeans", "hierarchical")
#: Below this within-cluster error for one cluster (fraction of the variance) every head is alike.
ALIKE = 0.05
#: An elbow is clear when its point lies at least this far below the chord (fraction units).
CLEAR_ELBOW = 0.05
#: Lloyd iterations per start (each start converges in a few on a head × head matrix).
MAX_ITERATIONS = 100


@dataclass(frozen=True)
class LayerClusters:
    """One layer's clustering: `correlation` `[head, head]`, `labels` (cluster
    of each head, numbered in order of each cluster's lowest head), the chosen
    `k`, `errors[k − 1]` the within-cluster error for k clusters (fraction of
    the standardized variance, 1..H), whether the elbow was `clear`, the
    `method`, and for hierarchical clustering the scipy `linkage` matrix."""

    layer: int
    correlation: Float[Tensor, "head head"]
    labels: Int[Tensor, " head"]
    k: int
    errors: Float[Tensor, " k"]
    clear: bool
    method: str
    linkage: Float[Tensor, "merge 4"] | None = None

    @property
    def clusters(self) -> tuple[tuple[int, ...], ...]:
        """The clusters as sorted head tuples, in label order."""
        return tuple(
            tuple(int(h) for h in (self.labels == c).nonzero().flatten().tolist())
            for c in range(self.k)
        )

    @property
    def order(self) -> tuple[int, ...]:
        """Heads ordered cluster by cluster (for a block-diagonal heat map)."""
        return tuple(head for cluster in self.clusters for head in cluster)

    @property
    def mean_off_diagonal(self) -> float:
        """The mean correlation between distinct heads (NaN with one head)."""
        n = self.correlation.shape[0]
        if n < 2:
            return float("nan")
        off = self.correlation.sum() - self.correlation.diagonal().sum()
        return float(off / (n * (n - 1)))


@dataclass(frozen=True)
class HeadClusters:
    """Every layer's clustering, the cross-layer correlation
    `[layer, head, layer, head]`, the content-free `baseline` (mean correlation
    of random maps on the same support) and the support: prompts, queries and
    map entries behind each correlation."""

    layers: tuple[LayerClusters, ...]
    cross_layer: Float[Tensor, "layer head layer head"]
    baseline: float
    prompts: int
    queries: int
    entries: int

    @property
    def support(self) -> str:
        return (
            f"{self.prompts} prompts, {self.queries} queries, {self.entries} visible "
            "(query, key) pairs per head"
        )


def visible_pairs(
    attention_mask: Bool[Tensor, "prompt position"], *, causal: bool
) -> Bool[Tensor, "prompt query key"]:
    """The entries a head's feature uses: real query and real key, and k ≤ q
    when `causal` (right padding is never counted)."""
    mask = attention_mask[:, :, None] & attention_mask[:, None, :]
    if causal:
        n = attention_mask.shape[1]
        mask = mask & torch.ones(n, n, dtype=torch.bool).tril()
    return mask


def map_features(
    maps: Float[Tensor, "prompt layer head query key"],
    mask: Bool[Tensor, "prompt query key"],
) -> Float[Tensor, "layer head entry"]:
    """Each head's attention over the marked entries of every prompt,
    flattened (float64). InputError for a mask that marks nothing or maps that
    are not finite there."""
    if maps.shape[0] != mask.shape[0] or tuple(maps.shape[-2:]) != tuple(mask.shape[-2:]):
        raise InputError(
            f"maps {list(maps.shape)} and mask {list(mask.shape)} disagree on prompts or positions"
        )
    if not bool(mask.any()):
        raise InputError("the mask marks no (query, key) pair")
    features = maps.permute(1, 2, 0, 3, 4)[:, :, mask].double()
    if not bool(torch.isfinite(features).all()):
        raise InputError("the maps are not finite on the marked pairs (a head not captured?)")
    return features


def _correlation(features: Float[Tensor, "unit entry"]) -> Float[Tensor, "unit unit"]:
    centered = features - features.mean(-1, keepdim=True)
    norms = centered.norm(dim=-1)
    constant = norms <= 1e-12 * max(1.0, float(features.abs().max()))
    scaled = centered / torch.where(constant, torch.ones_like(norms), norms)[:, None]
    result = (scaled @ scaled.T).clamp(-1.0, 1.0)
    # A constant feature has no correlation with anything: 0 to others, 1 to itself.
    result[constant] = 0.0
    result[:, constant] = 0.0
    result.fill_diagonal_(1.0)
    return (result + result.T) / 2


def head_correlation(
    features: Float[Tensor, "layer head entry"],
) -> Float[Tensor, "layer head head"]:
    """Pearson correlation between the heads of each layer (symmetric, unit
    diagonal; a constant feature correlates 0 with the others)."""
    return torch.stack([_correlation(layer) for layer in features])


def cross_layer_correlation(
    features: Float[Tensor, "layer head entry"],
) -> Float[Tensor, "layer head layer head"]:
    """Pearson correlation between every pair of heads, across layers too."""
    n_layers, n_heads = features.shape[:2]
    flat = _correlation(features.reshape(n_layers * n_heads, -1))
    return flat.reshape(n_layers, n_heads, n_layers, n_heads)


def within_cluster_error(
    correlation: Float[Tensor, "head head"], labels: Int[Tensor, " head"]
) -> float:
    """The k-means objective of a partition on standardized features, over H:
    Σ_c (|c| − (1/|c|) Σ_{i,j∈c} r_ij) / H, in [0, 1 − mean r] (0: every cluster
    holds identical maps)."""
    total = 0.0
    for c in labels.unique().tolist():
        members = labels == c
        block = correlation[members][:, members]
        total += float(members.sum()) - float(block.sum()) / float(members.sum())
    return max(0.0, total / correlation.shape[0])


def _canonical(labels: Tensor) -> Tensor:
    """Relabel clusters in order of their lowest member."""
    mapping: dict[int, int] = {}
    out = torch.empty_like(labels)
    for i, label in enumerate(labels.tolist()):
        out[i] = mapping.setdefault(label, len(mapping))
    return out


def _lloyd(kernel: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Kernel k-means (Lloyd) from `labels`; a cluster that empties stays empty."""
    for _ in range(MAX_ITERATIONS):
        one_hot = np.eye(k)[labels]  # [head, k]
        sizes = one_hot.sum(0)
        present = sizes > 0
        sizes = np.where(present, sizes, 1.0)
        cross = kernel @ one_hot / sizes  # mean r to each cluster
        within = np.diag(one_hot.T @ kernel @ one_hot) / sizes**2
        distance = np.diag(kernel)[:, None] - 2 * cross + within[None, :]
        distance[:, ~present] = np.inf
        new = distance.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _hartigan(kernel: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Single-head moves that lower the exact objective (Hartigan & Wong 1979),
    until none does: Lloyd's fixed points are not always local optima of the
    objective, these are. A move never empties a cluster."""
    labels = labels.copy()
    one_hot = np.eye(k)[labels]
    sizes = one_hot.sum(0)
    to = kernel @ one_hot  # [head, k]: sum of r_ij over each cluster's members
    sums = np.einsum("ic,ic->c", one_hot, to)  # S_c = sum of r within c
    for _ in range(MAX_ITERATIONS):
        moved = False
        for i in range(len(labels)):
            a = labels[i]
            if sizes[a] <= 1:
                continue
            diagonal = kernel[i, i]
            sum_a = sums[a] - 2 * to[i, a] + diagonal
            sum_b = sums + 2 * to[i] + diagonal
            gain = sums[a] / sizes[a] - sum_a / (sizes[a] - 1)
            delta = gain + sums / np.maximum(sizes, 1) - sum_b / (sizes + 1)
            delta[a] = 0.0
            b = int(delta.argmin())
            if delta[b] < -1e-12:
                sums[a], sums[b] = sum_a, sum_b[b]
                sizes[a] -= 1
                sizes[b] += 1
                to[:, a] -= kernel[:, i]
                to[:, b] += kernel[:, i]
                labels[i] = b
                moved = True
        if not moved:
            break
    return labels


def _canonical_array(labels: np.ndarray) -> tuple[int, ...]:
    mapping: dict[int, int] = {}
    return tuple(mapping.setdefault(int(label), len(mapping)) for label in labels)


def _objective(kernel: np.ndarray, labels: tuple[int, ...], k: int) -> float:
    one_hot = np.eye(k)[list(labels)]
    sizes = one_hot.sum(0)
    sums = np.einsum("ic,ij,jc->c", one_hot, kernel, one_hot)
    return float(len(labels) - (sums / np.maximum(sizes, 1)).sum())


def kmeans_labels(
    correlation: Float[Tensor, "head head"], k: int, *, restarts: int = 16, seed: int = 0
) -> Int[Tensor, " head"]:
    """k-means on the standardized features, from the correlation matrix alone
    (kernel k-means: Lloyd's iterations, then single-head moves while they
    lower the objective). Started from every head (farthest-first traversal
    picks the other k − 1 seeds: the head least correlated with the seeds so
    far) and from `restarts` seeded random partitions; the partition with the
    lowest error wins (ties: the smallest canonical labels), so relabelling
    heads only relabels the result when the optimum is unique."""
    n = correlation.shape[0]
    if not 1 <= k <= n:
        raise InputError(f"k must be between 1 and the {n} heads, got {k}")
    kernel = correlation.double().numpy()
    starts = []
    for first in range(n):
        seeds = [first]
        while len(seeds) < k:
            nearest = kernel[:, seeds].max(1)
            nearest[seeds] = np.inf
            seeds.append(int(nearest.argmin()))
        labels = kernel[:, seeds].argmax(1)
        labels[seeds] = np.arange(k)
        starts.append(labels)
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
        starts.append(rng.permutation(labels))
    best: tuple[float, tuple[int, ...]] | None = None
    seen: set[tuple[int, ...]] = set()
    for labels in starts:
        lloyd = _lloyd(kernel, labels, k)
        if len(set(lloyd.tolist())) < k:  # Lloyd emptied a cluster (tied heads): moves only
            lloyd = labels
        canonical = _canonical_array(lloyd)
        if canonical in seen:  # many starts converge alike: move from each result once
            continue
        seen.add(canonical)
        fitted = _canonical_array(_hartigan(kernel, np.asarray(canonical), k))
        key = (round(_objective(kernel, fitted, k), 10), fitted)
        if best is None or key < best:
            best = key
    assert best is not None
    return torch.tensor(best[1], dtype=torch.long)


def hierarchical_linkage(correlation: Float[Tensor, "head head"]) -> Float[Tensor, "merge 4"]:
    """Average-linkage hierarchical clustering on the distance 1 − r
    (`scipy.cluster.hierarchy.linkage`), as scipy's `[merge, 4]` matrix."""
    distance = (1.0 - correlation.double()).clamp(min=0.0).numpy().copy()
    np.fill_diagonal(distance, 0.0)
    condensed = squareform((distance + distance.T) / 2, checks=False)
    return torch.from_numpy(hierarchy.linkage(condensed, method="average"))


def hierarchical_labels(linkage: Float[Tensor, "merge 4"], k: int) -> Int[Tensor, " head"]:
    """The partition into (at most) k clusters cut from a linkage matrix."""
    labels = hierarchy.fcluster(linkage.numpy(), t=k, criterion="maxclust")
    return _canonical(torch.as_tensor(labels, dtype=torch.long))


def elbow(errors: Float[Tensor, " k"]) -> tuple[int, bool]:
    """(k, clear) at the elbow of `errors[k − 1]`, k = 1..K: the point farthest
    below the chord from k = 1 to k = K (Satopää et al. 2011). k = 1 when
    `errors[0] < ALIKE` (every head alike); `clear` is False when no point lies
    `CLEAR_ELBOW` below the chord (no cluster structure to speak of)."""
    values = errors.double()
    n = values.numel()
    if n == 0:
        raise InputError("no errors to find an elbow in")
    if float(values[0]) < ALIKE:
        return 1, True
    if n < 3:
        return n, False
    ks = torch.arange(n, dtype=torch.float64)
    chord = values[0] + (values[-1] - values[0]) * ks / (n - 1)
    below = chord - values
    k = int(below.argmax()) + 1
    return k, bool(float(below.max()) >= CLEAR_ELBOW)


def cluster_layer(
    correlation: Float[Tensor, "head head"],
    *,
    layer: int = 0,
    method: ClusterMethod = "kmeans",
    k: int | None = None,
) -> LayerClusters:
    """Cluster one layer's heads from their correlation matrix: every k from 1
    to H is fitted (its error feeds the elbow), then `k` (default: the elbow's)
    is kept. Cost: for each k, H + 16 starts of Lloyd steps and single-head
    moves on the H × H matrix (about 0.1 s a layer at H = 12, 1.2 s at H = 32)."""
    if method not in CLUSTER_METHODS:
        raise InputError(f"unknown clustering method {method!r}; choose from {CLUSTER_METHODS}")
    n = correlation.shape[0]
    if k is not None and not 1 <= k <= n:
        raise InputError(f"k must be between 1 and the {n} heads of a layer, got {k}")
    linkage = hierarchical_linkage(correlation) if method == "hierarchical" and n > 1 else None
    partitions = []
    for size in range(1, n + 1):
        if size == 1:
            partitions.append(torch.zeros(n, dtype=torch.long))
        elif linkage is not None:
            partitions.append(hierarchical_labels(linkage, size))
        else:
            partitions.append(kmeans_labels(correlation, size))
    errors = torch.tensor([within_cluster_error(correlation, p) for p in partitions])
    chosen, clear = elbow(errors)
    if k is not None:
        chosen, clear = k, True
    labels = partitions[chosen - 1]
    return LayerClusters(
        layer=layer,
        correlation=correlation.double(),
        labels=labels,
        k=int(labels.max()) + 1,
        errors=errors,
        clear=clear,
        method=method,
        linkage=linkage,
    )


def random_map_correlation(
    mask: Bool[Tensor, "prompt query key"], *, draws: int = 8, seed: int = 0
) -> float:
    """The content-free baseline: the mean Pearson correlation between pairs
    of independent random maps on the support `mask`, each visible row drawn
    uniformly from its simplex (Dirichlet(1): normalized Exp(1) weights).
    Positive for causal masks, since short rows carry large weights in every
    map. Seeded. Memory: two maps, 2·prompt·query·key floats."""
    if draws < 1:
        raise InputError(f"draws must be >= 1, got {draws}")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(draws):
        pair = []
        for _ in range(2):
            weights = -torch.log(torch.rand(mask.shape, generator=generator, dtype=torch.float64))
            weights = torch.where(mask, weights, torch.zeros_like(weights))
            sums = weights.sum(-1, keepdim=True)
            pair.append((weights / torch.where(sums > 0, sums, torch.ones_like(sums)))[mask])
        values.append(float(_correlation(torch.stack(pair))[0, 1]))
    return float(np.mean(values))


def cluster_heads(
    maps: Float[Tensor, "prompt layer head query key"],
    mask: Bool[Tensor, "prompt query key"],
    *,
    method: ClusterMethod = "kmeans",
    k: int | None = None,
    seed: int = 0,
) -> HeadClusters:
    """Per-layer clusters of heads with correlated maps, the cross-layer
    correlation and the random-map baseline, over the entries `mask` marks
    (see `visible_pairs`). `k` fixes the number of clusters of every layer
    (default: each layer's elbow)."""
    features = map_features(maps, mask)
    per_layer = head_correlation(features)
    layers = tuple(
        cluster_layer(correlation, layer=i, method=method, k=k)
        for i, correlation in enumerate(per_layer)
    )
    queries = int(mask.any(-1).sum())
    return HeadClusters(
        layers=layers,
        cross_layer=cross_layer_correlation(features),
        baseline=random_map_correlation(mask, seed=seed),
        prompts=int(mask.shape[0]),
        queries=queries,
        entries=int(mask.sum()),
    )
