"""Dynamics page: how the heads of a training run change over its checkpoints,
and a diff of two checkpoints (docs/methods.md §2.13, §2.14; Olsson et al. 2022).

The series is a built-in one (`models.checkpoints.BUILTIN_SERIES`: toy-induction's
shipped checkpoints), independent of the model the dashboard serves. Every
checkpoint runs on the same prompt set (`experiments.dynamics.repeat_prompts`
by default). Both jobs run in the background (`experiments.dynamics`,
`experiments.diffing`); the figures are redrawn from the stored results when a
category or layer changes, without recomputing. The score, the diffed steps,
the delta and the matching layer are in the URL (`score=`, `steps=A,B`,
`delta=`, `match=`, see `dashboard.state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import torch
from dash import Dash, Input, Output, State, dcc, html, no_update

from headscope.analyses.diffing import AMBIGUOUS_MARGIN, ModelDiff
from headscope.analyses.dynamics import TrainingDynamics, phase_change
from headscope.analyses.uncertainty import Interval
from headscope.dashboard.background import job_options, on_death
from headscope.dashboard.components import (
    card,
    graph,
    page_header,
    progress_block,
    prompt_set_box,
    table_panel,
)
from headscope.dashboard.inputs import as_int, choice, prompt_lines
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession
from headscope.dashboard.state import decode_layer, decode_steps, state_out, state_out_id
from headscope.errors import InputError
from headscope.experiments.diffing import diff_models
from headscope.experiments.dynamics import DYNAMICS_CATEGORIES, repeat_prompts, training_dynamics
from headscope.figures.dynamics import diff_heatmap, dynamics_figure, similarity_heatmap
from headscope.figures.style import message_figure
from headscope.models.checkpoints import BUILTIN_SERIES, load_checkpoints

SERIES = tuple(BUILTIN_SERIES)
#: Prompts the page runs at most per checkpoint.
MAX_PROMPTS = 32
DIFF_KEYS = ("importance", *DYNAMICS_CATEGORIES)
#: The scores the page plots over steps (the URL's `score=`).
SCORES = DYNAMICS_CATEGORIES
START = "Press Compute"


def _shape(series: str) -> tuple[tuple[int, ...], int]:
    """The steps of a series and its number of layers (from its config; no model loaded)."""
    from transformers import AutoConfig

    checkpoints = load_checkpoints(series)
    config = AutoConfig.from_pretrained(checkpoints.sources[0].directory)
    return checkpoints.steps, int(config.num_hidden_layers)


@cache
def series_steps() -> tuple[int, ...]:
    """The steps of the page's built-in series (the URL's `steps=` names two of them)."""
    return load_checkpoints(SERIES[0]).steps


@cache
def series_layers() -> int:
    """The layers of the page's built-in series (the URL's `match=` names one)."""
    return _shape(SERIES[0])[1]


def sync_pickers(
    trigger: object,
    view: object,
    score: object,
    step_a: object,
    step_b: object,
    delta: object,
    match: object,
) -> tuple:
    """(score, step A, step B, delta, matching layer pickers, state edits)
    between the pickers and the URL's state (`dashboard.state`): when the page
    opens or the URL changes, the state's `score`, `steps`, `delta` and `match`
    set the pickers; when a picker changes, the state (and so the URL) follows.
    Values the page does not offer are ignored."""
    steps = series_steps()
    if trigger is None or trigger == "view-state":
        current = view if isinstance(view, dict) else {}
        wanted_score, wanted_delta = current.get("score"), current.get("delta")
        try:
            pair: tuple = decode_steps(current.get("steps"), steps)
        except InputError:
            pair = (no_update, no_update)
        try:
            layer: object = decode_layer(current.get("match"), None, series_layers(), SERIES[0])
        except InputError:
            layer = no_update
        return (
            wanted_score if wanted_score in SCORES else no_update,
            *pair,
            wanted_delta if wanted_delta in DIFF_KEYS else no_update,
            layer,
            no_update,
        )
    edits = {}
    if score in SCORES:
        edits["score"] = score
    a, b = as_int(step_a), as_int(step_b)
    if a in steps and b in steps:
        edits["steps"] = f"{a},{b}"
    if delta in DIFF_KEYS:
        edits["delta"] = delta
    index = as_int(match)
    if index is not None and 0 <= index < series_layers():
        edits["match"] = str(index)
    return (*(no_update,) * 5, edits or no_update)


def layout(session: ModelSession) -> list:
    series = SERIES[0]
    steps, n_layers = _shape(series)
    step_options = [{"label": f"step {s}", "value": s} for s in steps]
    return [
        *page_header(
            "Training dynamics",
            "How each head's role forms over training (Olsson et al. 2022): taxonomy scores "
            "at every checkpoint of a series, the in-context loss (late-half minus early-half "
            "loss of each prompt), and a head-by-head diff of two checkpoints. The series is "
            "independent of the served model.",
            "dyn-message",
        ),
        card(
            None,
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("checkpoint series", htmlFor="dyn-series"),
                            dcc.Dropdown(
                                id="dyn-series",
                                value=series,
                                clearable=False,
                                options=[{"label": name, "value": name} for name in SERIES],
                                style={"width": "200px"},
                            ),
                            html.Div(
                                f"steps: {', '.join(str(s) for s in steps)}",
                                className="hs-muted",
                            ),
                        ],
                        className="hs-control",
                    ),
                    prompt_set_box("dyn-prompts", repeat_prompts(), height=96),
                    html.Div(
                        [
                            html.Label("score over steps", htmlFor="dyn-category"),
                            dcc.Dropdown(
                                id="dyn-category",
                                value="induction",
                                clearable=False,
                                options=[
                                    {"label": c.replace("_", " "), "value": c}
                                    for c in DYNAMICS_CATEGORIES
                                ],
                                style={"width": "200px"},
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Button("Compute", id="dyn-run", className="hs-button", n_clicks=0),
                    state_out("dynamics"),
                ],
                className="hs-controls",
            ),
            progress_block("dyn"),
        ),
        dcc.Store(id="dyn-store"),
        card(
            "Scores and in-context loss over training",
            graph("dyn-series-graph", message=START, height=520),
            html.Div(id="dyn-phase", className="hs-panel"),
            note="Top: each head's taxonomy score (mean over the prompts) at every checkpoint; "
            "dashed: chance, a head attending evenly. Bottom: the in-context loss, mean over "
            "prompts with its 95% bootstrap band; dashed: 0, nothing learnt in context. Shaded: "
            "the phase change, the checkpoint intervals where the head whose induction score "
            "grew most rose fastest and where the in-context loss dropped fastest (per step), "
            "when they are "
            "the same or adjacent (else the drop alone).",
        ),
        card(
            "Diff two checkpoints",
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("A", htmlFor="dyn-a"),
                            dcc.Dropdown(
                                id="dyn-a",
                                value=steps[0],
                                clearable=False,
                                options=step_options,
                                style={"width": "140px"},
                            ),
                            html.Label("B", htmlFor="dyn-b"),
                            dcc.Dropdown(
                                id="dyn-b",
                                value=steps[-1],
                                clearable=False,
                                options=step_options,
                                style={"width": "140px"},
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("delta of", htmlFor="dyn-key"),
                            dcc.Dropdown(
                                id="dyn-key",
                                value="induction",
                                clearable=False,
                                options=[
                                    {"label": k.replace("_", " "), "value": k} for k in DIFF_KEYS
                                ],
                                style={"width": "200px"},
                            ),
                            html.Label("layer (matching)", htmlFor="dyn-layer"),
                            dcc.Dropdown(
                                id="dyn-layer",
                                value=0,
                                clearable=False,
                                options=[
                                    {"label": f"layer {i}", "value": i} for i in range(n_layers)
                                ],
                                style={"width": "140px"},
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Button("Diff", id="dyn-diff-run", className="hs-button", n_clicks=0),
                ],
                className="hs-controls",
            ),
            progress_block("dyn-diff"),
            dcc.Store(id="dyn-diff-store"),
            html.Div(
                [
                    graph("dyn-diff-graph", message="Press Diff", height=320),
                    graph("dyn-match-graph", message="Press Diff", height=320),
                ],
                className="hs-grid-2",
            ),
            html.Div("Press Diff", id="dyn-diff-table", className="hs-panel hs-muted"),
            note="Delta: per head, the mean over prompts of B − A with its 95% bootstrap "
            "interval (n.s.: it includes 0); importance is the harm to the repeated-token loss "
            "when the head's z is zeroed. Matching: per layer, B's heads paired with A's by "
            "attention-map correlation (Hungarian algorithm); heads are only defined up to a "
            "permutation within a layer.",
        ),
    ]


# -- stores: results as JSON and back ----------------------------------------------------------


def _finite_or_nan(values: object) -> object:
    """JSON's null (how a NaN comes back from the browser) as NaN again."""
    if isinstance(values, list):
        return [_finite_or_nan(v) for v in values]
    return math.nan if values is None else values


