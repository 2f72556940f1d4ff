"""Write the walkthrough notebooks (`notebooks/*.ipynb`) from the cells below.

This file is the source of the notebooks: edit a cell here, then run

    .venv/bin/python notebooks/build_notebooks.py

and commit both. The notebooks are saved without outputs (tests/notebooks checks
that, executes every notebook, and checks that the files match this script).
Cell ids are fixed, so rebuilding an unchanged notebook rewrites it byte for byte.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

#: Every notebook starts with this: figures travel as plotly JSON (rendered by
#: JupyterLab, Notebook 7 and VS Code), so no browser, no inlined JavaScript and
#: nothing fetched from a CDN, also when the notebook is executed in CI.
SETUP = """\
import warnings

import plotly.io as pio

pio.renderers.default = "plotly_mimetype"  # figures as JSON: no browser, no CDN
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import torch

import headscope as hs
"""


def md(text: str) -> tuple[str, str]:
    return "markdown", textwrap.dedent(text).strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", textwrap.dedent(text).strip("\n")


# -- 01 ----------------------------------------------------------------------------------------

QUICKSTART = [
    md("""
    # 01 · Quickstart: load, capture, look, save, ablate

    headscope runs a transformer with instrumented attention and keeps every head's
    attention map in a frozen, saveable **`AttentionRecord`**; analyses and figure builders
    work from records, never from hook strings.

    This notebook uses the built-in `toy-induction` model: a 2-layer, 4-head Llama (RoPE)
    trained by headscope on repeated random word sequences. It therefore contains the
    two-head induction circuit of Olsson et al. 2022 (*In-context Learning and Induction
    Heads*): a **previous-token head** in layer 0 whose output lets an **induction head**
    in layer 1 find, for the current token, the token that followed it last time.
    Everything below runs offline on a CPU in seconds.
    """),
    code(SETUP),
    md("""
    ## Load a model

    `hs.load_model` takes a built-in name (`toy-induction`, `minilm`), a local directory
    written by `save_pretrained`, or a hub name (when the hub is reachable). It returns a
    wrapper around a transformer-lens `TransformerBridge` with a `ModelSpec`.
    """),
    code("""
    model = hs.load_model("toy-induction")
    print(model)
    model.spec
    """),
    md("""
    ## Capture attention

    The toy's vocabulary is 61 English words (plus `<pad>`, `<bos>`, `<unk>`). On a
    sequence that repeats, every token of the second copy can be predicted by looking up
    what followed it the first time: that is the induction head's job.
    `hs.capture` returns the record; `pattern` is `[layer, head, query, key]` and every
    row is a probability distribution over the keys the query may see.
    """),
    code("""
    words = "green moon rock ship cold pen door milk bird sky tea fire"
    n = len(words.split())  # T = 12 words, repeated once
    text = f"{words} {words}"

    record = hs.capture(model, text)
    print(record.pattern.shape, "= [layer, head, query, key]")
    print(record.tokens[:4], "...", record.tokens[-2:])
    print("BOS prepended:", record.provenance.prepended_bos)

    assert record.pattern.shape == (2, 4, 2 * n + 1, 2 * n + 1)
    assert torch.allclose(record.pattern.sum(-1), torch.ones(2, 4, 2 * n + 1))  # rows sum to 1
    """),
    md("""
    ## One head, then every head

    `headscope.figures` holds pure builders: tensors in, a plotly `Figure` out (the
    dashboard and the reports use the same ones). Layer 1, head 3 is an induction head
    (notebook 03 finds it without being told): each query of the second copy attends to
    the token *after* its earlier occurrence, a stripe T − 1 positions left of the
    diagonal.
    """),
    code("""
    from headscope.figures import maps

    maps.attention_map(record.map(1, 3), record.tokens, title="toy-induction, layer 1 head 3").show()
    """),
    code("""
    second = torch.arange(n + 1, 2 * n + 1)  # queries of the second copy (position 0 is <bos>)
    stripe = record.map(1, 3)[second, second - n + 1]  # key: the token after the earlier copy
    print(f"mean attention of L1H3 on the induction stripe: {stripe.mean():.3f}")
    assert stripe.mean() > 0.8
    """),
    md("""
    The thumbnail grid shows all 8 heads at once, each scaled to its own maximum.
    Layer 0 head 2 is a clean sub-diagonal (the previous-token head); two layer-1 heads
    park their attention on `<bos>` (attention sinks, see notebook 04).
    """),
    code("""
    maps.head_grid(record.pattern, title="toy-induction: every head (rows: layers)").show()
    """),
    md("""
    ## Save and load a record

    A record is plain data: tensors in `tensors.safetensors`, everything else (model
    spec, provenance, tokens) in a `record.json` sidecar that carries the tensor file's
    sha256. Nothing is pickled, and loading checks the hashes. The dashboard, reports and
    every analysis work from saved records with no model loaded.
    """),
    code("""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        record.save(directory)
        print(sorted(path.name for path in Path(directory).iterdir()))
        loaded = hs.AttentionRecord.load(directory)

    assert loaded.equals(record)  # bit-exact: tensors, tokens, spec and provenance
    loaded.provenance
    """),
    md("""
    ## Ablate a head

    `hs.gate_heads(model, gates)` scales each head's output z (before W_O) by a gate
    inside a `with` block: 1 keeps the head, 0 removes it (zero ablation). z is where head
    ablation (Michel et al. 2019, *Are Sixteen Heads Really Better than One?*) and Causal
    Head Gating (Nam et al. 2025) act. We score the next-token loss on the second copy's
    tokens r_2..r_T, the tokens only induction can predict; chance is log 61 ≈ 4.11 nats.
    """),
    code("""
    import math

    from headscope.analyses.metrics import evaluate_metric, next_token_loss

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
    """),
    code("""
    assert clean < 0.5
    assert ablated[(0, 2)] > 3.0 and ablated[(1, 3)] > 3.0  # either circuit head breaks induction
    assert abs(ablated[(1, 1)] - clean) < 0.01  # a sink head: removing it changes nothing
    """),
    md("""
    The same comparison as a next-token distribution. After the final `fire` the model
    predicts `green`: last time `fire` was followed by `green` (the start of the second
    copy). Without L1H3 that prediction falls apart.
    """),
    code("""
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
    """),
    md("""
    ## Where next

    - **02** rollout, attention flow and gradient-weighted relevance, with the
      content-free baseline;
    - **03** head importance: ablation, gradients, Causal Head Gating and patching
      rediscover this circuit;
    - **04** position bias from the mask, attention sinks, lost in the middle;
    - **05** spectral diagnostics: QK/OV circuits, copying and composition scores,
      random-matrix fits.
    """),
]


# -- 02 ----------------------------------------------------------------------------------------

FLOW = [
    md("""
    # 02 · Attention rollout, attention flow and relevance

    Raw attention says where one head looks in one layer. To ask *which input tokens
    feed an output position through the whole network*, Abnar & Zuidema 2020
    (*Quantifying Attention Flow in Transformers*) propose two answers, both on the
    augmented matrix Â_l = ½·Ā_l + ½·I (heads averaged, then the residual stream added):

    - **rollout**: R_1 = Â_1, R_l = Â_l · R_{l−1}; rows always sum to 1;
    - **flow**: the max-flow from output node (L, i) to input node (0, j) in the layered
      graph whose edges carry Â as capacities, one pair at a time.

    Chefer et al. 2021 (*Generic Attention-model Explainability*) weight each head's map
    by the gradient of the prediction: Ā_l = mean_h[(∇A ⊙ A)⁺], R ← R + Ā_l·R.

    In a causal decoder every row drifts toward token 0 by construction, so each result
    is shown next to the **content-free baseline**: the same computation on uniform
    attention over the mask.
    """),
    code(SETUP),
    code("""
    from headscope.analyses.flow import (
        attention_flow,
        augment,
        content_free_baseline,
        relevance,
        rollout,
        rollout_per_head,
    )
    from headscope.figures import flow as flow_figures
    from headscope.figures import maps

    model = hs.load_model("toy-induction")
    text = "red cat blue dog sun tree red cat blue dog sun"
    record = hs.capture(model, text)
    tokens = record.tokens
    n = len(tokens)
    print(n, "tokens:", tokens)
    """),
    md("""
    ## Rollout

    `rollout` returns R after every layer, `[layer, query, key]`, in float64. Two checks
    from the definition: rows sum to 1, and R_1 = Â_1, R_2 = Â_2·Â_1 with `augment`
    giving Â.
    """),
    code("""
    R = rollout(record.pattern)  # [layer, query, key]
    ahat = augment(record.pattern)  # ½·mean_h A + ½·I per layer

    row_sums = R.sum(-1)
    print("rollout row sums: min", row_sums.min().item(), "max", row_sums.max().item())
    assert (row_sums - 1).abs().max() < 1e-6  # exact up to the float32 of the captured maps
    assert torch.allclose(R[0], ahat[0]) and torch.allclose(R[1], ahat[1] @ ahat[0])
    """),
    md("""
    `rollout_per_head` composes one head of layer l with the rollout below it,
    Â[l, h]·R_{l−1}. For the induction head (layer 1, head 3), the second copy's queries
    reach back to the first copy through the previous-token head underneath.
    """),
    code("""
    per_head = rollout_per_head(record.pattern)  # [layer, head, query, key]
    assert (per_head.sum(-1) - 1).abs().max() < 1e-6
    maps.attention_map(per_head[1, 3], tokens, title="per-head rollout, layer 1 head 3").show()
    """),
    md("""
    ## Attention flow

    With two layers, paths through different middle tokens share no edge, so the
    max-flow has a closed form: F[i, j] = Σ_k min(Â_2[i, k], Â_1[k, j]) (compare rollout's
    Σ_k Â_2[i, k]·Â_1[k, j]). `normalize=False` returns these raw max-flow values; the
    default divides each row by its sum.
    """),
    code("""
    F = attention_flow(record.pattern)  # rows sum to 1
    raw = attention_flow(record.pattern, normalize=False)
    closed_form = torch.minimum(ahat[1][:, :, None], ahat[0][None]).sum(1)
    print("max |flow − closed form| =", (raw - closed_form).abs().max().item())
    assert torch.allclose(raw, closed_form, atol=1e-12)
    assert torch.allclose(F.sum(-1), torch.ones(n, dtype=F.dtype), atol=1e-12)
    """),
    md("""
    ## Relevance, and the content-free baseline

    The last token is the second `sun`; the model predicts `tree`, the token that followed
    `sun` before. `relevance` backpropagates the logit of that prediction (the default
    target: the top prediction at the last position).

    Apart from the token itself, rollout and flow give `<bos>` the largest share of the
    last row: two layer-1 heads are attention sinks (notebook 04), and rollout counts them
    like any other head. The
    content-free baseline shows how much of that is the causal mask alone. Relevance
    keeps only the attention that moved the prediction, and points at `tree`.
    """),
    code("""
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
    """),
    code("""
    tree = tokens.index("tree")  # position 6, the token after the first `sun`
    assert int(rel[q, :q].argmax()) == tree  # relevance finds the induction source
    assert int(R[-1, q, :q].argmax()) == 0 and int(F[q, :q].argmax()) == 0  # rollout/flow: <bos>
    assert R[-1, q, 0] > 2 * base_rollout[q, 0]  # more <bos> than the mask alone explains
    """),
    code("""
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
    """),
    md("""
    ## A bidirectional encoder: minilm

    `minilm` (all-MiniLM-L6-v2) is a 6-layer BERT encoder, so flow runs headscope's exact
    layered max-flow (checked against networkx in the tests). Known answer for the
    baseline: uniform bidirectional attention J/n gives R_L = 0.5^L·I + (1 − 0.5^L)·J/n.
    """),
    code("""
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
    """),
    md("""
    minilm has no trained LM head, so relevance needs a scalar target of our own: here
    the cosine between the sentence embedding (mean-pooled last layer, as
    sentence-transformers computes it) and the embedding of a short paraphrase. The
    embedding averages every position, so the sentence-level relevance is the mean of
    R's rows.
    """),
    code("""
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
    """),
]


# -- 03 ----------------------------------------------------------------------------------------

HEADS = [
    md("""
    # 03 · Head importance: rediscovering toy-induction's circuit

    The toy model was trained to form a previous-token head (layer 0) and an induction
    head (layer 1). Here we pretend not to know which heads they are and let each method
    find them, then check that the methods agree:

    1. **taxonomy** (transformer-lens head-detector style, categories of Olsson et al.
       2022): attention mass on each head type's ideal pattern;
    2. **ablation**: the loss change when one head's z is zeroed (or mean-ablated);
    3. **gradient importance** (Michel et al. 2019, *Are Sixteen Heads Really Better than
       One?*): I_h = E_x |∂L/∂ξ_h| with gates ξ = 1 on z, normalised per layer;
    4. **Causal Head Gating** (Nam et al. 2025): fitted sigmoid gates, pushed up (λ > 0)
       and down (λ < 0), sort heads into facilitating, interfering and irrelevant;
    5. **activation and attribution patching** (Nanda 2023; Syed et al. 2023): clean z put
       back into a corrupted run, exactly or to first order;
    6. the **greedy pruning curve** of Michel et al.

    The metric throughout is the next-token loss on the second copy of a repeated random
    sequence, the tokens only induction can predict.
    """),
    code(SETUP),
    code("""
    import math

    import pandas as pd

    from headscope.analyses.heads import (
        ablation_scores,
        activation_patching,
        attribution_patching,
        causal_head_gating,
        clean_metric,
        gradient_importance,
        pruning_curve,
        top_heads,
    )
    from headscope.analyses.metrics import next_token_loss, second_copy_targets
    from headscope.analyses.taxonomy import head_labels, head_scores
    from headscope.figures import heads as head_figures
    from headscope.models.induction_data import repeated_random_batch

    model = hs.load_model("toy-induction")
    specials = set(model.tokenizer.all_special_ids)  # <pad>, <bos>, <unk>
    vocab = (max(specials) + 1, model.spec.d_vocab)  # the 61 words
    bos = model.spec.bos_token_id
    log_v = math.log(vocab[1] - vocab[0])  # chance-level loss
    print("word ids", vocab, "chance loss", round(log_v, 3))
    """),
    md("""
    ## 1. Taxonomy: what each head attends to

    64 sequences `[<bos>, r_1..r_20, r_1..r_20]` (the model card's evaluation set).
    `head_scores` gives every category's score per head, `head_labels` the primary label.
    """),
    code("""
    probe, probe_layout = repeated_random_batch(
        64, 20, vocab=vocab, bos_id=bos, generator=torch.Generator().manual_seed(1234)
    )
    record = hs.capture(model, probe)  # [batch, layer, head, query, key]
    scores = head_scores(record)
    labels = head_labels(record)
    primary = [
        [scores[label][layer, head].item() if label != "none" else float("nan")
         for head, label in enumerate(row)]
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
    """),
    md("""
    ## 2. Ablation

    16 fresh sequences with a 3-token random prefix. `ablation_scores` returns
    metric(ablated) − metric(clean) per head; all 8 ablations run in batched forwards.
    Zero ablation sets z ← 0; mean ablation sets z ← its per-position mean over the
    prompts (Michel et al. use zero; mean ablation keeps z on-distribution).
    """),
    code("""
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
    """),
    md("""
    ## 3. Gradient importance (Michel et al. 2019)

    One backward pass with a gate per prompt and head gives every per-example gradient;
    the absolute value is taken per example, then averaged, then each layer is
    normalised by its L2 norm.
    """),
    code("""
    gradient = gradient_importance(model, ids, metric=loss)
    print("top-2 by gradient importance:", top_heads(gradient, 2))
    head_figures.importance_heatmap(gradient, title="Gradient importance (per-layer L2)").show()
    assert set(top_heads(gradient, 2)) == circuit
    """),
    md("""
    ## 4. Causal Head Gating (Nam et al. 2025)

    Gates G = σ(θ) on z, fitted on the frozen model: first with λ = 0 from random gates,
    then with λ > 0 (which pushes gates *up*: G⁺) and λ < 0 (down: G⁻).
    Facilitating heads stay on in both (G⁻ high), irrelevant ones go wherever the
    regulariser pushes them (G⁺ ≈ 1, G⁻ ≈ 0). The paper aggregates ≥ 5 seeds; 3 seeds
    and 30 steps per phase keep this notebook fast and already separate the roles.
    """),
    code("""
    chg = causal_head_gating(model, ids, metric=loss, seeds=3, steps=30, lam=1.0, progress=False)
    head_figures.label_grid(
        chg.roles, scores=chg.facilitation, title="CHG roles (facilitation = G⁻)"
    ).show()
    print("most facilitating:", top_heads(chg.facilitation, 3))
    for head in circuit:
        assert chg.roles[head[0]][head[1]] == "facilitating", head
    assert top_heads(chg.facilitation, 1)[0] in induction_heads
    """),
    md("""
    ## 5. Activation and attribution patching

    The corrupted run replaces the second copy with new random tokens; the metric scores
    the *clean* continuation on it (`labels=ids`). Patching one head's clean z back
    reports (M_patch − M_corr)/(M_clean − M_corr). Only heads that *read* the repeated
    context can restore it on their own, so both layer-1 induction heads come first,
    and attribution patching (two forwards, one backward) agrees with activation
    patching (one forward per head).
    """),
    code("""
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
    """),
    md("""
    ## 6. Greedy pruning curve (Michel et al. 2019)

    Mask the lowest-ranked p% of heads, p = 0, 10, …, 100. Half the heads can go for
    free; the loss jumps only when a circuit head is removed.
    """),
    code("""
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
    """),
    md("""
    ## Summary

    Every method puts the same heads on top. The table lists the top three heads by each.
    """),
    code("""
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
    """),
]


# -- 04 ----------------------------------------------------------------------------------------

POSITION = [
    md("""
    # 04 · Position bias and attention sinks

    **Position bias from the mask** (Wu, Wang, Jegelka & Jadbabaie 2025, *On the Emergence
    of Position Bias in Transformers*): the attention mask is a directed graph, and the
    cumulative influence P^(t) = A^(t)···A^(1) of t stacked layers (rollout without the
    residual) favours some positions before any content is seen. Causal masks drift to
    the first token; a decay mask (ALiBi-like scores −(i−j)·m) peaks at a distance that
    grows with depth.

    **Attention sinks** (Xiao et al. 2023, *StreamingLLM*; the metric of Gu et al. 2025):
    α_k = (1/|Q_k|)·Σ_{q∈Q_k} A[q, k], the mean attention key k receives from the queries
    that can see it; a head is a sink head for k when α_k > 0.3.

    **Lost in the middle** (Liu et al. 2023): a metric as a function of where the
    relevant item sits.
    """),
    code(SETUP),
    code("""
    import math

    import pandas as pd

    from headscope.analyses.position import (
        cumulative_influence,
        influence_by_distance,
        mask_attention,
        mask_graph,
        most_influential_distance,
        position_curve,
        sink_heads,
        sink_scores,
    )
    from headscope.analyses.taxonomy import head_scores
    from headscope.figures import position as position_figures
    """),
    md("""
    ## Masks as graphs

    `mask_graph` gives the mask as a networkx `DiGraph` (edge i → j: query i may attend to
    key j); `mask_attention` the content-free attention over it (uniform over allowed
    keys, or softmax of the decay scores).
    """),
    code("""
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
    """),
    md("""
    ## Known answers of Wu et al.

    Uniform causal attention: P^(t)[1, 0] = 1 − 2^(−t) exactly, and for N = 8 the last
    row's mass on the first token is .125, .340, .728, .975 after t = 1, 2, 4, 8 layers.
    Decay mask with γ = e^(−m) = 0.8: after k layers the most influential distance is
    (k − 1)/(e^m − 1) = 4, 36, 76 for k = 2, 10, 20.
    """),
    code("""
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
    """),
    md("""
    Influence by distance for four masks (N = 64) after 1, 2, 4 and 8 layers: the causal
    mask piles influence onto the longest distances (the first token), a sliding window
    spreads it out to a bounded reach, the decay mask moves its peak outward with depth.
    """),
    code("""
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
    """),
    code("""
    decay_curves = influence_by_distance(cumulative_influence(masks["decay"], n_layers=8))
    position_figures.influence_by_distance(
        decay_curves[[d - 1 for d in depths]],
        layer_index=depths,
        title="Decay mask (γ = 0.8), N = 64: influence by distance after 1, 2, 4, 8 layers",
    ).show()
    """),
    md("""
    ## The model's own influence vs the mask

    toy-induction on 32 repeated sequences `[<bos>, r_1..r_20, r_1..r_20]` (T = 20): its
    cumulative influence (heads averaged, no residual, as Wu et al.) next to the same
    computation on the causal mask alone. After layer 0 the model's influence peaks at
    distance 1–2 (the previous-token and local heads). After layer 1 a bump at distance
    T to T + 1 stands far above the mask: the induction head reads the token after the
    earlier copy (distance T − 1) through the previous-token head below it (one more
    step). The rising tail at long distances is `<bos>`, the sink.
    """),
    code("""
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
    print(f"after layer 1: peak at distance {bump}; at distance T = {repeat}: model "
          f"{model_curve[-1, repeat]:.3f} vs mask {mask_curve[-1, repeat]:.3f}")
    assert bump in (repeat, repeat + 1)
    assert model_curve[-1, repeat] > 2 * mask_curve[-1, repeat]
    assert int(model_curve[0].argmax()) in (1, 2)  # layer 0: the previous token
    """),
    md("""
    ## Attention sinks

    Known answer: uniform causal attention over T = 64 tokens gives α_0 = H_T/T
    (H_T the harmonic number) ≈ 0.074, far below the 0.3 threshold: a causal mask alone
    does not make a sink. A head whose every query attends to key 0 has α_0 = 1.
    """),
    code("""
    T = 64
    uniform = mask_attention("causal", T)[None, None]  # one layer, one head
    alpha = sink_scores(uniform)[0, 0]
    harmonic = sum(1 / k for k in range(1, T + 1))
    print(f"uniform causal, T = {T}: α_0 = {alpha[0]:.4f}, H_T/T = {harmonic / T:.4f}")
    assert abs(alpha[0].item() - harmonic / T) < 1e-12
    assert sink_heads(uniform) == []

    one_hot = torch.zeros(1, 1, T, T)
    one_hot[..., 0] = 1.0
    assert sink_scores(one_hot)[0, 0, 0].item() == 1.0 and sink_heads(one_hot) == [(0, 0)]
    """),
    md("""
    toy-induction prepends `<bos>` (the record's provenance says so). Two layer-1 heads
    put almost all their attention there (the taxonomy labels them first-token sinks).
    The two induction heads also pass α_0 > 0.3: on the first copy there is nothing to
    look up yet, and they park on `<bos>` until the repeat starts.
    """),
    code("""
    print("BOS prepended:", record.provenance.prepended_bos)
    toy_alpha = sink_scores(record.pattern).mean(0)  # [layer, head, key], mean over prompts
    toy_sinks = sink_heads(record.pattern)  # batched: α averaged over the prompts
    taxonomy = head_scores(record)
    first_token_sinks = {tuple(p) for p in (taxonomy["first_token_sink"] > 0.5).nonzero().tolist()}
    induction_heads = {tuple(p) for p in (taxonomy["induction"] > 0.5).nonzero().tolist()}
    print("sink heads (α_0 > 0.3):", toy_sinks)
    print("taxonomy: first-token sinks", sorted(first_token_sinks),
          "induction", sorted(induction_heads))
    assert len(first_token_sinks) == 2
    assert set(toy_sinks) == first_token_sinks | induction_heads
    position_figures.sink_scores(
        toy_alpha, record.tokens[0], title="toy-induction: α_k per head"
    ).show()
    """),
    md("""
    **minilm**, a bidirectional BERT encoder: every query sees every key, so α_k is the
    mean over all T queries, and uniform attention gives α_k = 1/T. The tokenizer frames
    each sentence as `[CLS] … [SEP]` (no BOS is prepended; `[CLS]` is key 0). Clark et al.
    2019 (*What Does BERT Look At?*) found BERT-base heads parking attention on special
    tokens, mostly `[SEP]` in the middle layers; in minilm it is `[CLS]`, for most heads
    of every layer, and no head is a `[SEP]` sink.
    """),
    code("""
    encoder = hs.load_model("minilm")
    sentences = [
        "The cat sat on the mat.",
        "Attention sinks appear in many pretrained transformers.",
        "A short sentence about the weather in Paris and London today.",
        "Stock prices fell sharply after the announcement.",
    ]
    enc = hs.capture(encoder, sentences)  # right-padded batch
    lengths = torch.tensor(enc.lengths)
    enc_alpha = sink_scores(enc.pattern, causal=False, lengths=lengths)  # [batch, layer, head, key]
    cls_sinks = sink_heads(enc.pattern, key=0, causal=False, lengths=lengths)
    sep_alpha = torch.stack([enc_alpha[b, :, :, n - 1] for b, n in enumerate(enc.lengths)]).mean(0)
    n_heads = encoder.spec.n_layers * encoder.spec.n_heads
    print(f"[CLS] sink heads: {len(cls_sinks)} of {n_heads}")
    print(f"[SEP] sink heads: {int((sep_alpha > 0.3).sum())} of {n_heads}")
    print("uniform bidirectional baseline α_k = 1/T, e.g.", [round(1 / n, 3) for n in enc.lengths])
    assert len(cls_sinks) > n_heads // 2
    assert all(1 / n < 0.3 for n in enc.lengths)  # the mask alone makes no sink
    first = enc.prompt(0)
    position_figures.sink_scores(
        sink_scores(first.pattern, causal=False),
        first.tokens,
        title=f"minilm: α_k per head, {sentences[0]!r}",
    ).show()
    """),
    md("""
    ## Lost in the middle

    `position_curve` evaluates a metric on prompts built for each position of the relevant
    item. The task for the toy: 40 random words with a key–value pair `A B` at position p,
    ending with `A`; the metric is the log-probability of `B` at the end (higher is
    better; chance is −log 61 ≈ −4.1). The toy was trained only on adjacent repeats of
    8–30 tokens, so single-pair recall is out of distribution; the curve shows where it
    generalises: retrieval works best with the pair in the middle, and worse when it sits
    right after `<bos>` or within a few tokens of the query.
    """),
    code("""
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
    """),
    code("""
    print(f"middle {curve.middle:.3f}, first − middle {curve.first_minus_middle:+.3f}, "
          f"last − middle {curve.last_minus_middle:+.3f} (chance {-math.log(61):.2f})")
    assert curve.middle > -math.log(61) + 1.0  # mid-context recall well above chance
    assert abs(curve.first_minus_middle - (curve.values[0].item() - curve.middle)) < 1e-9
    """),
]


# -- 05 ----------------------------------------------------------------------------------------

SPECTRAL = [
    md("""
    # 05 · Spectral diagnostics

    Weights say what a head *can* do on any input. Following Elhage et al. 2021 (*A
    Mathematical Framework for Transformer Circuits*), each head has a QK circuit
    W_Q·W_Kᵀ (where it looks) and an OV circuit W_V·W_O (what it writes), both
    d_model × d_model of rank ≤ d_head (row-vector convention, LayerNorm gains folded in).

    - **copying score** Re(Σλ)/Σ|λ| of the full OV circuit W_E·OV·W_U: +1 when the head
      writes back the tokens it attends to;
    - **composition scores** ‖OV₁·R₂‖_F / (‖OV₁‖_F‖R₂‖_F): how much a layer-1 head reads
      a layer-0 head's output as queries (Q), keys (K) or values (V); random heads give
      ≈ 1/√d_model;
    - **random-matrix fits**: Marchenko–Pastur bulk and outliers; WeightWatcher-style
      heavy-tail α (Martin & Mahoney 2021);
    - **attention-map spectra**: effective rank per head (Roy & Vetterli 2007), and rank
      collapse of the residual stream across layers (Dong et al. 2021).

    The induction circuit predicts what to find: the induction head copies, and it
    *K-composes* with the previous-token head (its keys are built from the previous
    token's identity).
    """),
    code(SETUP),
    code("""
    import pandas as pd

    from headscope.analyses.spectral import (
        attention_effective_rank,
        composition_baseline,
        composition_scores,
        copying_scores,
        head_weights,
        heavy_tail_alpha_by_layer,
        marchenko_pastur_fit,
        rank_collapse,
        spectra,
    )
    from headscope.analyses.taxonomy import head_scores
    from headscope.figures import heads as head_figures
    from headscope.figures import spectral as spectral_figures
    from headscope.models.induction_data import repeated_random_batch

    model = hs.load_model("toy-induction")
    spec = model.spec
    specials = set(model.tokenizer.all_special_ids)
    vocab = (max(specials) + 1, spec.d_vocab)
    """),
    md("""
    First, find the circuit from attention alone (as notebook 03 does), so that the
    weight-based checks below are independent of it.
    """),
    code("""
    ids, layout = repeated_random_batch(
        32, 20, vocab=vocab, bos_id=spec.bos_token_id, generator=torch.Generator().manual_seed(1234)
    )
    record = hs.capture(model, ids)
    scores = head_scores(record)
    previous_head = int(scores["previous_token"][0].argmax())
    induction = scores["induction"][1]
    induction_head = int(induction.argmax())
    induction_heads = [int(h) for h in (induction > 0.8).nonzero().flatten()]
    print(f"previous-token head L0H{previous_head}, induction head L1H{induction_head}, "
          f"all induction heads {['L1H%d' % h for h in induction_heads]}")
    """),
    md("""
    ## QK and OV spectra, copying scores

    `spectra` computes everything from d_head × d_head products (no d_model × d_model
    matrix is formed): eigenvalues, singular values, stable and effective rank of each
    circuit, and the OV copying score.
    """),
    code("""
    result = spectra(model)
    copying = result.copying  # [layer, head]
    assert torch.allclose(copying, copying_scores(model))
    head_figures.layer_head_heatmap(
        copying, title="OV copying score", colorbar_title="copying", signed=True, zmin=-1, zmax=1
    ).show()
    print("copying score of the induction heads:",
          [round(copying[1, h].item(), 3) for h in induction_heads])
    assert copying[1, induction_head] > 0.7
    assert all(copying[1, h] > 0.7 for h in induction_heads)
    """),
    code("""
    names = [f"L{layer}H{head}" for layer in range(spec.n_layers) for head in range(spec.n_heads)]
    ov = result.ov.singular_values.reshape(len(names), -1)
    spectral_figures.singular_spectra(
        dict(zip(names, ov)),
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
    """),
    md("""
    ## Composition

    `composition_scores(model, kind)` returns all-pairs scores `[layer, head, layer, head]`
    and the random baseline for this d_model and d_head (E[score²] = 1/d_model for
    independent Gaussian heads). The previous-token head's K-composition into the
    induction head should stand far above it.
    """),
    code("""
    d_model, d_head = spec.d_model, spec.d_head
    baseline = composition_baseline(d_model, d_head)
    print(f"random baseline {baseline:.4f} vs 1/sqrt(d_model) = {d_model ** -0.5:.4f}")
    assert abs(baseline - d_model**-0.5) < 0.1 * d_model**-0.5

    table = {}
    for kind in ("Q", "K", "V"):
        composition = composition_scores(model, kind)
        table[kind] = composition.scores[0, :, 1, induction_head].numpy()  # layer-0 writers
    k_scores = composition_scores(model, "K")
    pd.DataFrame(table, index=[f"L0H{h} → L1H{induction_head}" for h in range(spec.n_heads)]).round(3)
    """),
    code("""
    k_block = k_scores.scores[0, :, 1, :]  # [layer-0 writer, layer-1 reader]
    ratio = k_block[previous_head, induction_head] / k_scores.baseline
    print(f"K-composition L0H{previous_head} → L1H{induction_head}: "
          f"{k_block[previous_head, induction_head]:.3f} = {ratio:.1f} × baseline")
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
    """),
    md("""
    ## Random-matrix theory: Marchenko–Pastur

    For an N × M matrix of i.i.d. entries the eigenvalues of (1/N)·WᵀW fill the
    Marchenko–Pastur bulk σ²(1 ± 1/√Q)², Q = N/M; eigenvalues above the edge plus a
    Tracy–Widom margin are outliers (structure). Known answers first: a Gaussian matrix has
    no outlier, a planted rank-one spike gives exactly one. A *product* W_Q·W_Kᵀ of
    independent Gaussians is not MP at all (low rank): the plain fit reports false spikes,
    and the shuffled-weights null (pass the factors) removes them.
    """),
    code("""
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
    """),
    md("""
    A trained model: minilm's per-layer query projection (all 12 heads side by side,
    384 × 384). Far more eigenvalues leave the bulk than in the Gaussian case, whichever
    null is used: training put structure in these weights.
    """),
    code("""
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
    """),
    code("""
    fit = fits[0]
    assert fit.n_outliers > 10
    spectral_figures.marchenko_pastur(
        fit.eigenvalues, sigma2=fit.sigma2, ratio=fit.aspect_ratio, outlier_threshold=fit.threshold,
        title="minilm layer 0 W_Q: eigenvalues of WᵀW/N and the fitted MP law",
    ).show()
    """),
    md("""
    Heavy-tail α (WeightWatcher style: power-law fit of the eigenvalue tail, x_min by
    minimum KS distance). One head's d_head values are too few for a fit, so the OV
    spectra are pooled per layer: 12 heads × 32 = 384 eigenvalues. Martin & Mahoney read
    α of roughly 2–6 as well-trained layers.
    """),
    code("""
    encoder_spectra = spectra(encoder)
    tails = heavy_tail_alpha_by_layer(encoder_spectra.ov.singular_values**2)
    pd.DataFrame(
        {"α": tails.alpha.numpy(), "x_min": tails.x_min.numpy(), "KS": tails.ks.numpy(),
         "eigenvalues pooled": tails.n_eigenvalues},
        index=[f"layer {layer} OV" for layer in range(6)],
    ).round(3)
    """),
    md("""
    ## Attention-map spectra and rank collapse

    The effective rank exp(H(σ/Σσ)) of an attention map is 1 for a map that sends every
    query to one key (a sink) and N for the identity; a previous-token head is close to a
    shift matrix, so its rank is close to N.
    """),
    code("""
    ranks = attention_effective_rank(record.pattern).mean(0)  # [layer, head], mean over prompts
    head_figures.layer_head_heatmap(
        ranks, title=f"Effective rank of the attention maps (N = {ids.shape[1]})"
    ).show()
    sinks = [h for h in range(spec.n_heads) if scores["first_token_sink"][1, h] > 0.9]
    print("previous-token head:", round(ranks[0, previous_head].item(), 2),
          " sink heads:", [round(ranks[1, h].item(), 2) for h in sinks])
    assert sinks and all(ranks[1, h] < 2 for h in sinks)
    assert ranks[0, previous_head] > ids.shape[1] / 2
    """),
    md("""
    Rank collapse (Dong, Cordonnier & Loukas 2021): pure attention drives token
    representations toward one vector; the residual stream and MLPs resist it. The
    measure is ‖X − 1·x̄ᵀ‖_F/‖X‖_F of each block's output (transformer-lens
    `hook_resid_post`, here read through `hs.Site`), 0 for full collapse.
    """),
    code("""
    sentence = "The quick brown fox jumps over the lazy dog because it was bored."
    batch = encoder.tokenize(sentence)
    residuals = {}


    def keep(layer):
        def hook(tensor, hook):
            residuals[layer] = tensor.detach()[0]
            return tensor

        return hook


    sites = [hs.Site(layer, "resid_post") for layer in range(encoder.spec.n_layers)]
    with torch.no_grad():
        encoder.forward(batch, hooks=[(site.hook_name, keep(site.layer)) for site in sites])
    collapse = rank_collapse(torch.stack([residuals[layer] for layer in range(len(sites))]))
    print("minilm, ‖X − 1x̄ᵀ‖/‖X‖ after each layer:", [round(v, 3) for v in collapse.tolist()])
    assert ((collapse > 0) & (collapse <= 1)).all()
    """),
]


NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_quickstart": QUICKSTART,
    "02_flow_and_rollout": FLOW,
    "03_head_importance": HEADS,
    "04_position_and_sinks": POSITION,
    "05_spectral": SPECTRAL,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook `name` (a key of NOTEBOOKS), without outputs, with fixed cell ids."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    cells = []
    for index, (kind, source) in enumerate(NOTEBOOKS[name]):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(source)
        cell.id = f"{name[:2]}-{index:02d}"
        cells.append(cell)
    notebook.cells = cells
    nbformat.validate(notebook)
    return notebook


def render(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


def main() -> int:
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        path.write_text(render(build(name)), encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
