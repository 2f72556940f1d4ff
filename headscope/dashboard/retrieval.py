"""Retrieval page: which heads copy from far context during generation and which
need only an attention sink and a recent window (docs/methods.md §2.15).

Four scores per head, each with its baseline and support: the retrieval score
(Wu et al. 2024) on a synthetic copy task, DuoAttention gates (Xiao et al. 2024)
fitted on a passkey-style task, the data-free long-range peak, and the echo score
(RazorAttention); then the ablation checks (copy accuracy with the top heads of
each score changed vs streaming heads changed) and the long-context labels. The
work runs in `experiments.retrieval.retrieval_study`, as a background job.
"""

from __future__ import annotations

from collections.abc import Callable

from dash import Dash, Input, Output, State, dcc, html, no_update

from headscope.dashboard.background import job_options, on_death
from headscope.dashboard.components import card, graph, page_header, progress_block, table_panel
from headscope.dashboard.inputs import as_int, check_number
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession
from headscope.dashboard.state import (
    RETRIEVAL,
    RETRIEVAL_SETTINGS,
    decode_retrieval,
    encode_retrieval,
    state_out,
    state_out_id,
)
from headscope.errors import InputError
from headscope.experiments.retrieval import RetrievalStudy, gate_scores, retrieval_study
from headscope.figures.retrieval import ablation_bars, score_heatmap
from headscope.figures.style import message_figure

OUTPUT_IDS = ("ret-retrieval", "ret-gates", "ret-peak", "ret-echo", "ret-checks")
START = "Press Find retrieval heads"
#: The task settings' inputs, in `RETRIEVAL_SETTINGS` order (the URL's `retrieval=`).
SETTING_IDS = ("ret-prompts", "ret-source", "ret-sink", "ret-window")
MAX_PROMPTS = RETRIEVAL_SETTINGS[0][3]
MAX_SOURCE = RETRIEVAL_SETTINGS[1][3]


def _number(component_id: str, label: str, value: int, low: int, high: int) -> html.Div:
    return html.Div(
        [
            html.Label(label, htmlFor=component_id),
            dcc.Input(
                id=component_id,
                type="number",
                value=value,
                min=low,
                max=high,
                step=1,
                style={"width": "90px"},
            ),
        ],
        className="hs-control",
    )


def layout(session: ModelSession) -> list:
    return [
        *page_header(
            "Retrieval and streaming heads",
            "Which heads copy tokens from far back while the model generates (retrieval "
            "heads, Wu et al. 2024) and which need only the first token and a recent window "
            "(streaming heads, DuoAttention, Xiao et al. 2024); echo heads attend to earlier "
            "copies of the current token (RazorAttention). Synthetic tasks from the model's "
            "own vocabulary: no data set needed. Causal language models only.",
            "ret-message",
        ),
        card(
            None,
            html.Div(
                [
                    *(
                        _number(component_id, label, default, low, high)
                        for component_id, (_, label, low, high, default) in zip(
                            SETTING_IDS, RETRIEVAL_SETTINGS, strict=True
                        )
                    ),
                    state_out("retrieval"),
                    html.Button(
                        "Find retrieval heads", id="ret-run", className="hs-button", n_clicks=0
                    ),
                ],
                className="hs-controls",
            ),
            progress_block("ret"),
        ),
        html.Div(
            [
                card(
                    "Retrieval score (Wu et al. 2024)",
                    graph("ret-retrieval", message=START, height=320),
                    note="Share of greedy copy steps at which the head's most-attended key "
                    "holds the token being generated, in the copied span. Chance: the same "
                    "with uniform attention. Wu et al. call a head above 0.1 a retrieval head.",
                ),
                card(
                    "DuoAttention gates",
                    graph("ret-gates", message=START, height=320),
                    note="Gate α mixing full attention (1) with sink + window attention (0), "
                    "fitted on a passkey task by distillation from the full model plus an "
                    "L1 push to 0. At or above 0.5: retrieval head; below: streaming.",
                ),
            ],
            className="hs-grid-2",
        ),
        html.Div(
            [
                card(
                    "Data-free: long-range peak",
                    graph("ret-peak", message=START, height=320),
                    note="On repeated random tokens: the largest weight a query puts on one "
                    "key outside the sink and the recent window, mean over queries. Chance: "
                    "uniform attention.",
                ),
                card(
                    "Echo score (RazorAttention)",
                    graph("ret-echo", message=START, height=320),
                    note="On the same tokens: attention mass on earlier copies of the "
                    "query's own token. Chance: uniform attention.",
                ),
            ],
            className="hs-grid-2",
        ),
        card(
            "Ablation check",
            graph("ret-checks", message=START, height=360),
            note="Greedy copy accuracy on a fresh copy task with the two top heads of each "
            "score changed, vs pairs of heads it calls streaming (pooled over draws): "
            "z ← 0 (ablation) or attention limited to sink + window (DuoAttention's "
            "streaming). Error bars: 95% Wilson intervals over generated tokens. A streaming "
            "head can still be needed (a previous-token head feeding an induction head): "
            "zero-ablating it hurts though streaming it does not.",
        ),
        card(
            "Long-context labels",
            html.Div(START, id="ret-labels", className="hs-panel hs-muted"),
            note="Each label with the score that earned it, its baseline and its support. "
            "Dormant: sink-dominated heads (first-token mass above 0.5 and twice uniform) "
            "whose ablation changes the loss by less than 0.05 nats (whole 95% interval).",
        ),
    ]


