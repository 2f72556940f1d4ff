"""Page 3, Flow: for one query token, raw attention of a chosen layer and head,
attention rollout and attention flow (Abnar & Zuidema 2020), each next to its
content-free baseline (the same computation on uniform attention over the
mask: in causal models every row drifts toward the first tokens regardless of
content), and gradient-weighted relevance (Chefer et al. 2021) for the model's
top prediction at the last position, which has no such baseline.

Attention flow solves max-flow problems and can take a while on long prompts,
so the page computes in a background job with progress and a cancel button.
"""

from __future__ import annotations

import torch
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from headscope.dashboard import results
from headscope.dashboard.background import job_options, on_death
from headscope.dashboard.components import card, graph, page_header, progress_block, token_chips
from headscope.dashboard.inputs import check_head, check_index, choice, clicked_index
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession
from headscope.errors import InputError
from headscope.figures.flow import first_token_note, flow_comparison
from headscope.figures.style import display_token, message_figure

RESIDUALS = (0.5, 0.25, 0.75, 0.9)
#: Token chips are buttons up to this many tokens (`components.token_chips`'s limit).
MAX_TOKENS_SHOWN = 600
#: The head dropdown's value for the head-averaged map.
MEAN = "mean"
RELEVANCE = "relevance (Chefer et al. 2021)"


