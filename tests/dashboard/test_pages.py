"""Page callbacks as plain functions: what each page returns for a prompt,
and that failures become messages instead of exceptions."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from dash import html

import headscope as hs
from headscope.analyses.taxonomy import head_scores
from headscope.dashboard import flow, head, importance, overview, playground, position
from headscope.dashboard.examples import TOY_PROMPTS
from headscope.dashboard.messages import describe, guarded
from headscope.errors import InputError

PROMPT = {"prompt": TOY_PROMPTS[0], "search": "?prompt=" + TOY_PROMPTS[0].replace(" ", "+")}
#: The induction prompt of the issue and of notebook 02.
INDUCTION = "red cat blue dog sun tree red cat blue dog sun"
XSS = "<img src=x onerror=alert(1)>"


def texts(component) -> list[str]:
    """Every string child in a dash component tree."""
    if isinstance(component, str):
        return [component]
    if isinstance(component, (list, tuple)):
        return [t for item in component for t in texts(item)]
    children = getattr(component, "children", None)
    return texts(children) if children is not None else []


def test_overview_returns_the_grid_and_summaries(toy_session):
    chips, grid, entropy, sink, labels, message = overview.overview_outputs(toy_session, PROMPT)
    assert "".join(texts(chips)).count("cat") == 2
    assert isinstance(grid, go.Figure) and len(grid.data[1].customdata) == 8
    assert entropy.data[0].z.shape == (2, 4) and sink.data[0].z.shape == (2, 4)
    assert isinstance(labels, go.Figure)
    assert message is None or "hs-alert" in message.className


def test_overview_click_opens_the_head(toy_session):
    click = {"points": [{"customdata": [1, 3]}]}
    assert overview.open_head(toy_session, click) == "/head/1/3"
    from dash.exceptions import PreventUpdate

    with pytest.raises(PreventUpdate):
        overview.open_head(toy_session, {"points": [{"customdata": [7, 7]}]})


def test_head_page_map_stats_and_picker(toy_session):
    title, figure, message, drawn = head.head_main(toy_session, "/head/0/2", PROMPT)
    assert title == "Layer 0, head 2" and message is None and drawn.startswith("0.2|red")
    assert figure.data[0].z.shape == (21, 21) and "21 tokens" in figure.layout.title.text
    links = list(head.head_picker(toy_session, PROMPT)[0].children)
    assert len(links) == 8 and links[5].id == "pick-1-1"
    assert links[5].href == "/head/1/1" + PROMPT["search"]
    stats, _taxonomy = head.head_side(toy_session, "/head/0/2", PROMPT)
    cells = texts(stats)
    # the table's previous-token mass is the record's: mean of A[q, q-1] over q >= 1
    pattern = hs.capture(toy_session.model, TOY_PROMPTS[0]).pattern[0, 2]
    expected = pattern.diagonal(offset=-1).mean().item()
    shown = float(cells[cells.index("previous-token mass") + 1])
    assert shown == pytest.approx(expected, abs=5e-4) and shown > 0.8


def test_head_page_refuses_heads_outside_the_model(toy_session):
    with pytest.raises(InputError, match="layer 5 does not exist"):
        head.head_main(toy_session, "/head/5/0", PROMPT)


def test_exact_value_of_a_clicked_cell(toy_session):
    state = toy_session.state(PROMPT["prompt"])
    click = {"points": [{"x": "1 red", "y": "2 cat", "z": 0.9}]}
    text = head.exact_values(toy_session, click, "/head/0/2", PROMPT)
    weight = float(state.record.map(0, 2)[2, 1])
    assert "query 2 cat" in text and f"{weight:.6f}" in text
    assert head.exact_values(toy_session, None, "/head/0/2", PROMPT) == ""


def test_guarded_turns_errors_into_messages():
    @guarded(lambda message: ("fallback", message), "the thing")
    def broken():
        raise RuntimeError("boom")

    @guarded(lambda message: ("fallback", message))
    def refused():
        raise InputError("the prompt is empty")

    assert broken() == ("fallback", "the thing failed: RuntimeError: boom")
    assert refused() == ("fallback", "the prompt is empty")
    assert describe(MemoryError()).endswith("try a shorter prompt")


def test_flow_page_for_a_query(toy_session):
    options, default = flow.query_options(toy_session, PROMPT)
    last = len(TOY_PROMPTS[0].split())  # the last token (after <bos>)
    assert default == last and options[0]["label"] == "0: <bos>"
    steps = []
    figure, chips, _message = flow.flow_outputs(
        toy_session, PROMPT, last, 0.5, progress=lambda *a: steps.append(a)
    )
    assert isinstance(figure, go.Figure) and steps[-1][:2] == (4, 4)
    bars = [trace for trace in figure.data if trace.type == "bar"]
    assert 1 <= len(bars) <= 4
    assert isinstance(chips[last], html.Button) and "hs-token-query" in chips[last].className
    # a junk query falls back to the last token, a junk residual to 0.5
    figure, _, _ = flow.flow_outputs(toy_session, PROMPT, "junk", 99)
    assert f"Query {last}" in figure.layout.title.text


def flow_bars(figure) -> dict[str, np.ndarray]:
    return {trace.name: np.asarray(trace.y) for trace in figure.data if trace.type == "bar"}


def test_flow_page_relevance_finds_the_induction_source(toy_session):
    tokens = toy_session.state(INDUCTION).tokens
    q = len(tokens) - 1
    # the induction source: the token after the previous occurrence of the query's token
    source = max(i for i in range(q) if tokens[i] == tokens[q]) + 1
    figure, _chips, notes = flow.flow_outputs(toy_session, {"prompt": INDUCTION}, q, 0.5)
    bars = flow_bars(figure)
    (name,) = [name for name in bars if name.startswith("relevance")]
    assert "top prediction after the last token" in name  # the page names its target
    relevance = bars[name]
    keys = [k for k in range(len(tokens)) if k not in (0, q)]
    assert max(keys, key=lambda k: relevance[k]) == source
    assert max([*keys, 0], key=lambda k: relevance[k]) == source  # <bos> included too
    # rollout and flow give <bos> their largest share (apart from the query), and say so
    text = " ".join(texts(notes))
    for method in ("attention rollout", "attention flow"):
        row = bars[method].copy()
        row[q] = -1.0
        assert int(row.argmax()) == 0, method
        assert f"{method} puts {bars[method][0]:.2f} on key 0 <bos>" in text
    assert "no content-free baseline" in text and "logit" in text


def test_flow_page_raw_attention_picker(toy_session):
    state = toy_session.state(INDUCTION)
    record = state.record
    scores = head_scores(record)["previous_token"]
    li, hi = divmod(int(scores.argmax()), scores.shape[1])
    layer, head_ = record.layer_index[li], record.head_index[hi]
    layers, default_layer, heads, default_head = flow.raw_options(toy_session)
    assert [o["value"] for o in layers] == list(range(toy_session.spec.n_layers))
    assert (default_layer, default_head) == (toy_session.spec.n_layers - 1, flow.MEAN)
    assert head_ in [o["value"] for o in heads] and heads[0]["value"] == flow.MEAN
    assert flow.raw_options(toy_session, layer, head_)[1::2] == (layer, head_)  # kept
    n = len(state.tokens)
    for q in (n - 1, n // 2):
        figure, _, _ = flow.flow_outputs(
            toy_session, {"prompt": INDUCTION}, q, 0.5, layer=layer, head=head_
        )
        raw = figure.data[0]
        assert raw.name == f"raw attention, layer {layer}, head {head_}"
        assert int(np.argmax(raw.y)) == q - 1  # the previous token
    figure, _, _ = flow.flow_outputs(toy_session, {"prompt": INDUCTION}, None, 0.5, layer=0)
    assert figure.data[0].name == "raw attention, layer 0, mean over heads"


def test_flow_page_refuses_bad_picker_values(toy_session):
    store = {"prompt": INDUCTION}
    for layer, head_, refusal in [
        (7, flow.MEAN, "layer 7 does not exist"),
        (0, 9, "head 9 does not exist"),
        ("evil", flow.MEAN, "must be integers"),
        (0, XSS, "must be integers"),
    ]:
        with pytest.raises(InputError, match=refusal):
            flow.flow_outputs(toy_session, store, None, 0.5, layer=layer, head=head_)
        figure, chips, message = flow.flow_page(
            toy_session, store, None, 0.5, layer=layer, head=head_
        )
        assert refusal in message.children and "hs-alert-error" in message.className
        assert chips == [] and isinstance(figure, go.Figure)
    # the options callback falls back to the defaults for values it cannot keep
    last = toy_session.spec.n_layers - 1
    assert flow.raw_options(toy_session, 7, XSS)[1::2] == (last, flow.MEAN)


@pytest.mark.slow
def test_encoder_flow_page_says_relevance_is_unavailable(minilm_session):
    figure, chips, notes = flow.flow_outputs(
        minilm_session, {"prompt": "The cat sat on the mat."}, None, 0.5
    )
    unavailable = "relevance needs a trained LM head or a target; not available for minilm"
    assert unavailable in [annotation.text for annotation in figure.layout.annotations]
    assert unavailable in " ".join(texts(notes))
    assert len(flow_bars(figure)) == 3 and len(chips) > 3


def test_position_page(toy_session):
    text, sinks, influence, _ = position.position_outputs(toy_session, PROMPT, 4, "evil")
    assert isinstance(sinks, go.Figure) and isinstance(influence, go.Figure)
    assert "sink (head, key) pairs" in text and "4× uniform" in text and "Key 0 is <bos>" in text


def test_position_page_names_an_encoders_first_token(minilm_session):
    text, *_ = position.position_outputs(
        minilm_session, {"prompt": "The cat sat on the mat."}, 4, "evil"
    )
    shown = str(text)
    assert "Key 0 is [CLS]" in shown and "BOS" not in shown


def test_importance_ablation_and_gradient(toy_session):
    seen = []
    outputs = importance.importance_outputs(
        toy_session,
        "\n".join(TOY_PROMPTS[:3]),
        ["ablation", "gradient"],
        "zero",
        3,
        50,
        progress=lambda *a: seen.append(a),
    )
    figures = dict(zip(importance.OUTPUT_IDS, outputs[:-1], strict=True))
    ablation = figures["imp-ablation"].data[0].z
    assert ablation.shape == (2, 4)
    # the previous-token head 0.2 and the induction head 1.3 matter most
    assert ablation[0].argmax() == 2 and ablation[1].argmax() == 3
    assert len(figures["imp-pruning"].data) == 2
    assert "3 prompts" in outputs[-1].children and seen


def test_importance_refuses_bad_prompt_sets(toy_session):
    with pytest.raises(InputError):
        importance.importance_outputs(toy_session, "", ["ablation"], "zero", 3, 50)
    with pytest.raises(InputError, match="context"):
        importance.importance_outputs(toy_session, "red " * 300, ["ablation"], "zero", 3, 50)


def test_playground_gate_editing(toy_session):
    grid, selected, value = playground.edit_gates(
        toy_session, {"type": "gate-cell", "layer": 0, "head": 2}, 1.0, None, None
    )
    assert grid[0][2] == 0.0 and selected == [0, 2] and value == 0.0
    grid, selected, value = playground.edit_gates(toy_session, "play-scale", 0.25, grid, selected)
    assert grid[0][2] == 0.25 and value == 0.25
    grid, _, value = playground.edit_gates(toy_session, "play-reset", 0.25, grid, selected)
    assert grid == [[1.0] * 4, [1.0] * 4] and value == 1.0
    with pytest.raises(InputError):
        playground.edit_gates(
            toy_session, {"type": "gate-cell", "layer": 9, "head": 0}, 1, None, None
        )
    styles, classes = playground.gate_styles(toy_session, [[1, 1, 0, 1], [1, 1, 1, 1]], [0, 2])
    assert "rgba" in styles[2]["background"] and "hs-gate-selected" in classes[2]


def test_playground_ablating_the_induction_circuit_raises_the_loss(toy_session):
    ones = [[1.0] * 4, [1.0] * 4]
    clean = playground.playground_outputs(toy_session, PROMPT, ones, None)
    gated = [[1.0, 1.0, 0.0, 1.0], [1.0] * 4]
    ablated = playground.playground_outputs(toy_session, PROMPT, gated, None)

    def loss(outputs):
        line = next(t for t in texts(outputs[1]) if t.startswith("loss on the prompt"))
        return float(line.split(":")[1].split()[0])

    assert loss(ablated) > loss(clean) + 0.5
    assert "gated: 0.2×0" in " ".join(texts(ablated[1]))
    # the maps update too: without the previous-token head, layer 1 attends elsewhere
    state = toy_session.state(PROMPT["prompt"])
    gates = torch.tensor(gated)
    run = playground.gated_run(toy_session, state, gates)
    assert torch.equal(run.pattern[0], state.record.pattern[0])  # layer 0 is upstream
    assert (run.pattern[1, 3] - state.record.pattern[1, 3]).abs().max() > 0.1
    assert clean[0].data[-1].x.dtype.name == "float32"


def test_markup_in_prompts_stays_text(toy_session):
    store = {"prompt": f"red cat {XSS}"}
    chips, *_ = overview.overview_outputs(toy_session, store)
    assert all(isinstance(c, (html.Span, html.Button, str)) for c in chips)
    assert "<" in "".join(texts(chips))  # shown literally by React
    _, figure, _, _ = head.head_main(toy_session, "/head/0/0", store)
    assert "<img" not in figure.to_json()


@pytest.mark.slow
def test_encoder_playground_shows_embedding_similarity(minilm_session):
    store = {"prompt": "The cat sat on the mat."}
    spec = minilm_session.spec
    ones = [[1.0] * spec.n_heads for _ in range(spec.n_layers)]
    figure, metrics, _, _ = playground.playground_outputs(minilm_session, store, ones, "A dog.")
    assert "cosine to the unablated embedding: 1.0000" in " ".join(texts(metrics))
    off = [[0.0] * spec.n_heads, *ones[1:]]
    figure, metrics, _, _ = playground.playground_outputs(minilm_session, store, off, "A dog.")
    line = next(t for t in texts(metrics) if t.startswith("cosine"))
    assert float(line.split(":")[1]) < 0.999
    assert "next token" not in figure.layout.title.text.lower()


def test_spectral_page_figures_and_composition(toy_session):
    from headscope.dashboard import spectral

    spectra, mp, stable, _effective, copying, message = spectral.spectral_outputs(
        toy_session, 0, 2, "OV", "W_V"
    )
    assert len(spectra.data) == 8 and spectra.data[-1].name == "0.2 OV"
    assert stable.data[0].z.shape == (2, 4) and copying.data[0].z.shape == (2, 4)
    assert "W_V of head 0.2" in mp.layout.title.text and message is None
    # junk choices fall back to the defaults; heads outside the model are refused
    spectra, *_ = spectral.spectral_outputs(toy_session, 1, 3, "evil", "rm -rf")
    assert spectra.data[-1].name == "1.3 QK"
    with pytest.raises(InputError):
        spectral.spectral_outputs(toy_session, 0, 9, "QK", "W_Q")
    figure, _ = spectral.composition_output(toy_session, "K")
    assert list(figure.data[0].y) == ["0.0", "0.1", "0.2", "0.3"]
    assert list(figure.data[0].x) == ["1.0", "1.1", "1.2", "1.3"]
    assert "random baseline" in figure.layout.title.text
    assert "head 1.3" in spectral.head_spectra_figure(toy_session, 1, 3).layout.title.text


@pytest.mark.slow
def test_encoder_tokens_with_markup_stay_text(minilm_session):
    store = {"prompt": f"a {XSS} b"}
    chips, grid, *_ = overview.overview_outputs(minilm_session, store)
    shown = [t for t in texts(chips) if not t.isdigit()]
    assert "<" in shown and ">" in shown  # wordpieces of the markup, shown as text
    figure = head.head_main(minilm_session, "/head/0/0", store)[1]
    assert "&lt;" in figure.to_json()  # the "<" wordpiece, escaped for plotly
    for shown in (grid, figure):
        assert "<img" not in shown.to_json() and "<" not in str(shown.layout.xaxis.ticktext)


# -- input feedback: unknown words, the special tokens added, what the loss scores --------------


def _unknown_to(session, text: str) -> list[str]:
    vocabulary = session.model.tokenizer.get_vocab()
    return [word for word in text.split() if word not in vocabulary]


def test_mostly_unknown_words_get_a_warning(toy_session):
    from headscope.dashboard import shell

    text = "The cat sat on the mat because it was tired"
    unknown = _unknown_to(toy_session, text)
    assert len(unknown) > len(text.split()) / 2
    store, _, _, info, message = shell.resolve_prompt(toy_session, "prompt-run", "", text, None)
    assert store["prompt"] == text and message is None  # still runs: a warning, not an error
    assert isinstance(info, list)
    line, warning, vocabulary = info
    assert line.children.startswith("11 tokens · <bos> prepended · limit")
    assert "hs-alert" in warning.className
    assert f"{len(unknown)} words are not in the model's vocabulary" in warning.children
    assert warning.children.endswith(": " + ", ".join(unknown))
    # the toy's 61 words, collapsible
    assert isinstance(vocabulary, html.Details)
    summary, words = vocabulary.children
    assert summary.children == "the 61 words toy-induction knows"
    assert set(words.children.split()) == set(toy_session.model.word_vocabulary())
    assert "cat" in words.children.split() and "The" not in words.children.split()


def test_known_words_keep_the_plain_info_line(toy_session):
    from headscope.dashboard import shell

    *_, info, message = shell.resolve_prompt(toy_session, "prompt-run", "", TOY_PROMPTS[0], None)
    assert info == f"21 tokens · <bos> prepended · limit {toy_session.token_limit}"
    assert message is None


def test_unknown_markup_is_listed_as_text(toy_session):
    from headscope.dashboard import shell

    *_, info, _ = shell.resolve_prompt(toy_session, "prompt-run", "", f"red {XSS}", None)
    warning = info[1]
    assert isinstance(warning.children, str) and "<img" in warning.children
    assert all(isinstance(text, str) for text in texts(info))


@pytest.mark.slow
def test_encoder_info_line_names_cls_and_sep(minilm_session):
    from headscope.dashboard import shell

    *_, info, _ = shell.resolve_prompt(
        minilm_session, "prompt-run", "", "The cat sat on the mat.", None
    )
    assert info == f"9 tokens · [CLS] and [SEP] added · limit {minilm_session.token_limit}"
    assert "BOS" not in info
    *_, info, _ = shell.resolve_prompt(minilm_session, "prompt-run", "", "a ☃ b", None)
    assert "became [UNK]: ☃" in texts(info)[1]
    assert not any(isinstance(part, html.Details) for part in info)  # 30k wordpieces: no list


def test_playground_loss_says_what_it_scores(toy_session):
    ones = [[1.0] * 4, [1.0] * 4]
    _, metrics, _, _ = playground.playground_outputs(toy_session, PROMPT, ones, None)
    line = next(t for t in texts(metrics) if t.startswith("loss on"))
    assert line.startswith("loss on the prompt's 9 repeated tokens: ")
    plain = {"prompt": "red cat blue dog sun"}
    _, metrics, _, _ = playground.playground_outputs(toy_session, plain, ones, None)
    line = next(t for t in texts(metrics) if t.startswith("loss on"))
    assert line.startswith("loss on the prompt's 5 tokens (every token after the first): ")


# -- Importance: pickers, intervals, degenerate methods said, not drawn -------------------------


def test_importance_hovers_carry_bootstrap_intervals_and_mark_non_significant_cells(toy_session):
    outputs = importance.importance_outputs(
        toy_session, "\n".join(TOY_PROMPTS[:4]), ["ablation"], "zero", 3, 50
    )
    figures = dict(zip(importance.OUTPUT_IDS, outputs[:-1], strict=True))
    heatmap = figures["imp-ablation"].data[0]
    low, high = heatmap.customdata[..., 0], heatmap.customdata[..., 1]
    z = np.asarray(heatmap.z, dtype=float)
    assert (low <= z + 1e-6).all() and (z <= high + 1e-6).all()
    assert "95% bootstrap over 4 prompts" in heatmap.hovertemplate
    marked = np.array([["n.s." in cell for cell in row] for row in heatmap.text])
    expected = (low <= 0) & (high >= 0)
    assert (marked == expected).all()
    assert not marked[0, 2] and not marked[1, 3]  # the circuit is significant


def test_importance_metric_and_target_pickers_change_what_is_measured(toy_session):
    lines = "\n".join(TOY_PROMPTS[:2])
    repeats = importance.importance_scores(toy_session, lines, ["ablation"], "zero", 3, 50)
    every = importance.importance_scores(
        toy_session, lines, ["ablation"], "zero", 3, 50, target="all"
    )
    assert set(repeats.prompt_targets) == {"repeats"} and set(every.prompt_targets) == {"all"}
    assert sum(every.target_tokens) > sum(repeats.target_tokens)
    cosine = importance.importance_scores(
        toy_session, lines, ["ablation"], "zero", 3, 50, metric="embedding_cosine"
    )
    assert cosine.metric.name == "embedding_cosine" and cosine.metric.direction == "maximize"
    # A value the page does not offer falls back to the default, never reaches the model.
    bogus = importance.importance_scores(
        toy_session, lines, ["ablation"], "zero", 3, 50, metric="<script>", target="middle"
    )
    assert bogus.metric.name == "loss" and bogus.target == "auto"


@pytest.mark.slow
def test_encoder_gradient_importance_says_there_is_no_first_order_signal(minilm_session):
    outputs = importance.importance_outputs(
        minilm_session,
        "The cat sat on the mat.\nA man is playing a guitar.",
        ["ablation", "gradient"],
        "zero",
        3,
        50,
    )
    figures = dict(zip(importance.OUTPUT_IDS, outputs[:-1], strict=True))
    message = outputs[-1].children
    assert "no first-order signal" in message and "hs-alert-warning" in outputs[-1].className
    assert not figures["imp-gradient"].data  # a message, no normalised map
    curves = [trace.name for trace in figures["imp-pruning"].data]
    assert curves == ["by ablation"]  # no pruning by a ranking that is noise


# -- sinks and taxonomy with their evidence (issue "Trustworthy by default") ---------------


def test_overview_taxonomy_hover_carries_support_and_sink_baseline(toy_session):
    _chips, _grid, _entropy, sink, labels, _message = overview.overview_outputs(toy_session, PROMPT)
    hovers = [cell for row in labels.data[0].customdata for cell in row]
    assert all("(support " in cell for cell in hovers)
    assert any(cell.startswith("induction 0.") and "queries)" in cell for cell in hovers)
    assert sink.layout.title.text == "uniform α₀ = 0.17"  # H_21/21, the causal baseline


def test_overview_shows_insufficient_evidence_as_its_own_label(toy_session):
    # <bos> + 3 words: every category rests on at most 3 queries
    store = {"prompt": "red cat blue"}
    state = toy_session.state(store["prompt"])
    assert (head_scores(state.record)["first_token_sink"] > 0.5).any()  # it used to label
    outputs = overview.overview_outputs(toy_session, store)
    labels = outputs[4]
    names = [trace.name for trace in labels.data[1:]]
    assert set(names) <= {"insufficient evidence", "none"} and "insufficient evidence" in names
    hovers = [cell for row in labels.data[0].customdata for cell in row]
    assert any(cell.startswith("insufficient evidence: ") and "below 4" in cell for cell in hovers)


def test_head_page_taxonomy_lists_support(toy_session):
    _stats, taxonomy = head.head_side(toy_session, "/head/1/3", PROMPT)
    cells = texts(taxonomy)
    assert cells[0].startswith("label: induction") and "(support 10 queries)" in cells[0]
    assert "next token" in cells and "undefined (0 queries)" in cells  # causal model
    stats, _ = head.head_side(toy_session, "/head/1/1", PROMPT)
    row = texts(stats)
    sink = row[row.index("sink score α₀") + 1]
    assert "× uniform" in sink and sink.endswith("a sink")


def test_position_page_explains_the_rule_and_short_prompts(toy_session):
    short = {"prompt": "red cat blue dog red cat blue dog"}
    text, sinks, _influence, _ = position.position_outputs(toy_session, short, 4, "causal")
    assert text.startswith("No sink") and "causal mask" in text and "≥ 4 queries" in text
    assert "too short a prompt" in text and "3.2× uniform" in text
    assert len(sinks.data) == 1  # no × marks
    text, sinks, _influence, _ = position.position_outputs(toy_session, PROMPT, 4, "causal")
    assert text.startswith("2 sink (head, key) pairs") and "L1.H1→0" in text
    assert sinks.data[1].name == "sink (≥ 4× uniform)"
    # the slider is a ratio: junk falls back to the default, values are clipped
    assert position.check_ratio("<b>") == 4.0 and position.check_ratio(0.3) == 1.0


@pytest.mark.slow
def test_flow_page_bounds_exact_flow_by_prompt_length(minilm_model):
    """Exact flow grows faster than N³ on 3+ layers: above the session's bound the
    page says so and shows rollout only; at or below it, flow as before."""
    from headscope.dashboard.session import DEFAULT_MAX_FLOW_TOKENS, ModelSession

    assert DEFAULT_MAX_FLOW_TOKENS == 80
    session = ModelSession(minilm_model, max_flow_tokens=8)
    store = {"prompt": "The cat sat on the mat because it was tired."}  # 13 tokens
    n = len(session.state(store["prompt"]).tokens)
    assert n > 8
    steps = []
    figure, chips, notes = flow.flow_outputs(
        session, store, None, 0.5, progress=lambda *a: steps.append(a[2])
    )
    names = set(flow_bars(figure))
    assert "attention rollout" in names and "attention flow" not in names
    note = " ".join(texts(notes))
    assert f"not computed for {n} tokens" in note and "up to 8 tokens" in note
    assert not any("max-flow" in step for step in steps)  # flow never started
    assert len(chips) == n  # shaded by rollout
    # at the bound, flow is computed; one or two layers have no bound (closed form)
    short = {"prompt": "The cat sat."}
    assert len(session.state(short["prompt"]).tokens) <= 8
    figure, _, notes = flow.flow_outputs(session, short, None, 0.5)
    assert "attention flow" in flow_bars(figure) and "not computed" not in " ".join(texts(notes))
    assert flow.exact_flow_limit(session, 2) is None and flow.exact_flow_limit(session, 6) == 8


# -- token views and value-weighted attention (issue "The dashboard as a research instrument") --


def test_head_page_value_weighted_map_is_memoized_per_prompt(toy_session, monkeypatch):
    from headscope.dashboard import results
    from headscope.experiments import attention as model_attention

    store = {"prompt": INDUCTION}
    state = toy_session.state(INDUCTION)
    state.memo.pop("value-norms", None)  # computed here, whatever ran before
    calls = []
    real = model_attention.value_norms
    monkeypatch.setattr(
        model_attention, "value_norms", lambda *a: calls.append(1) or real(*a), raising=True
    )
    _, raw, _, drawn_raw = head.head_main(toy_session, "/head/1/3", store)
    title, figure, message, drawn = head.head_main(toy_session, "/head/1/3", store, "value")
    assert title == "Layer 1, head 3" and message is None
    assert drawn == drawn_raw + "|value" and "value-weighted" in figure.layout.title.text
    norms = real(toy_session.model, toy_session.tokenize(INDUCTION))
    expected = model_attention.weight_by_value_norms(state.record.map(1, 3), norms[1, 3])
    np.testing.assert_allclose(figure.data[0].z, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(figure.data[0].z, raw.data[0].z)
    # one forward for the prompt's value norms; every other head reuses them
    for layer, head_index in [(0, 0), (0, 3), (1, 1)]:
        head.head_main(toy_session, f"/head/{layer}/{head_index}", store, "value")
        head.lines_figure(toy_session, f"/head/{layer}/{head_index}", store, "value", "layer")
    assert len(calls) == 1 and results.value_norms(toy_session, state) is state.memo["value-norms"]
    # junk weightings are raw attention
    assert head.check_weighting("<b>") == "raw" and head.check_weighting("value") == "value"
    # a clicked cell reports the value-weighted weight
    click = {"points": [{"x": "5 sun", "y": "10 dog", "z": 0.5}]}
    text = head.exact_values(toy_session, click, "/head/1/3", store, "value")
    assert f"{float(expected[10, 5]):.6f}" in text


def test_head_page_token_view_sends_the_map_for_the_hover(toy_session, monkeypatch):
    store = {"prompt": INDUCTION}
    state = toy_session.state(INDUCTION)
    chips = head.token_view_chips(toy_session, store)
    assert len(chips) == len(state.tokens) == 12
    assert chips[3].className == "hs-token hs-tchip" and getattr(chips[3], "data-index") == "3"
    data = head.token_view_data(toy_session, "/head/1/3", store)
    assert data["head"] == "1.3" and data["scale"] == head.TOKEN_SCALE
    assert data["tokens"][0] == "<bos>" and data["tokens"][7] == "red"
    weights = np.array(data["weights"]) / data["scale"]
    pattern = state.record.map(1, 3).numpy()
    np.testing.assert_allclose(weights, pattern, atol=0.6 / head.TOKEN_SCALE)
    # the induction head: query 10 ("dog", second copy) attends to key 5 ("sun")
    assert np.argmax(data["weights"], axis=1).tolist() == pattern.argmax(1).tolist()
    assert int(np.argmax(data["weights"][10])) == 5
    value = head.token_view_data(toy_session, "/head/1/3", store, "value")
    assert value["weighting"] == "value" and value["weights"] != data["weights"]
    monkeypatch.setattr(head, "TOKEN_VIEW_MAX", 8)
    long = head.token_view_data(toy_session, "/head/1/3", store)
    assert long["weights"] is None and "up to 8 tokens; this one has 12" in long["note"]


def test_head_page_attention_lines_for_the_head_and_its_layer(toy_session):
    store = {"prompt": INDUCTION}
    one = head.lines_figure(toy_session, "/head/1/3", store)
    assert one.layout.title.text == "Layer 1, head 3" and one.layout.showlegend is False
    every = head.lines_figure(toy_session, "/head/1/3", store, "raw", "layer")
    assert every.layout.title.text == "Layer 1, every head" and every.layout.showlegend
    names = [trace.name for trace in every.data if trace.showlegend is not False]
    assert names == [f"head {h}" for h in range(4)]
    # markup in the prompt stays text in the labels
    xss = head.lines_figure(toy_session, "/head/0/0", {"prompt": f"red {XSS}"})
    assert all("<img" not in label for label in xss.data[-1].text)


def test_overview_thumbnails_name_the_cell_and_open_its_head(toy_session):
    _chips, grid, *_ = overview.overview_outputs(toy_session, PROMPT)
    canvas = grid.data[0]
    assert "head 3 · key 2 cat" in list(canvas.x) and "layer 1 · query 12 cat" in list(canvas.y)
    assert "%{customdata:.4f}" in canvas.hovertemplate
    click = {"points": [{"x": "head 3 · key 2 cat", "y": "layer 1 · query 12 cat", "z": 0.9}]}
    assert overview.open_head(toy_session, click) == "/head/1/3"
    from dash.exceptions import PreventUpdate

    for point in ({"x": "gap 1.0", "y": "layer 1 · query 3 dog"}, {"x": "head 9 · key 1", "y": 3}):
        with pytest.raises(PreventUpdate):
            overview.open_head(toy_session, {"points": [point]})


def test_small_panels_have_no_toolbar():
    from headscope.dashboard.components import graph

    def config(panel):  # the dcc.Graph, first in the panel (its export buttons follow)
        return panel.children[0].config

    assert config(graph("small", height=260))["displayModeBar"] is False
    assert config(graph("large", height=600))["displayModeBar"] == "hover"
    assert config(graph("forced", height=600, toolbar=False))["displayModeBar"] is False
    assert config(graph("large", height=600))["displaylogo"] is False
