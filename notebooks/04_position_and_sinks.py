# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Position bias and attention sinks
#
# **Position bias from the mask** (Wu, Wang, Jegelka & Jadbabaie 2025, *On the Emergence
# of Position Bias in Transformers*): the attention mask is a directed graph, and the
# cumulative influence P^(t) = A^(t)···A^(1) of t stacked layers (rollout without the
# residual) favours some positions before any content is seen. Causal masks drift to
# the first token; a decay mask (ALiBi-like scores −(i−j)·m) peaks at a distance that
# grows with depth.
#
# **Attention sinks** (Xiao et al. 2023, *StreamingLLM*; the metric of Gu et al. 2025):
# α_k = (1/|Q_k|)·Σ_{q∈Q_k} A[q, k], the mean attention key k receives from the queries
# that can see it. Read against α_k^uniform, the same score of attention spread evenly
# over the visible keys: a head is a sink head for k when α_k > 0.3, α_k ≥ 4·α_k^uniform
# and at least 4 queries see k (docs/methods.md §3.2). Causality comes from the record.
#
# **Lost in the middle** (Liu et al. 2023): a metric as a function of where the
# relevant item sits.

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

from headscope.analyses.position import (
    cumulative_influence,
    influence_by_distance,
    mask_attention,
    mask_graph,
    most_influential_distance,
    sink_baseline,
    sink_decision,
    sink_heads,
    sink_scores,
)
from headscope.analyses.taxonomy import head_scores
from headscope.experiments.position import position_curve
from headscope.figures import position as position_figures

# %% [markdown]
# ## Masks as graphs
#
# `mask_graph` gives the mask as a networkx `DiGraph` (edge i → j: query i may attend to
# key j); `mask_attention` the content-free attention over it (uniform over allowed
# keys, or softmax of the decay scores).

# %%
graphs = {
    "causal": mask_graph("causal", 8),
    "sliding_window (window 3)": mask_graph("sliding_window", 8, window=3),
    "prefix (4 tokens)": mask_graph("prefix", 8, prefix=4),
    "bidirectional": mask_graph("bidirectional", 8),
}
for name, graph in graphs.items():
    print(f"{name:>26}: {graph.number_of_edges()} edges")
assert graphs["causal"].number_of_edges() == 8 * 9 // 2
assert all(key <= query for query, key in graphs["causal"].edges)

# %% [markdown]
# ## Known answers of Wu et al.
#
# Uniform causal attention: P^(t)[1, 0] = 1 − 2^(−t) exactly, and for N = 8 the last
# row's mass on the first token is .125, .340, .728, .975 after t = 1, 2, 4, 8 layers.
# Decay mask with γ = e^(−m) = 0.8: after k layers the most influential distance is
# (k − 1)/(e^m − 1) = 4, 36, 76 for k = 2, 10, 20.

# %%
P = cumulative_influence(mask_attention("causal", 8), n_layers=8)  # [layer, query, key]
first = P[[0, 1, 3, 7], -1, 0]
print("causal, N = 8, mass of the last token on the first:", [round(v, 3) for v in first.tolist()])
expected = torch.tensor([0.125, 0.340, 0.728, 0.975], dtype=torch.float64)
assert torch.allclose(first, expected, atol=5e-4)
t = torch.arange(1, 9, dtype=torch.float64)
assert torch.allclose(P[:, 1, 0], 1 - 2**-t, atol=1e-12)

decay = mask_attention("decay", 400, gamma=0.8)
peaks = {
    k: int(most_influential_distance(cumulative_influence(decay, n_layers=k)[-1], query=-1))
    for k in (2, 10, 20)
}
m = -math.log(0.8)
print("decay γ = 0.8, most influential distance:", peaks)
closed_form = {k: round((k - 1) / (math.exp(m) - 1)) for k in (2, 10, 20)}
assert peaks == closed_form == {2: 4, 10: 36, 20: 76}

# %% [markdown]
# Influence by distance for four masks (N = 64) after 1, 2, 4 and 8 layers: the causal
# mask piles influence onto the longest distances (the first token), a sliding window
# spreads it out to a bounded reach, the decay mask moves its peak outward with depth.

# %%
masks = {
    "causal": mask_attention("causal", 64),
    "sliding_window": mask_attention("sliding_window", 64, window=8),
    "prefix": mask_attention("prefix", 64, prefix=16),
    "decay": mask_attention("decay", 64, gamma=0.8),
}
depths = [1, 2, 4, 8]
rows = {}
for name, attention in masks.items():
    influence = cumulative_influence(attention, n_layers=8)[[d - 1 for d in depths]]
    rows[name] = most_influential_distance(influence, query=-1).tolist()
table = pd.DataFrame(rows, index=[f"after {d} layer{'s' * (d > 1)}" for d in depths]).T
table.rename_axis("most influential distance (last query)")