# -- callback bodies (plain functions, unit-tested) --------------------------------------------


CELL = {"padding": "4px 8px", "borderBottom": "1px solid #eef0f3", "verticalAlign": "top"}
NUMERIC = {**CELL, "fontFamily": "var(--hs-mono)", "fontSize": "12px"}
HEADER = {**CELL, "textAlign": "left", "fontWeight": 600, "borderBottom": "1px solid #c9ced6"}
COLUMNS = ("head", "label", "score", "baseline", "support", "threshold")


def label_rows(study: RetrievalStudy) -> list[dict]:
    """One row per (head, long-context label), heads in order."""
    rows = []
    for (layer, head), labels in sorted(study.labels.items()):
        for item in labels:
            rows.append(
                {
                    "head": f"{layer}.{head}",
                    "label": item.label,
                    "score": f"{item.score:.3f}",
                    "baseline": "–" if item.baseline != item.baseline else f"{item.baseline:.3f}",
                    "support": f"{item.support} {item.unit}",
                    "threshold": f"{item.threshold:g}",
                }
            )
    return rows


def label_table(study: RetrievalStudy) -> html.Div:
    """The labels as a table (every value as text, never HTML)."""
    rows = label_rows(study)
    if not rows:
        return html.Div("no head earned a long-context label", className="hs-panel hs-muted")
    numeric = {"score", "baseline", "support", "threshold"}
    head = html.Thead(html.Tr([html.Th(name, style=HEADER) for name in COLUMNS]))
    body = html.Tbody(
        [
            html.Tr([html.Td(row[k], style=NUMERIC if k in numeric else CELL) for k in COLUMNS])
            for row in rows
        ]
    )
    table = html.Table(
        [head, body],
        id="ret-label-table",
        style={"borderCollapse": "collapse", "width": "100%", "fontSize": "13px"},
    )
    return table_panel(table, name="labels")


def summary(study: RetrievalStudy) -> str:
    """The page's message: the task, its evidence and the checks, in words."""
    result, gates = study.retrieval, study.gates
    task, accuracy = result.task, result.accuracy
    support = int(result.scores.support.max()) if result.scores.support.numel() else 0
    checks = "; ".join(
        f"{c.by} ({c.intervention}): top {c.count} → {c.top.accuracy:.2f}, streaming → "
        f"{c.bottom_pooled.accuracy:.2f}{'' if c.separated else ' (not separated)'}"
        for c in study.checks
    )
    text = (
        f"Copy task: {task.ids.shape[0]} prompts, {task.source_length} tokens copied after "
        f"{task.cue_length} cue tokens; greedy copy accuracy {accuracy.accuracy:.3f} "
        f"[{accuracy.low:.3f}, {accuracy.high:.3f}]; retrieval scores rest on {support} copy "
        f"steps, chance {float(result.scores.baseline.flatten()[0]):.3f}. Gates: "
        f"{gates.steps} steps on {gates.answer_tokens} answer tokens; KL from the full "
        f"model with every head streaming {gates.kl_all_streaming:.3f} nats, with the "
        f"fitted split {gates.kl_fitted:.4f}. Checks (copy accuracy, clean "
        f"{study.checks[0].clean.accuracy:.2f}): {checks}."
    )
    if accuracy.accuracy < 0.5:
        text += " The model copies poorly: retrieval scores rest on few correct copies."
    if gates.warning:
        text += f" {gates.warning}."
    return text


