"""Page 2, Head detail (`/head/<layer>/<head>?prompt=...`): one head's map with
token labels, its statistics and taxonomy scores, and its QK / OV spectra.

Switching heads changes only the URL: the page stays and its figures update
from the cached prompt, which keeps head switches fast.
"""

from __future__ import annotations

import json

from dash import Dash, Input, Output, State, dcc, html

from headscope.analyses.taxonomy import INSUFFICIENT, MIN_SUPPORT, NO_LABEL, HeadLabel
from headscope.dashboard import results, routes
from headscope.dashboard.components import card, graph, stats_table
from headscope.dashboard.inputs import check_head
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession, check_prompt_text
from headscope.dashboard.spectral import head_spectra_figure
from headscope.errors import InputError
from headscope.figures.arrays import reduction_factor
from headscope.figures.maps import attention_map, map_block
from headscope.figures.style import display_token, message_figure

#: Maps with more tokens than this per side are shown reduced by block max.
MAP_MAX_SIZE = 512


def layout() -> list:
    return [
        dcc.Store(id="head-drawn"),
        html.Div("Head", id="head-title", className="hs-page-title"),
        html.Div(
            "Queries down, keys across. Click a cell for its exact weight.",
            className="hs-page-sub",
        ),
        html.Div(id="head-message"),
        html.Div(
            [
                html.Div(
                    [
                        card(
                            None,
                            graph("head-map", message="Computing…", height=600),
                            html.Div(id="head-exact", className="hs-exact"),
                        ),
                    ]
                ),
                html.Div(
                    [
                        card(
                            "Heads",
                            html.Div(id="head-picker", className="hs-picker"),
                            note="Rows are layers.",
                        ),
                        card("Statistics", html.Div(id="head-stats")),
                        card(
                            "Taxonomy scores",
                            html.Div(id="head-taxonomy"),
                            note="Attention mass on each ideal pattern (1 = pure), with the "
                            "number of queries that define it; a label needs "
                            f"{MIN_SUPPORT}.",
                        ),
                        card(
                            "QK / OV spectra",
                            graph("head-spectra", height=300),
                            note="Singular values of W_Q·W_Kᵀ and W_V·W_O for this head.",
                        ),
                    ]
                ),
            ],
            className="hs-grid-main",
        ),
    ]


def _selected(session: ModelSession, pathname: str | None) -> tuple[int, int]:
    route = routes.parse_path(pathname)
    return check_head(session.require_model().spec, route.layer, route.head)


def head_main(session: ModelSession, pathname: str | None, store: dict | None) -> tuple:
    """(title, map figure, message, drawn) for the head in the URL; `drawn`
    names what is on screen, and the side panels follow it."""
    layer, head = _selected(session, pathname)
    prompt = store.get("prompt") if isinstance(store, dict) else None
    state = session.state(prompt)
    title = f"Layer {layer}, head {head}"
    figure = attention_map(
        state.record.map(layer, head),
        state.tokens,
        title=f"{title} · {len(state.tokens)} tokens",
        max_size=MAP_MAX_SIZE,
    )
    return title, figure, None, f"{layer}.{head}|{prompt}"


def head_picker(session: ModelSession, store: dict | None) -> list:
    """One link per head, carrying the prompt (built once per prompt; the
    current head is marked client side, see `register`)."""
    spec = session.require_model().spec
    prompt = store.get("prompt") if isinstance(store, dict) else None
    try:  # the links carry the prompt, rebuilt from it (never the browser's own string)
        search = routes.search_for(check_prompt_text(prompt))
    except InputError:
        search = ""
    rows = [
        dcc.Link(f"{li}.{hi}", href=routes.head_path(li, hi) + search, id=f"pick-{li}-{hi}")
        for li in range(spec.n_layers)
        for hi in range(spec.n_heads)
    ]
    return [
        html.Div(
            rows,
            className="hs-picker",
            style={"gridTemplateColumns": f"repeat({spec.n_heads}, minmax(0, 1fr))"},
        )
    ]


def head_side(session: ModelSession, pathname: str | None, store: dict | None) -> tuple:
    """(statistics table, taxonomy table) for the head in the URL."""
    layer, head = _selected(session, pathname)
    state = session.state(store.get("prompt") if isinstance(store, dict) else None)
    stats = results.summary(state)
    rows = [
        ("entropy (nats)", f"{float(stats.entropy[layer, head]):.3f}"),
        ("max weight (mean over queries)", f"{float(stats.max_weight[layer, head]):.3f}"),
        ("first-token mass", f"{float(stats.first_token[layer, head]):.3f}"),
        ("previous-token mass", f"{float(stats.previous_token[layer, head]):.3f}"),
    ]
    try:
        decision = results.sinks(state)
        alpha, baseline = float(decision.alpha[layer, head, 0]), float(decision.baseline[0])
        verdict = (
            "a sink"
            if bool(decision.sinks[layer, head, 0])
            else f"not a sink (needs > {decision.floor:g} and ≥ {decision.min_ratio:g}×)"
        )
        rows.append(
            (
                "sink score α₀",
                f"{alpha:.3f} = {alpha / baseline:.1f}× uniform ({baseline:.3f}): {verdict}",
            )
        )
    except Exception as error:
        rows.append(("sink score α₀", describe(error, "the sink score")))
    column = state.record.map(layer, head).sum(0)
    top = int(column.argmax())
    rows.append(("most attended key", f"{top}: {display_token(state.tokens[top])}"))
    try:
        evidence = results.taxonomy_evidence(state)
        cell = results.taxonomy_labels(state)[layer][head]
        taxonomy = [
            html.Div(
                f"label: {label_text(cell)}",
                className="hs-metric",
                style={"marginBottom": "6px"},
            ),
            stats_table(
                [
                    (
                        name.replace("_", " "),
                        f"{_value(float(value[layer, head]))} "
                        f"({_queries(int(evidence.support[name][layer, head]))})",
                    )
                    for name, value in evidence.scores.items()
                ]
            ),
        ]
    except Exception as error:
        taxonomy = alert(describe(error, "the head taxonomy"), kind="warning")
    return stats_table(rows), taxonomy


