# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Attention rollout, attention flow and relevance
#
# Raw attention says where one head looks in one layer. To ask *which input tokens
# feed an output position through the whole network*, Abnar & Zuidema 2020
# (*Quantifying Attention Flow in Transformers*) propose two answers, both on the
# augmented matrix Â_l = ½·Ā_l + ½·I (heads averaged, then the residual stream added):
#
# - **rollout**: R_1 = Â_1, R_l = Â_l · R_{l−1}; rows always sum to 1;
# - **flow**: the max-flow from output node (L, i) to input node (0, j) in the layered
#   graph whose edges carry Â as capacities, one pair at a time.
#
# Chefer et al. 2021 (*Generic Attention-model Explainability*) weight each head's map
# by the gradient of the prediction: Ā_l = mean_h[(∇A ⊙ A)⁺], R ← R + Ā_l·R.
#
# In a causal decoder every row drifts toward token 0 by construction, so each result
# is shown next to the **content-free baseline**: the same computation on uniform
# attention over the mask.

# %%
import warnings

import plotly.io as pio
import torch

import headscope as hs

pio.renderers.default = "plotly_mimetype"  # figures as JSON: no browser, no CDN
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

# %%
from headscope.analyses.flow import (
    attention_flow,
    augment,
    content_free_baseline,
    rollout,
    rollout_per_head,
)
from headscope.experiments.relevance import relevance
from headscope.figures import flow as flow_figures
from headscope.figures import maps

model = hs.load_model("toy-induction")
text = "red cat blue dog sun tree red cat blue dog sun"
record = hs.capture(model, text)
tokens = record.tokens
n = len(tokens)
print(n, "tokens:", tokens)

# %% [markdown]
# ## Rollout
#
# `rollout` returns R after every layer, `[layer, query, key]`, in float64. Two checks
# from the definition: rows sum to 1, and R_1 = Â_1, R_2 = Â_2·Â_1 with `augment`
# giving Â.

# %%
R = rollout(record.pattern)  # [layer, query, key]
ahat = augment(record.pattern)  # ½·mean_h A + ½·I per layer

row_sums = R.sum(-1)
print("rollout row sums: min", row_sums.min().item(), "max", row_sums.max().item())
assert (row_sums - 1).abs().max() < 1e-6  # exact up to the float32 of the captured maps
assert torch.allclose(R[0], ahat[0]) and torch.allclose(R[1], ahat[1] @ ahat[0])

# %% [markdown]
# `rollout_per_head` composes one head of layer l with the rollout below it,
# Â[l, h]·R_{l−1}. For the induction head (layer 1, head 3), the second copy's queries
# reach back to the first copy through the previous-token head underneath.

# %%
per_head = rollout_per_head(record.pattern)  # [layer, head, query, key]
assert (per_head.sum(-1) - 1).abs().max() < 1e-6
maps.attention_map(per_head[1, 3], tokens, title="per-head rollout, layer 1 head 3").show()

# %% [markdown]
# ## Attention flow
#
# With two layers, paths through different middle tokens share no edge, so the
# max-flow has a closed form: F[i, j] = Σ_k min(Â_2[i, k], Â_1[k, j]) (compare rollout's
# Σ_k Â_2[i, k]·Â_1[k, j]). `normalize=False` returns these raw max-flow values; the
# default divides each row by its sum.

# %%
F = attention_flow(record.pattern)  # rows sum to 1
raw = attention_flow(record.pattern, normalize=False)
closed_form = torch.minimum(ahat[1][:, :, None], ahat[0][None]).sum(1)
print("max |flow − closed form| =", (raw - closed_form).abs().max().item())
assert torch.allclose(raw, closed_form, atol=1e-12)
assert torch.allclose(F.sum(-1), torch.ones(n, dtype=F.dtype), atol=1e-12)

# %% [markdown]
# ## Relevance, and the content-free baseline
#
# The last token is the second `sun`; the model predicts `tree`, the token that followed
# `sun` before. `relevance` backpropagates the logit of that prediction (the default
# target: the top prediction at the last position).
#
# Apart from the token itself, rollout and flow give `<bos>` the largest share of the
# last row: two layer-1 heads are attention sinks (notebook 04), and rollout counts them
# like any other head. The
# content-free baseline shows how much of that is the causal mask alone. Relevance
# keeps only the attention that moved the prediction, and points at `tree`.

