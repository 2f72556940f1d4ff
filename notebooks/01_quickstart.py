# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Quickstart: load, capture, look, save, ablate
#
# headscope runs a transformer with instrumented attention and keeps every head's
# attention map in a frozen, saveable **`AttentionRecord`**; analyses and figure builders
# work from records, never from hook strings.
#
# This notebook uses the built-in `toy-induction` model: a 2-layer, 4-head Llama (RoPE)
# trained by headscope on repeated random word sequences. It therefore contains the
# two-head induction circuit of Olsson et al. 2022 (*In-context Learning and Induction
# Heads*): a **previous-token head** in layer 0 whose output lets an **induction head**
# in layer 1 find, for the current token, the token that followed it last time.
# Everything below runs offline on a CPU in seconds.

# %%
import warnings

import plotly.io as pio
import torch

import headscope as hs

pio.renderers.default = "plotly_mimetype"  # figures as JSON: no browser, no CDN
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

# %% [markdown]
# ## Load a model
#
# `hs.load_model` takes a built-in name (`toy-induction`, `minilm`), a local directory
# written by `save_pretrained`, or a hub name (when the hub is reachable). It returns a
# wrapper around a transformer-lens `TransformerBridge` with a `ModelSpec`.

# %%
model = hs.load_model("toy-induction")
print(model)
model.spec

# %% [markdown]
# ## Capture attention
#
# The toy's vocabulary is 61 English words (plus `<pad>`, `<bos>`, `<unk>`). On a
# sequence that repeats, every token of the second copy can be predicted by looking up
# what followed it the first time: that is the induction head's job.
# `hs.capture` returns the record; `pattern` is `[layer, head, query, key]` and every
# row is a probability distribution over the keys the query may see.

# %%
words = "green moon rock ship cold pen door milk bird sky tea fire"
n = len(words.split())  # T = 12 words, repeated once
text = f"{words} {words}"

record = hs.capture(model, text)
print(record.pattern.shape, "= [layer, head, query, key]")
print(record.tokens[:4], "...", record.tokens[-2:])
print("BOS prepended:", record.provenance.prepended_bos)

assert record.pattern.shape == (2, 4, 2 * n + 1, 2 * n + 1)
assert torch.allclose(record.pattern.sum(-1), torch.ones(2, 4, 2 * n + 1))  # rows sum to 1

# %% [markdown]
# ## One head, then every head
#
# `headscope.figures` holds pure builders: tensors in, a plotly `Figure` out (the
# dashboard and the reports use the same ones). Layer 1, head 3 is an induction head
# (notebook 03 finds it without being told): each query of the second copy attends to
# the token *after* its earlier occurrence, a stripe T − 1 positions left of the
# diagonal.

# %%
from headscope.figures import maps

maps.attention_map(record.map(1, 3), record.tokens, title="toy-induction, layer 1 head 3").show()

# %%
second = torch.arange(n + 1, 2 * n + 1)  # queries of the second copy (position 0 is <bos>)
stripe = record.map(1, 3)[second, second - n + 1]  # key: the token after the earlier copy
print(f"mean attention of L1H3 on the induction stripe: {stripe.mean():.3f}")
assert stripe.mean() > 0.8

# %% [markdown]
# The thumbnail grid shows all 8 heads at once, each scaled to its own maximum.
# Layer 0 head 2 is a clean sub-diagonal (the previous-token head); two layer-1 heads
# park their attention on `<bos>` (attention sinks, see notebook 04).

# %%
maps.head_grid(record.pattern, title="toy-induction: every head (rows: layers)").show()

# %% [markdown]
# ## Save and load a record
#
# A record is plain data: tensors in `tensors.safetensors`, everything else (model
# spec, provenance, tokens) in a `record.json` sidecar that carries the tensor file's
# sha256. Nothing is pickled, and loading checks the hashes. The dashboard, reports and
# every analysis work from saved records with no model loaded.

# %%
import tempfile
from pathlib import Path

with tempfile.TemporaryDirectory() as directory:
    record.save(directory)
    print(sorted(path.name for path in Path(directory).iterdir()))
    loaded = hs.AttentionRecord.load(directory)

assert loaded.equals(record)  # bit-exact: tensors, tokens, spec and provenance
loaded.provenance

# %% [markdown]
# ## Ablate a head
#
# `hs.gate_heads(model, gates)` scales each head's output z (before W_O) by a gate
# inside a `with` block: 1 keeps the head, 0 removes it (zero ablation). z is where head
# ablation (Michel et al. 2019, *Are Sixteen Heads Really Better than One?*) and Causal
# Head Gating (Nam et al. 2025) act. We score the next-token loss on the second copy's
# tokens r_2..r_T, the tokens only induction can predict; chance is log 61 ≈ 4.11 nats.

# %%
import math

from headscope.experiments.metrics import evaluate_metric, next_token_loss

batch = model.tokenize(text)
targets = torch.zeros_like(batch.ids, dtype=torch.bool)
targets[:, n + 2 :] = True  # r_2..r_T of the second copy
loss = next_token_loss(targets)


def second_copy_loss(gates=None):
    if gates is None:
        return evaluate_metric(model, loss, batch).item()
    with hs.gate_heads(model, gates):
        return evaluate_metric(model, loss, batch).item()


clean = second_copy_loss()
ablated = {}
for layer in range(model.spec.n_layers):
    for head in range(model.spec.n_heads):
        gates = torch.ones(model.spec.n_layers, model.spec.n_heads)
        gates[layer, head] = 0.0
        ablated[(layer, head)] = second_copy_loss(gates)

print(f"second-copy loss, all heads: {clean:.3f} nats (chance: {math.log(61):.2f})")
for (layer, head), value in ablated.items():
    print(f"  without L{layer}H{head}: {value:.3f}  ({value - clean:+.3f})")

# %%
assert clean < 0.5
assert ablated[(0, 2)] > 3.0 and ablated[(1, 3)] > 3.0  # either circuit head breaks induction
assert abs(ablated[(1, 1)] - clean) < 0.01  # a sink head: removing it changes nothing

# %% [markdown]
# The same comparison as a next-token distribution. After the final `fire` the model
# predicts `green`: last time `fire` was followed by `green` (the start of the second
# copy). Without L1H3 that prediction falls apart.

# %%
from headscope.figures import predictions

gates = torch.ones(2, 4)
gates[1, 3] = 0.0
with torch.no_grad():
    probabilities = model.forward(batch).logits[0, -1].softmax(-1)
    with hs.gate_heads(model, gates):
        without = model.forward(batch).logits[0, -1].softmax(-1)

top = probabilities.topk(5).indices
candidates = [model.tokenizer.decode([int(i)]) for i in top]
print(candidates[0], f"{probabilities[top[0]]:.3f} ->", f"{without[top[0]]:.3f} without L1H3")
assert candidates[0] == "green"
predictions.next_token_bars(
    candidates,
    without[top],
    reference=probabilities[top],
    name="without L1H3",
    reference_name="all heads",
    title="after '... tea fire': next token",
).show()

# %% [markdown]
# ## Where next
#
# - **02** rollout, attention flow and gradient-weighted relevance, with the
#   content-free baseline;
# - **03** head importance: ablation, gradients, Causal Head Gating and patching
#   rediscover this circuit;
# - **04** position bias from the mask, attention sinks, lost in the middle;
# - **05** spectral diagnostics: QK/OV circuits, copying and composition scores,
#   random-matrix fits.