def study_outputs(
    session: ModelSession,
    prompts: object = 16,
    source: object = 16,
    sink: object = 1,
    window: object = 4,
    progress: Callable[[int, int, str], object] | None = None,
) -> tuple:
    """(retrieval, gates, peak, echo, checks figures, label table, message)."""
    model = session.require_model()
    spec = model.spec
    if not (spec.causal and spec.has_lm_head):
        raise InputError(
            f"{spec.name} is not a causal language model with a trained LM head: retrieval "
            "and streaming heads are defined during generation"
        )
    n_prompts, n_source, n_sink, n_window = (
        int(check_number(value, low, high, default))
        for value, (_, _, low, high, default) in zip(
            (prompts, source, sink, window), RETRIEVAL_SETTINGS, strict=True
        )
    )
    with session.lock:
        study = retrieval_study(
            model,
            prompts=n_prompts,
            source_length=n_source,
            sink=n_sink,
            window=n_window,
            progress=progress,
        )
    figures = (
        score_heatmap(study.retrieval.scores, colorbar_title="retrieval score"),
        score_heatmap(gate_scores(study.gates), colorbar_title="gate α"),
        score_heatmap(study.long_range, colorbar_title="long-range peak"),
        score_heatmap(study.echo, colorbar_title="echo score"),
        ablation_bars(study.checks),
    )
    return (*figures, label_table(study), alert(summary(study), kind="info"))


def sync_settings(trigger: object, view: object, values: tuple) -> tuple:
    """(the four settings' values, state edits) between the inputs and the URL's
    `retrieval=` (`dashboard.state`): when the page opens or the URL changes, the
    state sets the inputs; when an input changes to a valid value, the state (and so
    the URL) follows. Values out of range or not whole are ignored either way."""
    unchanged = (no_update,) * len(SETTING_IDS)
    if trigger is None or trigger == "view-state":
        current = view if isinstance(view, dict) else {}
        try:
            wanted = decode_retrieval(current.get(RETRIEVAL))
        except InputError:
            return (*unchanged, no_update)
        return (*wanted, no_update)
    numbers = [as_int(value) for value in values]
    if len(numbers) != len(SETTING_IDS) or any(number is None for number in numbers):
        return (*unchanged, no_update)
    text = encode_retrieval(numbers)
    try:
        decode_retrieval(text)  # each in its range
    except InputError:
        return (*unchanged, no_update)
    return (*unchanged, {RETRIEVAL: text})


def _failed(message: str) -> tuple:
    blank = message_figure(message)
    return (*(blank,) * len(OUTPUT_IDS), html.Div(), alert(message))


def register(app: Dash, session: ModelSession, manager) -> None:
    # The URL's retrieval= sets the task settings; edited settings go to the URL.
    @app.callback(
        *(Output(key, "value") for key in SETTING_IDS),
        Input("view-state", "data"),
    )
    @guarded(lambda message: (no_update,) * len(SETTING_IDS), "the retrieval settings")
    def _settings(view):
        return sync_settings("view-state", view, ())[: len(SETTING_IDS)]

    @app.callback(
        Output(state_out_id("retrieval"), "data"),
        *(Input(key, "value") for key in SETTING_IDS),
        prevent_initial_call=True,
    )
    @guarded(lambda message: no_update, "the retrieval settings in the URL")
    def _report(*values):
        return sync_settings("ret-prompts", None, values)[-1]

    @app.callback(
        *(Output(key, "figure") for key in OUTPUT_IDS),
        Output("ret-labels", "children"),
        Output("ret-message", "children"),
        Input("ret-run", "n_clicks"),
        State("ret-prompts", "value"),
        State("ret-source", "value"),
        State("ret-sink", "value"),
        State("ret-window", "value"),
        **job_options("ret", manager),
    )
    @on_death(_failed, "the retrieval job")
    def _study(set_progress, _clicks, prompts, source, sink, window):
        def report(done, total, label):
            set_progress((str(done), str(total), label))

        try:
            return study_outputs(session, prompts, source, sink, window, report)
        except Exception as error:
            return _failed(describe(error, "the retrieval job"))


__all__ = ["label_rows", "layout", "register", "study_outputs", "summary", "sync_settings"]