def _double(values: object) -> torch.Tensor:
    return torch.tensor(_finite_or_nan(values), dtype=torch.float64)


def _tensor(values: object) -> torch.Tensor:
    return _double(values).float()


def dynamics_store(result: TrainingDynamics) -> dict:
    optional = {
        key: None if getattr(result, key) is None else getattr(result, key).tolist()
        for key in ("importance", "importance_low", "importance_high")
    }
    return {
        "name": result.name,
        "steps": list(result.steps),
        "scores": {k: v.tolist() for k, v in result.scores.items()},
        "support": {k: list(v) for k, v in result.support.items()},
        "labels": [[list(row) for row in grid] for grid in result.labels],
        "in_context_loss": result.in_context_loss.tolist(),
        "in_context_low": result.in_context_low.tolist(),
        "in_context_high": result.in_context_high.tolist(),
        "early_loss": result.early_loss.tolist(),
        "late_loss": result.late_loss.tolist(),
        "prompts": result.prompts,
        "chance": dict(result.chance),
        **optional,
    }


def dynamics_from_store(store: dict) -> TrainingDynamics:
    optional = {
        key: None if store.get(key) is None else _tensor(store[key])
        for key in ("importance", "importance_low", "importance_high")
    }
    return TrainingDynamics(
        name=str(store["name"]),
        steps=tuple(int(s) for s in store["steps"]),
        scores={k: _tensor(v) for k, v in store["scores"].items()},
        support={k: tuple(int(x) for x in v) for k, v in store["support"].items()},
        labels=tuple(tuple(tuple(row) for row in grid) for grid in store["labels"]),
        in_context_loss=_tensor(store["in_context_loss"]),
        in_context_low=_tensor(store["in_context_low"]),
        in_context_high=_tensor(store["in_context_high"]),
        early_loss=_tensor(store["early_loss"]),
        late_loss=_tensor(store["late_loss"]),
        prompts=int(store["prompts"]),
        chance={k: float(v) for k, v in store["chance"].items()},
        **optional,
    )


