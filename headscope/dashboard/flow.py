"""Page 3, Flow: for one query token, raw attention vs attention rollout vs
attention flow (Abnar & Zuidema 2020), each next to its content-free baseline
(the same computation on uniform attention over the mask: in causal models
every row drifts toward the first tokens regardless of content).

Attention flow solves max-flow problems and can take a while on long prompts,
so the page computes in a background job with progress and a cancel button.
"""

from __future__ import annotations

import torch
from dash import ALL, Dash, Input, Output, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from headscope.dashboard import results
from headscope.dashboard.background import POLL_INTERVAL_MS
from headscope.dashboard.components import card, graph, page_header, progress_block, token_chips
from headscope.dashboard.inputs import check_index, choice
from headscope.dashboard.messages import alert, describe
from headscope.dashboard.session import ModelSession
from headscope.figures.flow import flow_comparison
from headscope.figures.style import display_token, message_figure

RESIDUALS = (0.5, 0.25, 0.75, 0.9)


def layout() -> list:
    return [
        *page_header(
            "Flow",
            "Where one token's representation draws from: attention of the last layer, "
            "rollout and attention flow through all layers (residual weight α: Â = αI + (1−α)Ā).",
            "flow-message",
        ),
        card(
            None,
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("query token", htmlFor="flow-query"),
                            dcc.Dropdown(
                                id="flow-query", clearable=False, style={"width": "260px"}
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("residual weight α", htmlFor="flow-residual"),
                            dcc.Dropdown(
                                id="flow-residual",
                                clearable=False,
                                value=0.5,
                                options=[{"label": f"{r:g}", "value": r} for r in RESIDUALS],
                                style={"width": "120px"},
                            ),
                        ],
                        className="hs-control",
                    ),
                ],
                className="hs-controls",
            ),
            progress_block("flow"),
            html.Div(
                "Click a token to make it the query. Shading: attention flow to it.",
                className="hs-note",
            ),
            html.Div(id="flow-tokens", className="hs-tokens"),
        ),
        card(None, graph("flow-figure", message="Computing…", height=560)),
    ]


def query_options(session: ModelSession, store: dict | None) -> tuple[list[dict], int]:
    """Dropdown options (one per token) and the default query (the last token)."""
    state = session.state(store.get("prompt") if isinstance(store, dict) else None)
    options = [
        {"label": f"{i}: {display_token(token)}", "value": i}
        for i, token in enumerate(state.tokens)
    ]
    return options, len(options) - 1


def flow_outputs(
    session: ModelSession,
    store: dict | None,
    query: object,
    residual: object,
    progress=None,
) -> tuple:
    """(figure, token chips, message) for one query. `progress(done, total,
    label)` is told about each of the four steps."""
    report = progress or (lambda done, total, label: None)
    state = session.state(store.get("prompt") if isinstance(store, dict) else None)
    spec = session.require_model().spec
    tokens = state.tokens
    n = len(tokens)
    q = check_index(query, n, name="query", default=n - 1)
    alpha = choice(residual, RESIDUALS, 0.5)
    pattern = state.record.pattern
    raw = pattern[-1].double().mean(0)[q]
    visible = torch.zeros(n, dtype=torch.float64)
    visible[: q + 1 if spec.causal else n] = 1.0
    series = {"raw attention (last layer, head mean)": raw}
    baselines = {"raw attention (last layer, head mean)": visible / visible.sum()}
    problems = []
    report(1, 4, "attention rollout…")
    try:
        series["attention rollout"] = results.rollout(state, alpha)[-1][q]
        baselines["attention rollout"] = _baseline(n, spec, "rollout", q, alpha)
    except Exception as error:
        problems.append(describe(error, "attention rollout"))
    report(2, 4, "attention flow (max-flow)…")
    try:
        series["attention flow"] = results.attention_flow(state, alpha)[q]
        baselines["attention flow"] = _baseline(n, spec, "flow", q, alpha)
    except Exception as error:
        problems.append(describe(error, "attention flow"))
    report(4, 4, "drawing…")
    kind = "causal" if spec.causal else "bidirectional"
    figure = flow_comparison(
        tokens,
        q,
        series,
        {name: value for name, value in baselines.items() if value is not None},
        title=f"Query {q}: {display_token(tokens[q])}  ·  baseline: uniform {kind} attention",
    )
    shade = series.get("attention flow", series.get("attention rollout", raw))
    chips = token_chips(
        tokens, weights=[float(v) for v in shade], query=q, button_type="flow-token"
    )
    message = alert("; ".join(dict.fromkeys(problems)), kind="info") if problems else None
    return figure, chips, message


def _baseline(n: int, spec, method: str, query: int, residual: float):
    try:
        return results.content_free(n, spec.n_layers, spec.causal, method, residual)[query]
    except Exception:  # the baseline is a guide; its absence must not hide the result
        return None


def register(app: Dash, session: ModelSession, manager) -> None:
    @app.callback(
        Output("flow-query", "options"),
        Output("flow-query", "value"),
        Input("prompt-store", "data"),
    )
    def _options(store):
        try:
            return query_options(session, store)
        except Exception:
            return [], None

    @app.callback(
        Output("flow-query", "value", allow_duplicate=True),
        Input({"type": "flow-token", "index": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    def _pick(clicks):
        trigger = ctx.triggered_id
        if not isinstance(trigger, dict) or not any(clicks or []):
            raise PreventUpdate
        return int(trigger["index"])

    @app.callback(
        Output("flow-figure", "figure"),
        Output("flow-tokens", "children"),
        Output("flow-message", "children"),
        Input("prompt-store", "data"),
        Input("flow-query", "value"),
        Input("flow-residual", "value"),
        background=True,
        manager=manager,
        interval=POLL_INTERVAL_MS,
        progress=[
            Output("flow-progress", "value"),
            Output("flow-progress", "max"),
            Output("flow-progress-label", "children"),
        ],
        running=[
            (Output("flow-progress-block", "style"), {"display": "flex"}, {"display": "none"}),
            (Output("flow-cancel", "disabled"), False, True),
        ],
        cancel=[Input("flow-cancel", "n_clicks")],
        prevent_initial_call=False,
    )
    def _flow(set_progress, store, query, residual):
        if query is None:
            return no_update, no_update, no_update

        def report(done, total, label):
            set_progress((str(done), str(total), label))

        try:
            return flow_outputs(session, store, query, residual, progress=report)
        except Exception as error:
            message = describe(error, "the flow page")
            return message_figure(message), [], alert(message)
