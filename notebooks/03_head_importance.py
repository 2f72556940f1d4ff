# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Head importance: rediscovering toy-induction's circuit
#
# The toy model was trained to form a previous-token head (layer 0) and an induction
# head (layer 1). Here we pretend not to know which heads they are and let each method
# find them, then check that the methods agree:
#
# 1. **taxonomy** (transformer-lens head-detector style, categories of Olsson et al.
#    2022): attention mass on each head type's ideal pattern;
# 2. **ablation**: the loss change when one head's z is zeroed (or mean-ablated);
# 3. **gradient importance** (Michel et al. 2019, *Are Sixteen Heads Really Better than
#    One?*): I_h = E_x |∂L/∂ξ_h| with gates ξ = 1 on z, normalised per layer;
# 4. **Causal Head Gating** (Nam et al. 2025): fitted sigmoid gates, pushed up (λ > 0)
#    and down (λ < 0), sort heads into facilitating, interfering and irrelevant;
# 5. **activation and attribution patching** (Nanda 2023; Syed et al. 2023): clean z put
#    back into a corrupted run, exactly or to first order;
# 6. the **greedy pruning curve** of Michel et al.
#
# The metric throughout is the next-token loss on the second copy of a repeated random
# sequence, the tokens only induction can predict.

# %%
import warnings

import plotly.io as pio
import torch

import headscope as hs

pio.renderers.default = "plotly_mimetype"  # figures as JSON: no browser, no CDN
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

# %%
import math

import pandas as pd

from headscope.analyses.ranking import top_heads
from headscope.analyses.taxonomy import head_labels, head_scores
from headscope.experiments.ablation import ablation_scores, clean_metric, pruning_curve
from headscope.experiments.gating import causal_head_gating
from headscope.experiments.gradients import gradient_importance
from headscope.experiments.metrics import next_token_loss, second_copy_targets
from headscope.experiments.patching import activation_patching, attribution_patching
from headscope.figures import heads as head_figures
from headscope.models.induction_data import repeated_random_batch

model = hs.load_model("toy-induction")
specials = set(model.tokenizer.all_special_ids)  # <pad>, <bos>, <unk>
vocab = (max(specials) + 1, model.spec.d_vocab)  # the 61 words
bos = model.spec.bos_token_id
log_v = math.log(vocab[1] - vocab[0])  # chance-level loss
print("word ids", vocab, "chance loss", round(log_v, 3))

# %% [markdown]
# ## 1. Taxonomy: what each head attends to
#
# 64 sequences `[<bos>, r_1..r_20, r_1..r_20]` (the model card's evaluation set).
# `head_scores` gives every category's score per head, `head_labels` the primary label.

# %%
probe, probe_layout = repeated_random_batch(
    64, 20, vocab=vocab, bos_id=bos, generator=torch.Generator().manual_seed(1234)
)
record = hs.capture(model, probe)  # [batch, layer, head, query, key]
scores = head_scores(record)
labels = head_labels(record)
primary = [
    [
        scores[label][layer, head].item() if label != "none" else float("nan")
        for head, label in enumerate(row)
    ]
    for layer, row in enumerate(labels)
]
head_figures.label_grid(labels, scores=primary, title="Head taxonomy").show()

previous_head = (0, int(scores["previous_token"][0].argmax()))
induction_head = (1, int(scores["induction"][1].argmax()))
induction_heads = {
    (layer, head)
    for layer, row in enumerate(labels)
    for head, label in enumerate(row)
    if label == "induction"
}
circuit = {previous_head, induction_head}
print("previous-token head", previous_head, f"{scores['previous_token'][previous_head]:.3f}")
print("best induction head", induction_head, f"{scores['induction'][induction_head]:.3f}")
print("all heads labelled induction", sorted(induction_heads))
assert scores["previous_token"][previous_head] > 0.8
assert scores["induction"][induction_head] > 0.8

# %% [markdown]
# ## 2. Ablation
#
# 16 fresh sequences with a 3-token random prefix. `ablation_scores` returns
# metric(ablated) − metric(clean) per head; all 8 ablations run in batched forwards.
# Zero ablation sets z ← 0; mean ablation sets z ← its per-position mean over the
# prompts (Michel et al. use zero; mean ablation keeps z on-distribution).

# %%
ids, layout = repeated_random_batch(
    16, 20, prefix_length=3, vocab=vocab, bos_id=bos, generator=torch.Generator().manual_seed(7)
)
targets = second_copy_targets(layout, len(ids))
loss = next_token_loss(targets)
clean = clean_metric(model, ids, metric=loss).mean().item()

zero = ablation_scores(model, ids, metric=loss, mode="zero")
mean = ablation_scores(model, ids, metric=loss, mode="mean")
print(f"clean second-copy loss {clean:.3f} nats, chance {log_v:.3f}")
print("top-2 by zero ablation:", top_heads(zero, 2), " by mean ablation:", top_heads(mean, 2))
head_figures.importance_heatmap(zero, title="Zero ablation: Δ second-copy loss (nats)").show()

assert clean < 0.5
assert set(top_heads(zero, 2)) == circuit
assert set(top_heads(mean, 2)) == circuit
for head in circuit:  # either circuit head alone sends the loss back toward chance
    assert clean + zero[head].item() > 0.6 * log_v

# %% [markdown]
# ## 3. Gradient importance (Michel et al. 2019)
#
# One backward pass with a gate per prompt and head gives every per-example gradient;
# the absolute value is taken per example, then averaged, then each layer is
# normalised by its L2 norm.