def diff_store(diff: ModelDiff) -> dict:
    return {
        "name_a": diff.name_a,
        "name_b": diff.name_b,
        "prompts": diff.prompts,
        "deltas": {
            k: {
                "mean": v.mean.tolist(),
                "low": v.low.tolist(),
                "high": v.high.tolist(),
                "n": v.n,
                "level": v.level,
            }
            for k, v in diff.deltas.items()
        },
        "scores_a": {k: v.tolist() for k, v in diff.scores_a.items()},
        "scores_b": {k: v.tolist() for k, v in diff.scores_b.items()},
        "labels_a": [list(row) for row in diff.labels_a],
        "labels_b": [list(row) for row in diff.labels_b],
        "similarity": diff.similarity.tolist(),
        "matching": diff.matching.tolist(),
        "matched_similarity": diff.matched_similarity.tolist(),
    }


def diff_from_store(store: dict) -> ModelDiff:
    return ModelDiff(
        name_a=str(store["name_a"]),
        name_b=str(store["name_b"]),
        prompts=int(store["prompts"]),
        deltas={
            k: Interval(
                _double(v["mean"]),
                _double(v["low"]),
                _double(v["high"]),
                int(v["n"]),
                float(v["level"]),
            )
            for k, v in store["deltas"].items()
        },
        scores_a={k: _tensor(v) for k, v in store["scores_a"].items()},
        scores_b={k: _tensor(v) for k, v in store["scores_b"].items()},
        labels_a=tuple(tuple(row) for row in store["labels_a"]),
        labels_b=tuple(tuple(row) for row in store["labels_b"]),
        similarity=_tensor(store["similarity"]),
        matching=torch.tensor(store["matching"], dtype=torch.long),
        matched_similarity=_tensor(store["matched_similarity"]),
    )