def layout() -> list:
    return [
        *page_header(
            "Flow",
            "Where one token's representation draws from: raw attention of one layer, "
            "rollout and attention flow through all layers (residual weight α: "
            "Â = αI + (1−α)Ā), and gradient-weighted relevance for the model's prediction.",
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
                    html.Div(
                        [
                            html.Label("raw attention: layer", htmlFor="flow-layer"),
                            dcc.Dropdown(
                                id="flow-layer", clearable=False, style={"width": "140px"}
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("raw attention: head", htmlFor="flow-head"),
                            dcc.Dropdown(id="flow-head", clearable=False, style={"width": "180px"}),
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
        card(
            None,
            html.Div(id="flow-notes"),
            graph("flow-figure", message="Computing…", height=560),
        ),
    ]


def query_options(session: ModelSession, store: dict | None) -> tuple[list[dict], int]:
    """Dropdown options (one per token) and the default query (the last token)."""
    state = session.state(store.get("prompt") if isinstance(store, dict) else None)
    options = [
        {"label": f"{i}: {display_token(token)}", "value": i}
        for i, token in enumerate(state.tokens)
    ]
    return options, len(options) - 1


def raw_options(
    session: ModelSession, layer: object = None, head: object = None
) -> tuple[list[dict], int, list[dict], object]:
    """(layer options, layer, head options, head) for the raw-attention picker:
    every layer, "mean over heads" and every head. `layer` and `head` (the
    current values) are kept when valid; the default is the last layer's mean."""
    spec = session.require_model().spec
    layers = [{"label": f"layer {i}", "value": i} for i in range(spec.n_layers)]
    heads = [{"label": "mean over heads", "value": MEAN}] + [
        {"label": f"head {h}", "value": h} for h in range(spec.n_heads)
    ]
    try:
        layer, head = raw_choice(spec, layer, head)
    except InputError:
        layer, head = spec.n_layers - 1, MEAN
    return layers, layer, heads, head


def raw_choice(spec, layer: object, head: object) -> tuple[int, object]:
    """(layer, head or MEAN) checked against the model; None picks the last
    layer and the head mean. InputError for anything else out of range."""
    layer = spec.n_layers - 1 if layer is None else layer
    head = MEAN if head is None else head
    if head == MEAN:
        layer_i, _ = check_head(spec, layer, 0)
        return layer_i, MEAN
    return check_head(spec, layer, head)


def flow_outputs(
    session: ModelSession,
    store: dict | None,
    query: object,
    residual: object,
    *,
    layer: object = None,
    head: object = None,
    progress=None,
) -> tuple:
    """(figure, token chips, notes) for one query. `layer`/`head` choose the raw
    attention map (None: the last layer, mean over heads; out of range:
    InputError). `progress(done, total, label)` is told about each of the steps."""
    report = progress or (lambda done, total, label: None)
    state = session.state(store.get("prompt") if isinstance(store, dict) else None)
    model = session.require_model()
    spec = model.spec
    record = state.record
    tokens = state.tokens
    n = len(tokens)
    q = check_index(query, n, name="query", default=n - 1)
    alpha = choice(residual, RESIDUALS, 0.5)
    layer_i, head_i = raw_choice(spec, layer, head)
    maps = record.pattern[record.layer_index.index(layer_i)].double()
    if head_i == MEAN:
        raw_name = f"raw attention, layer {layer_i}, mean over heads"
        raw = maps.mean(0)[q]
    else:
        raw_name = f"raw attention, layer {layer_i}, head {head_i}"
        raw = maps[record.head_index.index(head_i)][q]
    visible = torch.zeros(n, dtype=torch.float64)
    visible[: q + 1 if spec.causal else n] = 1.0
    series: dict[str, object] = {raw_name: raw}
    baselines = {raw_name: visible / visible.sum()}
    problems = []
    report(1, 4, "attention rollout…")
    try:
        series["attention rollout"] = results.rollout(state, alpha)[-1][q]
        baselines["attention rollout"] = _baseline(n, spec, "rollout", q, alpha)
    except Exception as error:
        problems.append(describe(error, "attention rollout"))
    limit = exact_flow_limit(session, len(record.layer_index))
    notices = []
    if limit is not None and n > limit:
        notices.append(flow_skipped_note(n, len(record.layer_index), limit))
    else:
        report(2, 4, "attention flow (max-flow)…")
        try:
            series["attention flow"] = results.attention_flow(state, alpha)[q]
            baselines["attention flow"] = _baseline(n, spec, "flow", q, alpha)
        except Exception as error:
            problems.append(describe(error, "attention flow"))
    report(3, 4, "relevance (forward and backward pass)…")
    relevance_name, relevance_row, relevance_note = _relevance(session, state, q)
    series[relevance_name] = relevance_row
    report(4, 4, "drawing…")
    kind = "causal" if spec.causal else "bidirectional"
    figure = flow_comparison(
        tokens,
        q,
        series,
        {name: value for name, value in baselines.items() if value is not None},
        title=(
            f"Query {q}: {display_token(tokens[q])}  ·  one prompt, {n} tokens  ·  "
            f"dotted: content-free baseline (uniform {kind} attention, same computation)"
        ),
        y_titles={relevance_name: "share of row"},
    )
    shade = series.get("attention flow", series.get("attention rollout", raw))
    chips = token_chips(
        tokens, weights=[float(v) for v in shade], query=q, button_type="flow-token"
    )
    first = display_token(tokens[0])
    warnings = []
    for name in (raw_name, "attention rollout", "attention flow"):
        if name in series:
            note = first_token_note(name, series[name], baselines.get(name), q, first, mask=kind)
            if note:
                warnings.append(note)
    notes = [
        alert(" ".join(notices), kind="info") if notices else None,
        alert("; ".join(dict.fromkeys(problems)), kind="warning") if problems else None,
        alert("\n".join(warnings), kind="warning") if warnings else None,
        html.P(relevance_note, className="hs-note"),
    ]
    return figure, chips, html.Div([note for note in notes if note is not None])


def exact_flow_limit(session: ModelSession, n_layers: int) -> int | None:
    """The longest prompt (tokens) the page solves attention flow for, or None
    for no limit: one or two layers have a closed form (O(N³) arithmetic), three
    or more need max-flows whose cost grows faster than N³ (`session.max_flow_tokens`
    says where the page stops; see `DEFAULT_MAX_FLOW_TOKENS` for the measurement)."""
    return None if n_layers <= 2 else int(session.max_flow_tokens)


def flow_skipped_note(n: int, n_layers: int, limit: int) -> str:
    """Why the page shows no attention flow for this prompt, and what it shows instead."""
    return (
        f"Attention flow is not computed for {n} tokens: it is exact (max-flow between "
        f"every pair of tokens through {n_layers} layers), and its cost grows faster than "
        f"N³, so the page solves it up to {limit} tokens. Rollout, its linear "
        "approximation, is shown (and shades the tokens); shorten the prompt to see flow."
    )


def _relevance(session: ModelSession, state, query: int) -> tuple[str, object, str]:
    """(panel title, row of R normalised to sum 1 or a message, note) for `query`."""
    spec = session.require_model().spec
    if not spec.has_lm_head:
        text = f"relevance needs a trained LM head or a target; not available for {spec.name}"
        return RELEVANCE, text, f"{text} (its logits mean nothing, and the page picks no target)."
    try:
        result = results.relevance(session, state)
    except Exception as error:
        text = describe(error, "relevance")
        return RELEVANCE, text, text
    row = result.map[query]
    predicted = display_token(result.token)
    last = len(state.tokens) - 1
    name = f"{RELEVANCE} for the top prediction after the last token, {predicted!r}"
    note = (
        f"Relevance explains one number: the logit ({result.logit:.2f}) of the model's top "
        f"prediction after the last token, {predicted!r}. Its bars are row {query} of "
        "R = I + Σ gradient-weighted attention (R ≥ I, rows do not sum to 1), divided by "
        "the row's sum, so the query's own bar includes the identity. Unlike the other "
        "panels it has no content-free baseline: the gradients depend on the content."
    )
    if query != last:
        note += (
            f" Query {query} is not the last token: its row keeps only the attention at "
            f"position {query} that fed the last token's prediction."
        )
    return name, row / row.sum(), note


def _baseline(n: int, spec, method: str, query: int, residual: float):
    try:
        return results.content_free(n, spec.n_layers, spec.causal, method, residual)[query]
    except Exception:  # the baseline is a guide; its absence must not hide the result
        return None


def _flow_failed(message: str) -> tuple:
    return message_figure(message), [], alert(message)


#: `flow_outputs` with every failure (a bad picker value, a missing model) shown
#: as a message on the page instead of reaching dash.
flow_page = guarded(_flow_failed, "the flow page")(flow_outputs)


def register(app: Dash, session: ModelSession, manager) -> None:
    @app.callback(
        Output("flow-query", "options"),
        Output("flow-query", "value"),
        Output("flow-layer", "options"),
        Output("flow-layer", "value"),
        Output("flow-head", "options"),
        Output("flow-head", "value"),
        Input("prompt-store", "data"),
        State("flow-layer", "value"),
        State("flow-head", "value"),
    )
    def _options(store, layer, head):
        try:
            return *query_options(session, store), *raw_options(session, layer, head)
        except Exception:
            return [], None, [], None, [], None

    @app.callback(
        Output("flow-query", "value", allow_duplicate=True),
        Input({"type": "flow-token", "index": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    @guarded(lambda message: no_update, "picking the query token")
    def _pick(clicks):
        index = clicked_index(ctx.triggered_id, clicks, MAX_TOKENS_SHOWN)
        if index is None:
            raise PreventUpdate
        return index

    @app.callback(
        Output("flow-figure", "figure"),
        Output("flow-tokens", "children"),
        Output("flow-notes", "children"),
        Input("prompt-store", "data"),
        Input("flow-query", "value"),
        Input("flow-residual", "value"),
        Input("flow-layer", "value"),
        Input("flow-head", "value"),
        **job_options("flow", manager, run_button=False, prevent_initial_call=False),
    )
    @on_death(_flow_failed, "the flow job")
    def _flow(set_progress, store, query, residual, layer, head):
        if query is None:
            return no_update, no_update, no_update

        def report(done, total, label):
            set_progress((str(done), str(total), label))

        return flow_page(session, store, query, residual, layer=layer, head=head, progress=report)