def label_text(cell: HeadLabel) -> str:
    """A head's label with its evidence, e.g. "induction 0.980 (support 9 queries)", or
    "insufficient evidence: induction 0.698 from 1 query (needs 4)"."""
    if cell.category is None:
        return cell.label
    category = cell.category.replace("_", " ")
    count = "unknown" if cell.support is None else _queries(cell.support)
    if cell.label == INSUFFICIENT:
        return (
            f"insufficient evidence: {category} {cell.score:.3f} from {count} (needs {MIN_SUPPORT})"
        )
    if cell.label == NO_LABEL:
        return f"none (best: {category} {cell.score:.3f}, support {count})"
    return f"{category} {cell.score:.3f} (support {count})"


def _value(score: float) -> str:
    return "undefined" if score != score else f"{score:.3f}"


def _queries(count: int) -> str:
    return f"{count} {'query' if count == 1 else 'queries'}"


def exact_values(
    session: ModelSession, click_data: dict | None, pathname: str | None, store: dict | None
) -> str:
    """The exact weight(s) behind a clicked map cell, as plain text."""
    if not click_data:
        return ""
    layer, head = _selected(session, pathname)
    state = session.state(store.get("prompt") if isinstance(store, dict) else None)
    tokens = state.tokens
    n = len(tokens)
    factor = reduction_factor(n, MAP_MAX_SIZE)
    try:
        point = click_data["points"][0]
        row = _category_index(point["y"], n, factor)
        col = _category_index(point["x"], n, factor)
    except (KeyError, IndexError, TypeError, ValueError):
        return ""
    entries = map_block(state.record.map(layer, head), tokens, row, col, factor)
    lines = [
        f"query {q} {display_token(qt)!s:<12} → key {k} {display_token(kt)!s:<12} {w:.6f}"
        for q, qt, k, kt, w in entries
    ]
    header = (
        "exact weight" if factor == 1 else f"largest exact weights in this {factor}×{factor} block"
    )
    return header + "\n" + "\n".join(lines)


def _category_index(label: object, n: int, factor: int) -> int:
    """The display row/column of an axis category ("12 the" or "8–15")."""
    text = str(label)
    start = text.split(" ", 1)[0].split("–", 1)[0]
    index = int(start) // factor
    if not 0 <= index * factor < n:
        raise ValueError("outside the map")
    return index


def register(app: Dash, session: ModelSession) -> None:
    @app.callback(
        Output("head-title", "children"),
        Output("head-map", "figure"),
        Output("head-message", "children"),
        Output("head-drawn", "data"),
        Input("url", "pathname"),
        Input("prompt-store", "data"),
    )
    @guarded(lambda m: ("Head", message_figure(m), alert(m), f"error|{m}"), "the map")
    def _main(pathname, store):
        return head_main(session, pathname, store)

    @app.callback(Output("head-picker", "children"), Input("prompt-store", "data"))
    @guarded(lambda message: [], "the head picker")
    def _picker(store):
        return head_picker(session, store)

    spec = session.spec
    if spec is not None:
        links = [(li, hi) for li in range(spec.n_layers) for hi in range(spec.n_heads)]
        app.clientside_callback(
            """
            function(pathname) {
                const match = /^\\/head\\/(\\d+)\\/(\\d+)/.exec(pathname || "");
                const current = match ? match[1] + "." + match[2] : "0.0";
                return HEADS.map(name => name === current ? "hs-current" : "");
            }
            """.replace("HEADS", json.dumps([f"{li}.{hi}" for li, hi in links])),
            [Output(f"pick-{li}-{hi}", "className") for li, hi in links],
            Input("url", "pathname"),
            Input("head-picker", "children"),
        )

    # The side panels follow the map (`head-drawn`) so that the map, which a
    # head switch waits for, does not share the server with them.
    @app.callback(
        Output("head-stats", "children"),
        Output("head-taxonomy", "children"),
        Input("head-drawn", "data"),
        State("url", "pathname"),
        State("prompt-store", "data"),
    )
    @guarded(lambda message: (alert(message), None), "the head statistics")
    def _side(_drawn, pathname, store):
        return head_side(session, pathname, store)

    @app.callback(
        Output("head-spectra", "figure"), Input("head-drawn", "data"), State("url", "pathname")
    )
    @guarded(lambda message: message_figure(message), "the spectra")
    def _spectra(_drawn, pathname):
        layer, head = _selected(session, pathname)
        return session.cached_model_result(
            ("head-spectra-figure", layer, head),
            lambda: head_spectra_figure(session, layer, head),
        )

    @app.callback(
        Output("head-exact", "children"),
        Input("head-map", "clickData"),
        State("url", "pathname"),
        State("prompt-store", "data"),
    )
    @guarded(lambda message: message, "the exact values")
    def _exact(click_data, pathname, store):
        return exact_values(session, click_data, pathname, store)