# -- callback bodies (plain functions, unit-tested) --------------------------------------------


def _prompts(text: object) -> list[str]:
    prompts = prompt_lines(text, limit=MAX_PROMPTS)
    if len(prompts) < 2:
        raise InputError("give at least two prompts: intervals are over prompts")
    return prompts


def _best_head(result: TrainingDynamics) -> tuple[int, int]:
    """The head whose induction score rose most from the first checkpoint to the last."""
    induction = result.scores["induction"]
    gain = (induction[-1] - induction[0]).nan_to_num(nan=-1.0)
    return divmod(int(gain.flatten().argmax()), induction.shape[2])


def series_figure(store: object, category: object):
    """The series figure for `category`, from the stored result."""
    if not isinstance(store, dict) or not store.get("steps"):
        return message_figure(START)
    result = dynamics_from_store(store)
    name = choice(category, DYNAMICS_CATEGORIES, "induction")
    phase = phase_change(result, *_best_head(result)) if len(result.steps) > 1 else None
    return dynamics_figure(result, category=name, phase=phase, chance=result.chance.get(name))


def phase_text(result: TrainingDynamics) -> str:
    """The phase change in words: the head, its score before and after, the drop."""
    if len(result.steps) < 2:
        return "one checkpoint: no change to find"
    phase = phase_change(result, *_best_head(result))
    chance = result.chance.get("induction", math.nan)
    return (
        f"Head {phase.layer}.{phase.head}'s induction score rose fastest between steps "
        f"{phase.rise_steps[0]} and {phase.rise_steps[1]} ({phase.score_before:.3f} → "
        f"{phase.score_after:.3f}; chance {chance:.3f}); the in-context loss dropped fastest "
        f"between steps {phase.drop_steps[0]} and {phase.drop_steps[1]} ({phase.drop:.3f} "
        f"nats). {'The same or adjacent intervals: a phase change.' if phase.coincide else ''}"
        f" Over {result.prompts} prompts at each checkpoint."
    )