# %%
decay_curves = influence_by_distance(cumulative_influence(masks["decay"], n_layers=8))
position_figures.influence_by_distance(
    decay_curves[[d - 1 for d in depths]],
    layer_index=depths,
    title="Decay mask (γ = 0.8), N = 64: influence by distance after 1, 2, 4, 8 layers",
).show()

# %% [markdown]
# ## The model's own influence vs the mask
#
# toy-induction on 32 repeated sequences `[<bos>, r_1..r_20, r_1..r_20]` (T = 20): its
# cumulative influence (heads averaged, no residual, as Wu et al.) next to the same
# computation on the causal mask alone. After layer 0 the model's influence peaks at
# distance 1–2 (the previous-token and local heads). After layer 1 a bump at distance
# T to T + 1 stands far above the mask: the induction head reads the token after the
# earlier copy (distance T − 1) through the previous-token head below it (one more
# step). The rising tail at long distances is `<bos>`, the sink.

# %%
from headscope.models.induction_data import repeated_random_batch

model = hs.load_model("toy-induction")
specials = set(model.tokenizer.all_special_ids)
vocab = (max(specials) + 1, model.spec.d_vocab)
ids, layout = repeated_random_batch(
    32, 20, vocab=vocab, bos_id=model.spec.bos_token_id, generator=torch.Generator().manual_seed(0)
)
record = hs.capture(model, ids)  # [batch, layer, head, query, key]
n = ids.shape[1]
model_influence = cumulative_influence(record.pattern.mean(0))  # [layer, query, key]
mask_only = cumulative_influence(mask_attention("causal", n), n_layers=model.spec.n_layers)
model_curve = influence_by_distance(model_influence)  # [layer, distance], each sums to 1
mask_curve = influence_by_distance(mask_only)
position_figures.influence_by_distance(
    model_curve, mask_curve, title="toy-induction vs the causal mask alone"
).show()

repeat = layout.repeat_length  # T
bump = 10 + int(model_curve[-1, 10:30].argmax())  # the peak between distance 10 and 30
print(
    f"after layer 1: peak at distance {bump}; at distance T = {repeat}: model "
    f"{model_curve[-1, repeat]:.3f} vs mask {mask_curve[-1, repeat]:.3f}"
)
assert bump in (repeat, repeat + 1)
assert model_curve[-1, repeat] > 2 * mask_curve[-1, repeat]
assert int(model_curve[0].argmax()) in (1, 2)  # layer 0: the previous token

# %% [markdown]
# ## Attention sinks
#
# Known answer: uniform causal attention over T tokens gives α_0 = H_T/T (H_T the
# harmonic number): 0.074 at T = 64, but 0.34 at T = 8, above Gu et al.'s fixed 0.3.
# That is why the score is read against this content-free baseline (`sink_baseline`):
# a causal mask alone makes no sink, on long prompts or short ones. A head whose every
# query attends to key 0 has α_0 = 1, i.e. T/H_T times the baseline: 15.1 at T = 64,
# only 3.2 at T = 9, too short a prompt to tell such a head from the mask's drift.
# A bare tensor must say whether it is causal (`causal=`); a record says it itself.

# %%
T = 64
uniform = mask_attention("causal", T)[None, None]  # one layer, one head
alpha = sink_scores(uniform, causal=True)[0, 0]
harmonic = sum(1 / k for k in range(1, T + 1))
print(f"uniform causal, T = {T}: α_0 = {alpha[0]:.4f}, H_T/T = {harmonic / T:.4f}")
assert abs(alpha[0].item() - harmonic / T) < 1e-12
assert torch.allclose(alpha, sink_baseline(T, causal=True))
assert sink_heads(uniform, causal=True) == []
print("α_0 of uniform attention at T = 8:", round(sink_baseline(8, causal=True)[0].item(), 3))

one_hot = torch.zeros(1, 1, T, T)
one_hot[..., 0] = 1.0
assert sink_scores(one_hot, causal=True)[0, 0, 0].item() == 1.0
assert sink_heads(one_hot, causal=True) == [(0, 0)]
assert sink_heads(one_hot[..., :9, :9], causal=True) == []  # 9 tokens: at most 3.2×

# %% [markdown]
# toy-induction prepends `<bos>` (the record's provenance says so). Two layer-1 heads
# put almost all their attention there (the taxonomy labels them first-token sinks):
# about 9.5× uniform attention's α_0 on these 41 tokens. The two induction heads park
# on `<bos>` until the repeat starts (nothing to look up on the first copy): α_0 ≈ 0.4,
# above the old fixed 0.3 but only 3.5–4× uniform, at the edge of the sink rule.

