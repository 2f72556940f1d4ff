# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Training dynamics and model diffing
#
# Olsson et al. 2022 (*In-context Learning and Induction Heads*) found that induction
# heads form in a **phase change**: over a short stretch of training the in-context loss
# (the loss late in the context minus the loss early in it) drops sharply, at the same
# steps where the induction scores rise. headscope ships eight checkpoints of the run that
# trained `toy-induction` (steps 0 to 3,000, fp16 weights sharing the built-in's config
# and tokenizer) and measures every head at every checkpoint:
#
# 1. taxonomy scores (previous-token, induction, ...; docs/methods.md §2.7) with the
#    chance level of a head attending evenly;
# 2. importance: the harm to the repeated-token loss when the head's output is zeroed;
# 3. the in-context loss, with 95% bootstrap intervals over the prompts.
#
# Then it diffs two checkpoints head by head: deltas with intervals, label changes, and
# heads matched across the two models by the correlation of their attention maps.
# The same code runs on any list of `save_pretrained` checkpoints (e.g. Pythia revisions
# pulled with `headscope pull EleutherAI/pythia-70m DIR/step1000 --revision step1000`).

# %%
import warnings

import plotly.io as pio

import headscope as hs
from headscope.analyses.dynamics import phase_change
from headscope.experiments.diffing import diff_models
from headscope.experiments.dynamics import repeat_prompts, training_dynamics
from headscope.figures import dynamics as dynamics_figures

pio.renderers.default = "plotly_mimetype"  # figures as JSON: no browser, no CDN
warnings.filterwarnings("ignore", message="IProgress not found")

series = hs.load_checkpoints("toy-induction")
print(series.name, series.steps)

# %% [markdown]
# ## 1. Every checkpoint on the same prompts
#
# 16 prompts of 10 random common words, repeated (`repeat_prompts`): the second copy can
# only be predicted in context. One model is loaded at a time.

# %%
prompts = repeat_prompts()
print(prompts[0])
dynamics = training_dynamics(series, prompts)
for step, score, loss in zip(
    dynamics.steps, dynamics.head_series(1, 3), dynamics.in_context_loss, strict=True
):
    print(f"step {step:5d}: head 1.3 induction {score:.3f}, in-context loss {loss:+.3f} nats")
print(f"chance (uniform attention): {dynamics.chance['induction']:.3f}")

# %% [markdown]
# ## 2. The phase change
#
# The checkpoint interval where head 1.3's induction score rose fastest (per training
# step: the checkpoints are unevenly spaced), and the one where the in-context loss
# dropped fastest, are the same or adjacent: the phase change.

# %%
phase = phase_change(dynamics, 1, 3)
print(phase)
assert phase.coincide and phase.score_after > 0.3
assert float(dynamics.head_series(1, 3)[-1]) > 0.8
dynamics_figures.dynamics_figure(dynamics, phase=phase, chance=dynamics.chance["induction"])

# %% [markdown]
# The previous-token head (0.2) forms in the same window (it is what the induction head
# reads), and both become important at once:

# %%
dynamics_figures.dynamics_figure(
    dynamics,
    category="previous_token",
    heads=[(0, h) for h in range(4)],
    phase=phase,
    chance=dynamics.chance["previous_token"],
)

# %%
dynamics_figures.importance_figure(dynamics, [(0, 2), (1, 0), (1, 3)], phase=phase)

# %% [markdown]
# Labels per checkpoint: head 1.1 is an induction head at steps 800 and 1200 and a
# `<bos>` sink at 3000 (the head-sparsity penalty of the training loss pruned it).

# %%
for step, labels in zip(dynamics.steps, dynamics.labels, strict=True):
    print(step, [label for row in labels for label in row])

# %% [markdown]
# ## 3. Diffing two checkpoints
#
# Step 1200 against step 3000: the delta of each head's induction score (B − A) with its
# 95% bootstrap interval over the prompts ("n.s." where it includes 0), and per layer the
# Hungarian matching of B's heads to A's by attention-map correlation.

# %%
diff = diff_models(series.load(1200), series.load(3000), prompts)
print(
    "label changes:",
    [
        f"{layer}.{head}: {diff.labels_a[layer][head]} -> {diff.labels_b[layer][head]}"
        for layer, head in diff.label_changed.nonzero().tolist()
    ],
)
print("matching per layer:", diff.matching.tolist())
dynamics_figures.diff_heatmap(diff, "induction")

# %%
dynamics_figures.similarity_heatmap(diff, 1)

# %% [markdown]
# The same report from the command line: `headscope dynamics toy-induction --out DIR`
# writes `dynamics.html` and `dynamics.json` (a diff of the first and last checkpoint by
# default, `--diff 1200,3000` for others); `headscope dynamics DIR/step* --out DIR2` runs
# it on any save_pretrained checkpoints named by step.
