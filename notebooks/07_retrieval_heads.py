# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Retrieval, streaming and echo heads
#
# Long-context work sorts heads by what they need to see:
#
# - **retrieval heads** (Wu et al. 2024, *Retrieval Head Mechanistically Explains
#   Long-Context Factuality*) copy tokens from far back while the model generates: at a
#   copy step the head's most-attended key holds the token being generated;
# - **streaming heads** (DuoAttention, Xiao et al. 2024) need only the attention sink
#   and a recent window; DuoAttention finds them by fitting a gate per head that mixes
#   full attention with sink + window attention;
# - **echo heads** (RazorAttention, Tang et al. 2024) attend to earlier copies of the
#   current token;
# - **dormant heads** put their attention on the first token and change nothing when
#   ablated.
#
# toy-induction has two copying (induction) heads, 1.0 and 1.3: they must come out as
# the retrieval heads, and ablating them must break copying while ablating streaming
# heads does not.

# %%
import warnings

import plotly.io as pio
import torch

import headscope as hs
from headscope.analyses.retrieval import echo_score, rank_by
from headscope.experiments import retrieval as rx
from headscope.figures.retrieval import ablation_bars, score_heatmap

pio.renderers.default = "plotly_mimetype"  # figures as JSON: no browser, no CDN
warnings.filterwarnings("ignore", message="IProgress not found")
torch.set_printoptions(precision=3)

model = hs.load_model("toy-induction")

# %% [markdown]
# ## 1. The copy task and the retrieval score
#
# 16 prompts `<bos> s_1..s_16 s_1 s_2` of distinct random words; greedy generation should
# continue `s_3..s_16`. Every generation step's attention comes from one capture of the
# final sequences (in a causal model row p − 1 of the final map is the row used to
# generate token p). Score = hits / copy steps, with a Wilson interval; chance is what
# uniform attention would score on the same steps.

# %%
task = rx.copy_task(model, prompts=16, source_length=16, cue_length=2)
result = rx.retrieval_scores(model, task)
scores = result.scores
print(f"copy accuracy {result.accuracy.accuracy:.3f} over {result.accuracy.total} tokens")
print(f"{int(scores.support[0, 0])} copy steps, chance {float(scores.baseline[0, 0]):.3f}")
print(scores.score)
assert result.accuracy.accuracy > 0.95
assert set(rank_by(scores.score, 2)) == {(1, 0), (1, 3)}
score_heatmap(scores, colorbar_title="retrieval score")

# %% [markdown]
# ## 2. DuoAttention gates on a passkey task
#
# A needle of 6 words hidden in random filler and repeated at the end after one cue
# word. Each head's z becomes α·z_full + (1 − α)·z_stream, where z_stream is the head's
# output with attention limited to the first key and the last 4 keys. α starts at 1 and
# is fitted to keep the model's answer distribution (KL to the full model) under an L1
# push towards 0.

# %%
gates = rx.streaming_gates(model, rx.passkey_task(model), sink=1, window=4, steps=60)
print(gates.gates)
print(
    f"KL with every head streaming {gates.kl_all_streaming:.3f} nats; "
    f"with the fitted split {gates.kl_fitted:.4f}"
)
assert {tuple(x) for x in gates.retrieval.nonzero().tolist()} == {(1, 0), (1, 3)}
score_heatmap(rx.gate_scores(gates), colorbar_title="gate α")

# %% [markdown]
# ## 3. Data-free: the long-range peak, and echo scores
#
# No task at all: on repeated random tokens, the largest weight a query puts on a single
# key outside the sink and the window. (The whole mass outside would also be high for
# diffuse heads, which spread attention thin; a retrieval head puts its weight on one far
# key.) The echo score on the same tokens: the toy has no echo heads.

# %%
ids = rx.repeated_tokens(model)
peak = rx.long_range_scores(model, model.batch_from_ids(ids.tolist()), sink=1, window=4)
record = hs.capture(model, ids)
echo = echo_score(record.pattern, ids)
print(peak.score)
print(f"echo: max {float(echo.score.max()):.3f}, chance {float(echo.baseline[0, 0]):.3f}")
assert set(rank_by(peak.score, 2)) == {(1, 0), (1, 3)}
score_heatmap(peak, colorbar_title="long-range peak")

# %% [markdown]
# ## 4. The check: change the top heads, or streaming heads
#
# Greedy copy accuracy on a fresh copy task with the top two heads of the retrieval score
# changed, against every pair of heads it calls streaming. Two interventions: z ← 0
# (ablation), and DuoAttention's own, attention limited to sink + window.

# %%
fresh = rx.copy_task(model, prompts=16, source_length=16, seed=1)
checks = [
    rx.ablation_check(
        model,
        scores.score,
        by="retrieval score",
        threshold=0.1,
        draws=15,
        intervention=kind,
        task=fresh,
    )
    for kind in ("zero", "stream")
]
for check in checks:
    worst = min(item.accuracy for item in check.bottom)
    print(
        f"{check.intervention}: clean {check.clean.accuracy:.2f}, top {check.top.ablated} "
        f"{check.top.accuracy:.2f}, streaming pairs pooled "
        f"{check.bottom_pooled.accuracy:.2f} (worst pair {worst:.2f})"
    )
    assert check.separated
ablation_bars(checks)

# %% [markdown]
# Zero-ablating some streaming pairs also breaks copying: those pairs hold 0.2, the
# previous-token head the induction heads read from. It needs only the previous key, so
# it loses nothing as a streaming head (the "stream" row), yet it cannot be removed.
# Streaming is about what a head *sees*, not whether it matters.
#
# ## 5. Everything at once, with the long-context labels
#
# `retrieval_study` runs the above plus single-head ablation for the dormant label.

# %%
study = rx.retrieval_study(model, draws=4)
for (layer, head), labels in sorted(study.labels.items()):
    said = ", ".join(
        f"{x.label} ({x.score:.2f} vs baseline {x.baseline:.2f}, {x.support} {x.unit})"
        for x in labels
    )
    print(f"{layer}.{head}: {said}")
dormant = {
    head for head, labels in study.labels.items() if any(x.label == "dormant" for x in labels)
}
assert dormant == {(1, 1), (1, 2)}
