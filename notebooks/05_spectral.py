# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Spectral diagnostics
#
# Weights say what a head *can* do on any input. Following Elhage et al. 2021 (*A
# Mathematical Framework for Transformer Circuits*), each head has a QK circuit
# W_Q·W_Kᵀ (where it looks) and an OV circuit W_V·W_O (what it writes), both
# d_model × d_model of rank ≤ d_head (row-vector convention, LayerNorm gains folded in).
#
# - **copying score** Re(Σλ)/Σ|λ| of the full OV circuit W_E·OV·W_U: +1 when the head
#   writes back the tokens it attends to;
# - **composition scores** ‖OV₁·R₂‖_F / (‖OV₁‖_F‖R₂‖_F): how much a layer-1 head reads
#   a layer-0 head's output as queries (Q), keys (K) or values (V); random heads give
#   ≈ 1/√d_model;
# - **random-matrix fits**: Marchenko–Pastur bulk and outliers; WeightWatcher-style
#   heavy-tail α (Martin & Mahoney 2021);
# - **attention-map spectra**: effective rank per head (Roy & Vetterli 2007), and rank
#   collapse of the residual stream across layers (Dong et al. 2021).
#
# The induction circuit predicts what to find: the induction head copies, and it
# *K-composes* with the previous-token head (its keys are built from the previous
# token's identity).

# %%
import warnings

import plotly.io as pio
import torch

import headscope as hs

pio.renderers.default = "plotly_mimetype"  # figures as JSON: no browser, no CDN
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

# %%
import pandas as pd

from headscope.analyses.spectral import (
    attention_effective_rank,
    composition_baseline,
    heavy_tail_alpha_by_layer,
    marchenko_pastur_fit,
    rank_collapse,
)
from headscope.analyses.taxonomy import head_scores
from headscope.experiments.spectra import composition_scores, copying_scores, head_weights, spectra
from headscope.figures import heads as head_figures
from headscope.figures import spectral as spectral_figures
from headscope.models.induction_data import repeated_random_batch
from headscope.probes.run import run

model = hs.load_model("toy-induction")
spec = model.spec
specials = set(model.tokenizer.all_special_ids)
vocab = (max(specials) + 1, spec.d_vocab)

# %% [markdown]
# First, find the circuit from attention alone (as notebook 03 does), so that the
# weight-based checks below are independent of it.

# %%
ids, layout = repeated_random_batch(
    32, 20, vocab=vocab, bos_id=spec.bos_token_id, generator=torch.Generator().manual_seed(1234)
)
record = hs.capture(model, ids)
scores = head_scores(record)
previous_head = int(scores["previous_token"][0].argmax())
induction = scores["induction"][1]
induction_head = int(induction.argmax())
induction_heads = [int(h) for h in (induction > 0.8).nonzero().flatten()]
print(
    f"previous-token head L0H{previous_head}, induction head L1H{induction_head}, "
    f"all induction heads {[f'L1H{h}' for h in induction_heads]}"
)

# %% [markdown]
# ## QK and OV spectra, copying scores
#
# `spectra` computes everything from d_head × d_head products (no d_model × d_model
# matrix is formed): eigenvalues, singular values, stable and effective rank of each
# circuit, and the OV copying score.

# %%
result = spectra(model)
copying = result.copying  # [layer, head]
assert torch.allclose(copying, copying_scores(model))
head_figures.layer_head_heatmap(
    copying, title="OV copying score", colorbar_title="copying", signed=True, zmin=-1, zmax=1
).show()
print(
    "copying score of the induction heads:",
    [round(copying[1, h].item(), 3) for h in induction_heads],
)
assert copying[1, induction_head] > 0.7
assert all(copying[1, h] > 0.7 for h in induction_heads)

# %%
names = [f"L{layer}H{head}" for layer in range(spec.n_layers) for head in range(spec.n_heads)]
ov = result.ov.singular_values.reshape(len(names), -1)
spectral_figures.singular_spectra(
    dict(zip(names, ov, strict=True)),
    highlight=[f"L0H{previous_head}", f"L1H{induction_head}"],
    title="OV singular values (circuit heads highlighted)",
).show()
pd.DataFrame(
    {
        "OV effective rank": result.ov.effective_rank.flatten().numpy(),
        "QK effective rank": result.qk.effective_rank.flatten().numpy(),
        "OV stable rank": result.ov.stable_rank.flatten().numpy(),
        "copying": copying.flatten().numpy(),
    },
    index=names,
).round(3).T

