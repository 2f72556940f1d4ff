"""Page 1, Overview: every head of the prompt as a thumbnail grid, with
layer × head summaries (entropy, sink mass, taxonomy label). Clicking any head
opens its detail page."""

from __future__ import annotations

from dash import Dash, Input, Output, State, ctx, html, no_update
from dash.exceptions import PreventUpdate

from headscope.analyses.taxonomy import INSUFFICIENT, MIN_SUPPORT
from headscope.dashboard import results, routes
from headscope.dashboard.components import card, graph, page_header, token_chips
from headscope.dashboard.inputs import check_head, clicked_head
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession
from headscope.errors import InputError
from headscope.figures.heads import label_grid, layer_head_heatmap
from headscope.figures.maps import grid_head, head_grid
from headscope.figures.style import message_figure
from headscope.models.spec import ModelSpec

SUMMARY_GRAPHS = ("overview-entropy", "overview-sink", "overview-labels")


def layout() -> list:
    return [
        *page_header(
            "Overview",
            "Every head on the current prompt. Click a thumbnail or a cell to open the head.",
            "overview-message",
        ),
        card("Tokens", html.Div(id="overview-tokens", className="hs-tokens")),
        card(
            "Attention maps, layer × head",
            graph("overview-grid", message="Computing…", height=420),
            note="Each thumbnail is one head's map (queries down, keys across), scaled to its "
            "own maximum; long prompts are reduced by block max. Hover a cell for its query, "
            "key and weight.",
        ),
        html.Div(
            [
                card(
                    "Entropy",
                    graph("overview-entropy", height=260),
                    note="Mean over queries of the attention entropy (nats).",
                ),
                card(
                    "Sink mass",
                    graph("overview-sink", height=260),
                    note="Sink score of the first token, α₀ (mean attention to key 0 over "
                    "the queries that see it); the title gives uniform attention's α₀ over "
                    "the model's mask on this prompt, the content-free baseline.",
                ),
                card(
                    "Head taxonomy",
                    graph("overview-labels", height=260),
                    note="Primary pattern per head (the best score above its category's "
                    "threshold) and that score; hover for its support. A label needs "
                    f"{MIN_SUPPORT} defining queries: with fewer the head shows "
                    "“insufficient evidence”. Induction is never a layer-0 label.",
                ),
            ],
            className="hs-grid-3",
        ),
    ]


def overview_outputs(session: ModelSession, store: dict | None) -> tuple:
    """(token chips, grid, entropy, sink, labels figures, message) for a prompt.
    Each summary fails on its own: a missing analysis blanks one figure, not the page."""
    prompt = store.get("prompt") if isinstance(store, dict) else None
    state = session.state(prompt)
    record = state.record
    layers, heads = record.layer_index, record.head_index
    problems: list[str] = []
    stats = results.summary(state)

    sink_heading = ""
    try:
        decision = results.sinks(state)
        sink, sink_title = decision.alpha[..., 0], "α₀"
        sink_heading = f"uniform α₀ = {float(decision.baseline[0]):.2f}"
    except Exception as error:  # the position analysis is optional here
        problems.append(describe(error, "the sink score"))
        sink, sink_title = stats.first_token, "first-token mass"
    try:
        details = results.taxonomy_labels(state)
        labels = [[cell.label for cell in row] for row in details]
        labels_figure = label_grid(
            labels,
            scores=[[_score(cell.score) for cell in row] for row in details],
            support=[[_score(cell.support) for cell in row] for row in details],
            categories=[[cell.category for cell in row] for row in details],
            min_support=MIN_SUPPORT,
            layer_index=layers,
            head_index=heads,
        )
    except Exception as error:
        problems.append(describe(error, "the head taxonomy"))
        labels = None
        labels_figure = message_figure("head taxonomy unavailable")

    hover = [
        [
            f"entropy {float(stats.entropy[li, hi]):.2f} · {sink_title} {float(sink[li, hi]):.2f}"
            + (f" · {_label_text(labels[li][hi])}" if labels else "")
            for hi in range(len(heads))
        ]
        for li in range(len(layers))
    ]
    grid = head_grid(
        record.pattern, layer_index=layers, head_index=heads, hover=hover, tokens=state.tokens
    )
    entropy = layer_head_heatmap(
        stats.entropy, colorbar_title="nats", layer_index=layers, head_index=heads
    )
    sink_figure = layer_head_heatmap(
        sink,
        title=sink_heading,
        colorbar_title=sink_title,
        layer_index=layers,
        head_index=heads,
        zmin=0.0,
        zmax=1.0,
    )
    message = alert("; ".join(dict.fromkeys(problems)), kind="warning") if problems else None
    return (token_chips(state.tokens), grid, entropy, sink_figure, labels_figure, message)


def _score(value: float | int | None) -> float:
    return float("nan") if value is None else float(value)


def _label_text(label: str) -> str:
    return "insufficient evidence" if label == INSUFFICIENT else label.replace("_", " ")


def open_head(session: ModelSession, click_data: dict | None) -> str:
    """The head page path for a click on the grid or a summary heatmap."""
    if session.model is None:
        raise PreventUpdate
    return head_path_of_click(session.model.spec, click_data)


def head_path_of_click(spec: ModelSpec, click_data: object) -> str:
    """The head page path for a click on an overview grid or a summary heatmap of a
    model of `spec` (PreventUpdate for no click or a cell that names no head)."""
    if not click_data:
        raise PreventUpdate
    picked = clicked_head(click_data, spec)
    if picked is None:  # a thumbnail cell: its x and y name the head
        try:
            point = click_data["points"][0]  # type: ignore[index]
            named = grid_head(point.get("x"), point.get("y"))
            picked = None if named is None else check_head(spec, *named)
        except (TypeError, KeyError, IndexError, AttributeError, InputError):
            picked = None
    if picked is None:
        raise PreventUpdate
    return routes.head_path(*picked)


def _failed(message: str) -> tuple:
    blank = message_figure(message)
    return ([], blank, blank, blank, blank, alert(message))


def register(app: Dash, session: ModelSession) -> None:
    @app.callback(
        Output("overview-tokens", "children"),
        Output("overview-grid", "figure"),
        Output("overview-entropy", "figure"),
        Output("overview-sink", "figure"),
        Output("overview-labels", "figure"),
        Output("overview-message", "children"),
        Input("prompt-store", "data"),
    )
    @guarded(_failed, "the overview")
    def _overview(store):
        return overview_outputs(session, store)

    @app.callback(
        Output("url", "pathname"),
        Input("overview-grid", "clickData"),
        *(Input(graph_id, "clickData") for graph_id in SUMMARY_GRAPHS),
        State("url", "pathname"),
        prevent_initial_call=True,
    )
    @guarded(lambda message: no_update, "opening the head")
    def _open_head(*args):
        source = ctx.triggered_id
        sources = ("overview-grid", *SUMMARY_GRAPHS)
        if source not in sources:
            return no_update
        return open_head(session, args[sources.index(source)])