# %%
q = n - 1  # the query: the last token
with torch.no_grad():
    predicted = model.forward(model.tokenize(text)).logits[0, -1].argmax()
print("prediction after the last token:", model.tokenizer.decode([int(predicted)]))

rel = relevance(model, text)  # [query, key], R ≥ I, rows do not sum to 1
base_rollout = content_free_baseline(n, n_layers=2, causal=True)[-1]
base_flow = content_free_baseline(n, n_layers=2, causal=True, method="flow")

for name, row in [("rollout", R[-1, q]), ("flow", F[q]), ("relevance", rel[q])]:
    best = int(row[:q].argmax())  # the strongest source other than the token itself
    print(f"{name:>9}: strongest earlier token {best} {tokens[best]!r} ({row[best]:.3f})")
print(f"rollout mass on <bos> {R[-1, q, 0]:.3f} vs content-free {base_rollout[q, 0]:.3f}")

# %%
tree = tokens.index("tree")  # position 6, the token after the first `sun`
assert int(rel[q, :q].argmax()) == tree  # relevance finds the induction source
assert int(R[-1, q, :q].argmax()) == 0 and int(F[q, :q].argmax()) == 0  # rollout/flow: <bos>
assert R[-1, q, 0] > 2 * base_rollout[q, 0]  # more <bos> than the mask alone explains

# %%
flow_figures.flow_comparison(
    tokens,
    q,
    {
        "raw attention (layer 1, head mean)": record.pattern[1].mean(0)[q],
        "rollout": R[-1, q],
        "flow": F[q],
        "relevance (Chefer), row normalised": rel[q] / rel[q].sum(),
    },
    baselines={"rollout": base_rollout[q], "flow": base_flow[q]},
    title="Where the last token's representation comes from",
).show()

# %% [markdown]
# ## A bidirectional encoder: minilm
#
# `minilm` (all-MiniLM-L6-v2) is a 6-layer BERT encoder, so flow runs headscope's exact
# layered max-flow (checked against networkx in the tests). Known answer for the
# baseline: uniform bidirectional attention J/n gives R_L = 0.5^L·I + (1 − 0.5^L)·J/n.

# %%
encoder = hs.load_model("minilm")
sentence = "The cat that chased the mouse was very tired."
enc = hs.capture(encoder, sentence)
enc_tokens, m = enc.tokens, len(enc.tokens)
layers = encoder.spec.n_layers

R_enc = rollout(enc.pattern)[-1]
F_enc = attention_flow(enc.pattern)
for result in (R_enc, F_enc):
    assert torch.allclose(result.sum(-1), torch.ones(m, dtype=result.dtype), atol=1e-9)

uniform = content_free_baseline(m, n_layers=layers, causal=False)[-1]
J = torch.full((m, m), 1 / m, dtype=torch.float64)
eye = torch.eye(m, dtype=torch.float64)
assert torch.allclose(uniform, 0.5**layers * eye + (1 - 0.5**layers) * J, atol=1e-12)
print(m, "tokens; mean |rollout − flow| =", (R_enc - F_enc).abs().mean().item())

# %% [markdown]
# minilm has no trained LM head, so relevance needs a scalar target of our own: here
# the cosine between the sentence embedding (mean-pooled last layer, as
# sentence-transformers computes it) and the embedding of a short paraphrase. The
# embedding averages every position, so the sentence-level relevance is the mean of
# R's rows.

# %%
import torch.nn.functional as functional

with torch.no_grad():
    paraphrase = encoder.forward(encoder.tokenize("A tired cat."), embedding=True).embedding


def similarity(output, batch):
    return functional.cosine_similarity(output.embedding, paraphrase).sum()


rel_enc = relevance(encoder, sentence, target=similarity).mean(0)
query = enc_tokens.index("tired")
flow_figures.flow_comparison(
    enc_tokens,
    query,
    {
        "rollout (row of 'tired')": R_enc[query],
        "flow (row of 'tired')": F_enc[query],
        "relevance for similarity to 'A tired cat.'": rel_enc / rel_enc.sum(),
    },
    baselines={"rollout (row of 'tired')": uniform[query]},
    title="minilm",
).show()