# %% [markdown]
# ## Composition
#
# `composition_scores(model, kind)` returns all-pairs scores `[layer, head, layer, head]`
# and the random baseline for this d_model and d_head (E[score²] = 1/d_model for
# independent Gaussian heads). The previous-token head's K-composition into the
# induction head should stand far above it.

# %%
d_model, d_head = spec.d_model, spec.d_head
baseline = composition_baseline(d_model, d_head)
print(f"random baseline {baseline:.4f} vs 1/sqrt(d_model) = {d_model**-0.5:.4f}")
assert abs(baseline - d_model**-0.5) < 0.1 * d_model**-0.5

table = {}
for kind in ("Q", "K", "V"):
    composition = composition_scores(model, kind)
    table[kind] = composition.scores[0, :, 1, induction_head].numpy()  # layer-0 writers
k_scores = composition_scores(model, "K")
pd.DataFrame(table, index=[f"L0H{h} → L1H{induction_head}" for h in range(spec.n_heads)]).round(3)

# %%
k_block = k_scores.scores[0, :, 1, :]  # [layer-0 writer, layer-1 reader]
ratio = k_block[previous_head, induction_head] / k_scores.baseline
print(
    f"K-composition L0H{previous_head} → L1H{induction_head}: "
    f"{k_block[previous_head, induction_head]:.3f} = {ratio:.1f} × baseline"
)
assert ratio > 2.5
for head in induction_heads:  # the previous-token head feeds every induction head's keys most
    assert int(k_block[:, head].argmax()) == previous_head
spectral_figures.composition_matrix(
    k_block,
    [f"L0H{h}" for h in range(spec.n_heads)],
    readers=[f"L1H{h}" for h in range(spec.n_heads)],
    baseline=k_scores.baseline,
    kind="K",
).show()

# %% [markdown]
# ## Random-matrix theory: Marchenko–Pastur
#
# For an N × M matrix of i.i.d. entries the eigenvalues of (1/N)·WᵀW fill the
# Marchenko–Pastur bulk σ²(1 ± 1/√Q)², Q = N/M; eigenvalues above the edge plus a
# Tracy–Widom margin are outliers (structure). Known answers first: a Gaussian matrix has
# no outlier, a planted rank-one spike gives exactly one. A *product* W_Q·W_Kᵀ of
# independent Gaussians is not MP at all (low rank): the plain fit reports false spikes,
# and the shuffled-weights null (pass the factors) removes them.

# %%
generator = torch.Generator().manual_seed(0)
gaussian = torch.randn(512, 128, generator=generator)
u, v = torch.randn(512, 1, generator=generator), torch.randn(1, 128, generator=generator)
spike = gaussian + 0.5 * u @ v  # plus a rank-one signal
W_Q, W_K = torch.randn(128, 32, generator=generator), torch.randn(128, 32, generator=generator)
checks = {
    "Gaussian 512×128": marchenko_pastur_fit(gaussian).n_outliers,
    "Gaussian + rank-one spike": marchenko_pastur_fit(spike).n_outliers,
    "W_Q·W_Kᵀ, plain MP": marchenko_pastur_fit(W_Q @ W_K.T).n_outliers,
    "W_Q·W_Kᵀ, shuffled null": marchenko_pastur_fit(
        (W_Q, W_K.T), null="shuffle", shuffles=10
    ).n_outliers,
}
print(checks)
assert checks["Gaussian 512×128"] == 0 and checks["Gaussian + rank-one spike"] == 1
assert checks["W_Q·W_Kᵀ, plain MP"] >= 1 and checks["W_Q·W_Kᵀ, shuffled null"] == 0

# %% [markdown]
# A trained model: minilm's per-layer query projection (all 12 heads side by side,
# 384 × 384). Far more eigenvalues leave the bulk than in the Gaussian case, whichever
# null is used: training put structure in these weights.