# %%
print("BOS prepended:", record.provenance.prepended_bos)
decision = sink_decision(record)  # pooled over the 32 prompts, causal from the spec
toy_sinks = decision.heads(0)
taxonomy = head_scores(record)
first_token_sinks = {tuple(p) for p in (taxonomy["first_token_sink"] > 0.5).nonzero().tolist()}
induction_heads = {tuple(p) for p in (taxonomy["induction"] > 0.5).nonzero().tolist()}
print(f"uniform attention's α_0 = H_{n}/{n} = {decision.baseline[0]:.3f}")
print("α_0 / uniform per head:\n", decision.ratio[..., 0].numpy().round(2))
print("sink heads:", toy_sinks, "·", decision.rule())
print(
    "taxonomy: first-token sinks", sorted(first_token_sinks), "induction", sorted(induction_heads)
)
assert len(first_token_sinks) == 2
assert first_token_sinks <= set(toy_sinks) <= first_token_sinks | induction_heads
assert all(decision.alpha[layer, head, 0] > 0.3 for layer, head in induction_heads)
position_figures.sink_scores(
    decision.alpha,
    record.tokens[0],
    sinks=decision.sinks,
    baseline=decision.baseline,
    support=decision.support,
    min_queries=decision.min_queries,
    rule="≥ 4× uniform",
    title="toy-induction: α_k per head",
).show()

# %% [markdown]
# **minilm**, a bidirectional BERT encoder: every query sees every key, so α_k is the
# mean over all T queries, and uniform attention gives α_k = 1/T. The tokenizer frames
# each sentence as `[CLS] … [SEP]` (no BOS is prepended; `[CLS]` is key 0). Clark et al.
# 2019 (*What Does BERT Look At?*) found BERT-base heads parking attention on special
# tokens, mostly `[SEP]` in the middle layers; in minilm it is `[CLS]`, for most heads
# of every layer, and no head is a `[SEP]` sink.

# %%
encoder = hs.load_model("minilm")
sentences = [
    "The cat sat on the mat.",
    "Attention sinks appear in many pretrained transformers.",
    "A short sentence about the weather in Paris and London today.",
    "Stock prices fell sharply after the announcement.",
]
enc = hs.capture(encoder, sentences)  # right-padded batch; the spec says bidirectional
cls_sinks = sink_heads(enc, key=0)  # pooled over the four sentences
sep_sinks = [sink_heads(enc.prompt(b), key=n - 1) for b, n in enumerate(enc.lengths)]
n_heads = encoder.spec.n_layers * encoder.spec.n_heads
print(f"[CLS] sink heads: {len(cls_sinks)} of {n_heads}")
print("[SEP] sink heads per sentence:", [len(heads) for heads in sep_sinks])
print("uniform bidirectional baseline α_k = 1/T, e.g.", [round(1 / n, 3) for n in enc.lengths])
assert len(cls_sinks) > n_heads // 2
assert all(1 / n < 0.3 for n in enc.lengths)  # the mask alone makes no sink
first = enc.prompt(0)
first_decision = sink_decision(first)
position_figures.sink_scores(
    first_decision.alpha,
    first.tokens,
    sinks=first_decision.sinks,
    baseline=first_decision.baseline,
    support=first_decision.support,
    min_queries=first_decision.min_queries,
    rule="≥ 4× uniform",
    title=f"minilm: α_k per head, {sentences[0]!r}",
).show()

# %% [markdown]
# ## Lost in the middle
#
# `position_curve` evaluates a metric on prompts built for each position of the relevant
# item. The task for the toy: 40 random words with a key–value pair `A B` at position p,
# ending with `A`; the metric is the log-probability of `B` at the end (higher is
# better; chance is −log 61 ≈ −4.1). The toy was trained only on adjacent repeats of
# 8–30 tokens, so single-pair recall is out of distribution; the curve shows where it
# generalises: retrieval works best with the pair in the middle, and worse when it sits
# right after `<bos>` or within a few tokens of the query.

# %%
length, n_prompts = 40, 32
low, high = vocab


def prompts(position):
    generator = torch.Generator().manual_seed(position)
    words = torch.randint(low, high, (n_prompts, length), generator=generator)
    key = words[:, position]
    # the key appears exactly twice: at `position` and as the final query token
    repeats = (words == key[:, None]) & (torch.arange(length) != position)
    words = torch.where(repeats, (words - low + 1) % (high - low) + low, words)
    words[:, -1] = key
    return torch.cat([torch.full((n_prompts, 1), model.spec.bos_token_id), words], dim=1)


def value_logprob(output, batch):
    ids = batch.ids
    earlier = (ids[:, :-1] == ids[:, -1:]).int().argmax(1)  # where the key first appeared
    value = ids[torch.arange(len(ids)), earlier + 1]
    return output.logits[:, -1].log_softmax(-1).gather(-1, value[:, None])[:, 0]


curve = position_curve(model, prompts, range(1, length - 2, 3), value_logprob)
pd.DataFrame(
    {"log p(value)": curve.values.numpy()},
    index=pd.Index(curve.positions, name="position of the key"),
).round(3).T

# %%
print(
    f"middle {curve.middle:.3f}, first − middle {curve.first_minus_middle:+.3f}, "
    f"last − middle {curve.last_minus_middle:+.3f} (chance {-math.log(61):.2f})"
)
assert curve.middle > -math.log(61) + 1.0  # mid-context recall well above chance
assert abs(curve.first_minus_middle - (curve.values[0].item() - curve.middle)) < 1e-9