def dynamics_outputs(
    series: object,
    prompts_text: object,
    category: object,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple:
    """(series figure, phase text, store, message) for the chosen built-in series."""
    name = choice(series, SERIES, SERIES[0])
    prompts = _prompts(prompts_text)
    result = training_dynamics(load_checkpoints(name), prompts, progress=progress)
    store = dynamics_store(result)
    message = alert(
        f"{len(result.steps)} checkpoints of {name}, {result.prompts} prompts each; taxonomy "
        "scores as on the Overview page, importance by zero ablation on the repeated tokens.",
        kind="info",
    )
    return series_figure(store, category), phase_text(result), store, message


def diff_rows(diff: ModelDiff, key: str) -> list[dict]:
    ambiguous = diff.ambiguous
    rows = []
    delta = diff.deltas.get(key)
    for layer, (row_a, row_b) in enumerate(zip(diff.labels_a, diff.labels_b, strict=True)):
        for head, (label_a, label_b) in enumerate(zip(row_a, row_b, strict=True)):
            text = "–"
            if delta is not None:
                mean, low, high = (
                    float(t[layer, head]) for t in (delta.mean, delta.low, delta.high)
                )
                flag = "" if (low > 0 or high < 0) else " n.s."
                text = (
                    f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{flag}"
                    if math.isfinite(low)
                    else f"{mean:+.3f}"
                )
            rows.append(
                {
                    "head": f"{layer}.{head}",
                    "label_a": label_a.replace("_", " "),
                    "label_b": label_b.replace("_", " ")
                    + (" (changed)" if label_a != label_b else ""),
                    "delta": text,
                    "matched": f"{layer}.{int(diff.matching[layer, head])}"
                    + (" (ambiguous)" if bool(ambiguous[layer, head]) else ""),
                    "r": f"{float(diff.matched_similarity[layer, head]):.3f}",
                }
            )
    return rows


COLUMNS = (
    ("head", "head of A"),
    ("label_a", "label in A"),
    ("label_b", "label in B"),
    ("delta", "Δ (B − A) [95% CI]"),
    ("matched", "matched head of B"),
    ("r", "map r"),
)
CELL = {"padding": "4px 8px", "borderBottom": "1px solid #eef0f3"}
NUMERIC = {**CELL, "fontFamily": "var(--hs-mono)", "fontSize": "12px"}
HEADER = {**CELL, "textAlign": "left", "fontWeight": 600, "borderBottom": "1px solid #c9ced6"}


def diff_table(diff: ModelDiff, key: str) -> html.Div:
    """Labels, deltas and matches per head (every value as text, never HTML)."""
    head = html.Thead(html.Tr([html.Th(title, style=HEADER) for _, title in COLUMNS]))
    body = html.Tbody(
        [
            html.Tr(
                [
                    html.Td(row[k], style=NUMERIC if k in ("delta", "r") else CELL)
                    for k, _ in COLUMNS
                ]
            )
            for row in diff_rows(diff, key)
        ]
    )
    table = html.Table(
        [head, body],
        id="dyn-diff-rows",
        style={"borderCollapse": "collapse", "width": "100%", "fontSize": "13px"},
    )
    return table_panel(table, name="diff")


def diff_views(store: object, key: object, layer: object) -> tuple:
    """(delta heat map, matching heat map, table) from the stored diff."""
    if not isinstance(store, dict) or not store.get("deltas"):
        blank = message_figure("Press Diff")
        return blank, blank, "Press Diff"
    diff = diff_from_store(store)
    name = choice(key, tuple(diff.deltas), "induction")
    index = as_int(layer)
    if index is None or not 0 <= index < diff.similarity.shape[0]:
        index = 0
    return diff_heatmap(diff, name), similarity_heatmap(diff, index), diff_table(diff, name)


def diff_outputs(
    series: object,
    prompts_text: object,
    step_a: object,
    step_b: object,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple:
    """(stored diff, layer options, message) for two checkpoints of the series."""
    name = choice(series, SERIES, SERIES[0])
    prompts = _prompts(prompts_text)
    checkpoints = load_checkpoints(name)
    a, b = as_int(step_a), as_int(step_b)
    if a not in checkpoints.steps or b not in checkpoints.steps:
        raise InputError(f"choose two steps of {name}: {checkpoints.steps}")
    report = progress or (lambda done, total, label: None)
    report(0, 2, f"step {a} and step {b}…")
    diff = diff_models(checkpoints.load(a), checkpoints.load(b), prompts)
    report(2, 2, "done")
    layers = [{"label": f"layer {i}", "value": i} for i in range(diff.similarity.shape[0])]
    changed = int(diff.label_changed.sum())
    matched = (
        "every head matched to itself"
        if diff.identity_matched
        else "some heads matched to a different index"
    )
    unsure = int(diff.ambiguous.sum())
    if unsure:
        matched += (
            f" ({unsure} pairs ambiguous: another matching within {AMBIGUOUS_MARGIN} "
            "summed correlation, so the maps do not decide them)"
        )
    message = alert(
        f"step {b} − step {a} over {diff.prompts} prompts: {changed} heads changed their "
        f"taxonomy label; {matched}.",
        kind="info",
    )
    return diff_store(diff), layers, message


def _failed(message: str) -> tuple:
    return message_figure(message), "", no_update, alert(message)


def _diff_failed(message: str) -> tuple:
    return no_update, no_update, alert(message)


def register(app: Dash, session: ModelSession, manager) -> None:
    # The URL's score, steps and delta set the pickers; the pickers' values go to the URL.
    @app.callback(
        Output("dyn-category", "value"),
        Output("dyn-a", "value"),
        Output("dyn-b", "value"),
        Output("dyn-key", "value"),
        Output("dyn-layer", "value"),
        Input("view-state", "data"),
    )
    @guarded(lambda message: (no_update,) * 5, "the score, steps, delta and layer pickers")
    def _pickers(view):
        return sync_pickers("view-state", view, None, None, None, None, None)[:5]

    @app.callback(
        Output(state_out_id("dynamics"), "data"),
        Input("dyn-category", "value"),
        Input("dyn-a", "value"),
        Input("dyn-b", "value"),
        Input("dyn-key", "value"),
        Input("dyn-layer", "value"),
        prevent_initial_call=True,
    )
    @guarded(lambda message: no_update, "the score, steps, delta and layer in the URL")
    def _report(score, step_a, step_b, delta, match):
        return sync_pickers("dyn-category", None, score, step_a, step_b, delta, match)[5]

    @app.callback(
        Output("dyn-series-graph", "figure", allow_duplicate=True),
        Input("dyn-category", "value"),
        State("dyn-store", "data"),
        prevent_initial_call=True,
    )
    @guarded(lambda message: (message_figure(message),), "the series figure")
    def _category(category, store):
        return series_figure(store, category)

    @app.callback(
        Output("dyn-series-graph", "figure"),
        Output("dyn-phase", "children"),
        Output("dyn-store", "data"),
        Output("dyn-message", "children"),
        Input("dyn-run", "n_clicks"),
        State("dyn-series", "value"),
        State("dyn-prompts", "value"),
        State("dyn-category", "value"),
        **job_options("dyn", manager),
    )
    @on_death(_failed, "the dynamics job")
    def _dynamics(set_progress, _clicks, series, prompts, category):
        def report(done, total, label):
            set_progress((str(done), str(max(total, 1)), label))

        try:
            return dynamics_outputs(series, prompts, category, report)
        except Exception as error:
            return _failed(describe(error, "the dynamics job"))

    @app.callback(
        Output("dyn-diff-store", "data"),
        Output("dyn-layer", "options"),
        Output("dyn-message", "children", allow_duplicate=True),
        Input("dyn-diff-run", "n_clicks"),
        State("dyn-series", "value"),
        State("dyn-prompts", "value"),
        State("dyn-a", "value"),
        State("dyn-b", "value"),
        **job_options("dyn-diff", manager),
    )
    @on_death(_diff_failed, "the diff job")
    def _diff(set_progress, _clicks, series, prompts, step_a, step_b):
        def report(done, total, label):
            set_progress((str(done), str(max(total, 1)), label))

        try:
            return diff_outputs(series, prompts, step_a, step_b, report)
        except Exception as error:
            return _diff_failed(describe(error, "the diff job"))

    @app.callback(
        Output("dyn-diff-graph", "figure"),
        Output("dyn-match-graph", "figure"),
        Output("dyn-diff-table", "children"),
        Input("dyn-diff-store", "data"),
        Input("dyn-key", "value"),
        Input("dyn-layer", "value"),
    )
    @guarded(
        lambda message: (message_figure(message), message_figure(message), message),
        "the diff views",
    )
    def _views(store, key, layer):
        return diff_views(store, key, layer)