# %%
encoder = hs.load_model("minilm")
weights = head_weights(encoder)  # BERT is post-norm: nothing to fold
layer_q = [  # [d_model, head · d_head]: the layer's whole query projection
    weights.W_Q[layer].permute(1, 0, 2).reshape(encoder.spec.d_model, -1) for layer in range(6)
]
fits = [marchenko_pastur_fit(W) for W in layer_q]
shuffled = [marchenko_pastur_fit(W, null="shuffle", shuffles=10) for W in layer_q]
pd.DataFrame(
    {
        "outliers (MP + Tracy–Widom)": [fit.n_outliers for fit in fits],
        "outliers (shuffled null)": [fit.n_outliers for fit in shuffled],
        "fitted σ": [round(fit.sigma, 4) for fit in fits],
    },
    index=[f"layer {layer} W_Q" for layer in range(6)],
)

# %%
fit = fits[0]
assert fit.n_outliers > 10
spectral_figures.marchenko_pastur(
    fit.eigenvalues,
    sigma2=fit.sigma2,
    ratio=fit.aspect_ratio,
    outlier_threshold=fit.threshold,
    title="minilm layer 0 W_Q: eigenvalues of WᵀW/N and the fitted MP law",
).show()

# %% [markdown]
# Heavy-tail α (WeightWatcher style: power-law fit of the eigenvalue tail, x_min by
# minimum KS distance). One head's d_head values are too few for a fit, so the OV
# spectra are pooled per layer: 12 heads × 32 = 384 eigenvalues. Martin & Mahoney read
# α of roughly 2–6 as well-trained layers.

# %%
encoder_spectra = spectra(encoder)
tails = heavy_tail_alpha_by_layer(encoder_spectra.ov.singular_values**2)
pd.DataFrame(
    {
        "α": tails.alpha.numpy(),
        "x_min": tails.x_min.numpy(),
        "KS": tails.ks.numpy(),
        "eigenvalues pooled": tails.n_eigenvalues,
    },
    index=[f"layer {layer} OV" for layer in range(6)],
).round(3)

# %% [markdown]
# ## Attention-map spectra and rank collapse
#
# The effective rank exp(H(σ/Σσ)) of an attention map is 1 for a map that sends every
# query to one key (a sink) and N for the identity; a previous-token head is close to a
# shift matrix, so its rank is close to N.

# %%
ranks = attention_effective_rank(record.pattern).mean(0)  # [layer, head], mean over prompts
head_figures.layer_head_heatmap(
    ranks, title=f"Effective rank of the attention maps (N = {ids.shape[1]})"
).show()
sinks = [h for h in range(spec.n_heads) if scores["first_token_sink"][1, h] > 0.9]
print(
    "previous-token head:",
    round(ranks[0, previous_head].item(), 2),
    " sink heads:",
    [round(ranks[1, h].item(), 2) for h in sinks],
)
assert sinks and all(ranks[1, h] < 2 for h in sinks)
assert ranks[0, previous_head] > ids.shape[1] / 2

# %% [markdown]
# Rank collapse (Dong, Cordonnier & Loukas 2021): pure attention drives token
# representations toward one vector; the residual stream and MLPs resist it. The
# measure is ‖X − 1·x̄ᵀ‖_F/‖X‖_F of each block's output (transformer-lens
# resid_post, read with `headscope.probes.run.run` at typed `hs.Site`s), 0 for full
# collapse.

# %%
sentence = "The quick brown fox jumps over the lazy dog because it was bored."
batch = encoder.tokenize(sentence)
sites = [hs.Site(layer, "resid_post") for layer in range(encoder.spec.n_layers)]
residuals = run(encoder, batch, read=sites).activations  # typed sites in, tensors out
collapse = rank_collapse(torch.stack([residuals[site][0] for site in sites]))
print("minilm, ‖X − 1x̄ᵀ‖/‖X‖ after each layer:", [round(v, 3) for v in collapse.tolist()])
assert ((collapse > 0) & (collapse <= 1)).all()