# %%
gradient = gradient_importance(model, ids, metric=loss)
print("top-2 by gradient importance:", top_heads(gradient, 2))
head_figures.importance_heatmap(gradient, title="Gradient importance (per-layer L2)").show()
assert set(top_heads(gradient, 2)) == circuit

# %% [markdown]
# ## 4. Causal Head Gating (Nam et al. 2025)
#
# Gates G = σ(θ) on z, fitted on the frozen model: first with λ = 0 from random gates,
# then with λ > 0 (which pushes gates *up*: G⁺) and λ < 0 (down: G⁻).
# Facilitating heads stay on in both (G⁻ high), irrelevant ones go wherever the
# regulariser pushes them (G⁺ ≈ 1, G⁻ ≈ 0). The paper aggregates ≥ 5 seeds; 3 seeds
# and 30 steps per phase keep this notebook fast and already separate the roles.

# %%
chg = causal_head_gating(model, ids, metric=loss, seeds=3, steps=30, lam=1.0, progress=False)
head_figures.label_grid(
    chg.roles, scores=chg.facilitation, title="CHG roles (facilitation = G⁻)"
).show()
print("most facilitating:", top_heads(chg.facilitation, 3))
for head in circuit:
    assert chg.roles[head[0]][head[1]] == "facilitating", head
assert top_heads(chg.facilitation, 1)[0] in induction_heads

# %% [markdown]
# ## 5. Activation and attribution patching
#
# The corrupted run replaces the second copy with new random tokens; the metric scores
# the *clean* continuation on it (`labels=ids`). Patching one head's clean z back
# reports (M_patch − M_corr)/(M_clean − M_corr). Only heads that *read* the repeated
# context can restore it on their own, so both layer-1 induction heads come first,
# and attribution patching (two forwards, one backward) agrees with activation
# patching (one forward per head).

# %%
corrupted = ids.clone()
corrupted[:, layout.second_start :] = torch.randint(
    *vocab, (len(ids), layout.repeat_length), generator=torch.Generator().manual_seed(8)
)
clean_continuation = next_token_loss(targets, labels=ids)
activation = activation_patching(model, ids, corrupted, clean_continuation)
attribution = attribution_patching(model, ids, corrupted, clean_continuation)
print("top-2 activation patching:", top_heads(activation, 2))
print("top-2 attribution patching:", top_heads(attribution, 2))
head_figures.importance_heatmap(activation, title="Activation patching: fraction restored").show()
assert set(top_heads(activation, 2)) == induction_heads
assert set(top_heads(attribution, 2)) == induction_heads

# %% [markdown]
# ## 6. Greedy pruning curve (Michel et al. 2019)
#
# Mask the lowest-ranked p% of heads, p = 0, 10, …, 100. Half the heads can go for
# free; the loss jumps only when a circuit head is removed.

# %%
fractions, by_gradient = pruning_curve(model, ids, gradient, metric=loss)
_, by_ablation = pruning_curve(model, ids, zero, metric=loss)
head_figures.pruning_curve(
    fractions,
    {"gradient importance": by_gradient, "zero ablation": by_ablation},
    metric_name="second-copy loss",
    baseline=clean,
).show()
half = int((fractions - 0.5).abs().argmin())
assert abs(by_gradient[0].item() - clean) < 1e-6
assert by_gradient[half] < clean + 0.05  # 4 of 8 heads masked, nothing lost
assert by_gradient[-1] > 0.9 * log_v  # every head masked: chance level

# %% [markdown]
# ## Summary
#
# Every method puts the same heads on top. The table lists the top three heads by each.

# %%
summary = pd.DataFrame(
    {
        "taxonomy (prev / induction)": [previous_head, induction_head, None],
        "zero ablation": top_heads(zero, 3),
        "mean ablation": top_heads(mean, 3),
        "gradient (Michel)": top_heads(gradient, 3),
        "CHG facilitation": top_heads(chg.facilitation, 3),
        "activation patching": top_heads(activation, 3),
        "attribution patching": top_heads(attribution, 3),
    },
    index=["1st", "2nd", "3rd"],
)
summary

# %% [markdown]
# ## One call, shared with the dashboard and the report
#
# `score_heads` is what the dashboard's Importance page and `headscope report` call,
# so a metric, a target span and a default mean the same thing in all three. With
# `target="auto"` the loss scores the tokens a copying circuit can predict (the
# repeated bigrams of each prompt); the result says what it measured, on how many
# tokens, and gives each head's bootstrap interval over the prompts.

# %%
from headscope.experiments.scoring import score_heads

texts = [
    "red cat blue dog sun tree key pen red cat blue dog sun tree key pen",
    "up moon salt fish two road gold up moon salt fish two road gold",
    "box right three four hot eat box right three four hot eat",
]
shared = score_heads(model, texts, methods=["ablation", "gradient"], metric="loss", target="auto")
print(shared.described)
spread = shared.interval("ablation")
for layer, head, value in shared.methods["ablation"].ranking()[:3]:
    low, high = float(spread.low[layer, head]), float(spread.high[layer, head])
    print(f"head {layer}.{head}: harm {value:+.3f} nats, 95% interval [{low:.3f}, {high:.3f}]")
assert set(top_heads(shared.mean("ablation"), 2)) & circuit
assert set(shared.prompt_targets) == {"repeats"}
