# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Head clusters and redundancy
#
# CHAI (Agarwal et al. 2024, *CHAI: Clustered Head Attention for Efficient LLM
# Inference*) finds that many heads of a layer attend alike: it clusters them by the
# correlation of their attention scores, picks the number of clusters at the elbow of the
# within-cluster error, and serves each cluster with one head. Here:
#
# 1. every head's maps over a prompt set are flattened over the visible (query, key)
#    pairs and correlated (Pearson r), against the correlation that random maps on the
#    same pairs share (the content-free baseline);
# 2. each layer's heads are clustered (k-means on the standardized maps, k at the elbow;
#    hierarchical as an option);
# 3. heads of different layers are compared too (cross-layer similarity, the premise of
#    cross-layer KV sharing);
# 4. each cluster is checked by ablation: one head alone vs the whole cluster.
#
# toy-induction has two induction heads, 1.0 and 1.3: they should share a cluster, and
# ablating one should cost less than ablating both.

# %%
import warnings

import plotly.io as pio
import torch

import headscope as hs
from headscope.experiments.redundancy import redundancy
from headscope.figures import clusters as cluster_figures
from headscope.models.induction_data import repeated_random_batch

pio.renderers.default = "plotly_mimetype"  # figures as JSON: no browser, no CDN
warnings.filterwarnings("ignore", message="IProgress not found")

model = hs.load_model("toy-induction")
specials = set(model.tokenizer.all_special_ids)
vocab = (max(specials) + 1, model.spec.d_vocab)  # the 61 words

# %% [markdown]
# ## 1. A prompt set the induction heads work on
#
# 32 sequences `r_1..r_20 r_1..r_20` of random words (the tokenizer prepends `<bos>`).
# The loss scores the "repeats" (tokens whose preceding bigram occurred earlier: the second
# copy), the tokens only induction can predict.

# %%
ids, _ = repeated_random_batch(
    32, 20, vocab=vocab, bos_id=None, generator=torch.Generator().manual_seed(1234)
)
prompts = [" ".join(model.tokenizer.convert_ids_to_tokens(row.tolist())) for row in ids]
result = redundancy(model, prompts)
clusters = result.clusters
print(clusters.support)
print(f"baseline: random maps on the same pairs correlate r = {clusters.baseline:.3f}")
for layer in clusters.layers:
    print(
        f"layer {layer.layer}: k = {layer.k} ({'clear' if layer.clear else 'no clear'} elbow), "
        f"clusters {layer.clusters}, mean r between heads {layer.mean_off_diagonal:.3f}"
    )

# %% [markdown]
# ## 2. Correlation within a layer, ordered by cluster
#
# Layer 1: the two induction heads correlate far above the baseline; the two heads that
# park their attention on `<bos>` (1.1, 1.2) form the other cluster.

# %%
layer1 = clusters.layers[1]
print(layer1.correlation.numpy().round(3))
assert any({0, 3} <= set(c) for c in layer1.clusters)
assert layer1.correlation[0, 3] > clusters.baseline + 0.3
cluster_figures.correlation_heatmap(layer1, baseline=clusters.baseline, support=clusters.support)

# %% [markdown]
# ## 3. The elbow
#
# `errors[k − 1]` is the k-means objective on the standardized maps, as a fraction of
# their variance; the chosen k (diamond) is the point farthest below the chord from k = 1
# to k = H (Satopää et al. 2011).

# %%
cluster_figures.elbow_figure(clusters.layers)

# %% [markdown]
# ## 4. Across layers
#
# Every head against every head. Off the diagonal blocks: heads of different layers that
# attend alike.

# %%
cluster_figures.cross_layer_heatmap(
    clusters.cross_layer, baseline=clusters.baseline, support=clusters.support
)

# %% [markdown]
# ## 5. The ablation check: one head vs the whole cluster
#
# Harm = loss with the heads' z zeroed − clean loss (nats, on the repeats), mean over the
# 32 prompts with a 95% percentile-bootstrap interval.

# %%
print(result.described)
print(f"clean loss {float(result.clean.mean()):.3f}")
for check in result.ablations:
    single, whole = check.single_interval(), check.whole_interval()
    alone = ", ".join(
        f"{check.layer}.{h}: {float(m):+.3f} [{float(lo):+.3f}, {float(hi):+.3f}]"
        for h, m, lo, hi in zip(check.heads, single.mean, single.low, single.high, strict=True)
    )
    print(
        f"{check.name}: alone {alone}; whole {float(whole.mean[0]):+.3f} "
        f"[{float(whole.low[0]):+.3f}, {float(whole.high[0]):+.3f}]"
    )
pair = result.ablation_of(1, 0)
assert pair is not None
assert float(pair.whole_interval().low[0]) > float(pair.single_interval().high.max())
cluster_figures.redundancy_bars(
    [c.name for c in result.ablations],
    [[f"{c.layer}.{h}" for h in c.heads] for c in result.ablations],
    [
        tuple(x.tolist() for x in (i.mean, i.low, i.high))
        for i in (c.single_interval() for c in result.ablations)
    ],
    [
        (float(i.mean[0]), float(i.low[0]), float(i.high[0]))
        for i in (c.whole_interval() for c in result.ablations)
    ],
    harm="harm (loss, nats)",
)

# %% [markdown]
# The two induction heads attend alike, yet they are not interchangeable backups: each
# alone costs loss (1.3 much more than 1.0) and removing both sends the repeats back to
# chance (log 61 ≈ 4.11). Attending alike is evidence of redundancy, not proof; the
# ablation check is what says how much one head stands in for the other.
#
# ## 6. An encoder: minilm
#
# Six short sentences; the maps are bidirectional, so random maps barely correlate and
# the baseline is near 0. The metric is the cosine of the sentence embedding to the
# unablated one.

# %%
minilm = hs.load_model("minilm")
sentences = [
    "The cat sat on the mat because it was tired.",
    "A man is playing a guitar on the street.",
    "The new movie is awesome and everyone loved it.",
    "Stocks fell sharply after the bank raised interest rates.",
    "She opened the window to let the fresh air in.",
    "The children are playing football in the park.",
]
encoder = redundancy(minilm, sentences, method="hierarchical")
print(encoder.clusters.support, f"baseline r = {encoder.clusters.baseline:.3f}")
print([layer.k for layer in encoder.clusters.layers])
cluster_figures.elbow_figure(encoder.clusters.layers)
