"""Page 2, Head detail (`/head/<layer>/<head>?prompt=...`): one head's map with
token labels, its statistics and taxonomy scores, and its QK / OV spectra; token
views of the same map: the prompt as coloured text (hover a token to shade what
it attends to, or what attends to it) and attention lines (this head, or every
head of its layer). A toggle switches the map and the token views between the
attention weights and value-weighted attention (Kobayashi et al. 2020).

Switching heads changes only the URL: the page stays and its figures update
from the cached prompt, which keeps head switches fast: no view runs a forward
on a head switch (the value norms are one forward per prompt, memoized), and
hovering a token is answered in the browser from the head's map in a dcc.Store.
"""

from __future__ import annotations

import json

import numpy as np
from dash import Dash, Input, Output, State, dcc, html

from headscope.analyses.taxonomy import INSUFFICIENT, MIN_SUPPORT, NO_LABEL, HeadLabel
from headscope.dashboard import results, routes
from headscope.dashboard.components import card, graph, stats_table, token_chips
from headscope.dashboard.inputs import check_head
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession, check_prompt_text
from headscope.dashboard.spectral import head_spectra_figure
from headscope.errors import InputError
from headscope.figures.arrays import reduction_factor
from headscope.figures.maps import attention_map, map_block
from headscope.figures.style import display_token, message_figure
from headscope.figures.tokens import attention_lines

#: Maps with more tokens than this per side are shown reduced by block max.
MAP_MAX_SIZE = 512
#: Prompts up to this many tokens get the hover view of the coloured text (the head's
#: map travels to the browser with each head: N² small integers).
TOKEN_VIEW_MAX = 256
#: Weights travel to the browser as integers in units of 1/TOKEN_SCALE.
TOKEN_SCALE = 10_000
WEIGHTING_OPTIONS = [
    {"label": "attention α", "value": "raw"},
    {"label": "value-weighted α·‖v·W_O‖ (Kobayashi et al. 2020)", "value": "value"},
]
DIRECTION_OPTIONS = [
    {"label": "attends to (hover a query)", "value": "to"},
    {"label": "attended by (hover a key)", "value": "from"},
]
SCOPE_OPTIONS = [
    {"label": "this head", "value": "head"},
    {"label": "every head of this layer", "value": "layer"},
]


def _control(label: str, component) -> html.Div:
    return html.Div([html.Label(label, className="hs-label"), component], className="hs-control")


def _radio(component_id: str, options: list[dict], value: str) -> dcc.RadioItems:
    return dcc.RadioItems(
        id=component_id,
        options=options,
        value=value,
        inline=True,
        inputStyle={"marginRight": "4px"},
        labelStyle={"marginRight": "14px", "fontSize": "13px"},
    )


def layout() -> list:
    return [
        dcc.Store(id="head-drawn"),
        dcc.Store(id="head-token-data"),
        dcc.Store(id="head-token-painted"),
        html.Div("Head", id="head-title", className="hs-page-title"),
        html.Div(
            "Queries down, keys across. Click a cell for its exact weight; hover a token "
            "below to see what it attends to.",
            className="hs-page-sub",
        ),
        html.Div(id="head-message"),
        html.Div(
            [
                html.Div(
                    [
                        card(
                            None,
                            html.Div(
                                _control(
                                    "weights",
                                    _radio("head-weighting", WEIGHTING_OPTIONS, "raw"),
                                ),
                                className="hs-controls",
                            ),
                            graph("head-map", message="Computing…", height=600),
                            html.Div(id="head-exact", className="hs-exact"),
                        ),
                        card(
                            "Tokens",
                            html.Div(
                                _control(
                                    "shade", _radio("head-token-direction", DIRECTION_OPTIONS, "to")
                                ),
                                className="hs-controls",
                            ),
                            html.Div(id="head-token-chips", className="hs-tokens"),
                            html.Div(
                                "Hover a token.", id="head-token-readout", className="hs-exact"
                            ),
                            note="Hover a token: “attends to” shades each key by the hovered "
                            "query's weight on it, “attended by” each query by its weight on "
                            "the hovered key (darkest: the largest). The shading follows the "
                            "map's weights (attention or value-weighted).",
                        ),
                        card(
                            "Attention lines",
                            html.Div(
                                _control(
                                    "heads", _radio("head-lines-scope", SCOPE_OPTIONS, "head")
                                ),
                                className="hs-controls",
                            ),
                            graph("head-lines", message="Computing…", height=400, toolbar=False),
                            note="Queries on the left, keys on the right; a line's opacity is "
                            "its weight (weights under 0.05 are not drawn). Every head of the "
                            "layer: one colour each, click the legend to hide one.",
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


def check_weighting(value: object) -> str:
    """ "value" (value-weighted attention) or "raw" (anything else)."""
    return "value" if value == "value" else "raw"


def _prompt(store: dict | None) -> object:
    return store.get("prompt") if isinstance(store, dict) else None


def head_main(
    session: ModelSession, pathname: str | None, store: dict | None, weighting: str = "raw"
) -> tuple:
    """(title, map figure, message, drawn) for the head in the URL under
    `weighting` ("raw" or "value"); `drawn` names what is on screen, and the
    side panels and token views follow it."""
    layer, head = _selected(session, pathname)
    weighting = check_weighting(weighting)
    prompt = _prompt(store)
    state = session.state(prompt)
    title = f"Layer {layer}, head {head}"
    suffix = "" if weighting == "raw" else " · value-weighted α·‖v·W_O‖, rows renormalized"
    figure = attention_map(
        results.head_map(session, state, layer, head, weighting),
        state.tokens,
        title=f"{title} · {len(state.tokens)} tokens{suffix}",
        max_size=MAP_MAX_SIZE,
    )
    drawn = f"{layer}.{head}|{prompt}" + ("" if weighting == "raw" else "|value")
    return title, figure, None, drawn


def token_view_chips(session: ModelSession, store: dict | None) -> list:
    """The prompt's tokens as chips for the hover view (text, never markup)."""
    state = session.state(_prompt(store))
    return token_chips(state.tokens, hover_class="hs-tchip")


def token_view_data(
    session: ModelSession, pathname: str | None, store: dict | None, weighting: str = "raw"
) -> dict:
    """What the browser needs to shade the chips on hover, for the head in the URL:
    its map under `weighting` as integer rows (`weights[q][k]`, in units of
    1/`scale`; None above TOKEN_VIEW_MAX tokens, with a `note`) and the tokens
    as display text for the readout."""
    layer, head = _selected(session, pathname)
    weighting = check_weighting(weighting)
    state = session.state(_prompt(store))
    tokens = [display_token(t) for t in state.tokens]
    data: dict = {
        "head": f"{layer}.{head}",
        "weighting": weighting,
        "tokens": tokens,
        "scale": TOKEN_SCALE,
        "weights": None,
        "note": "Hover a token.",
    }
    if len(tokens) > TOKEN_VIEW_MAX:
        data["note"] = (
            f"The hover view shades prompts of up to {TOKEN_VIEW_MAX} tokens; this one has "
            f"{len(tokens)}. The map shows every weight."
        )
        return data
    matrix = results.head_map(session, state, layer, head, weighting).float().numpy()
    data["weights"] = np.rint(np.nan_to_num(matrix) * TOKEN_SCALE).astype(np.int32).tolist()
    return data


def lines_figure(
    session: ModelSession,
    pathname: str | None,
    store: dict | None,
    weighting: str = "raw",
    scope: str = "head",
):
    """Attention lines of the head in the URL (`scope` "head") or of every head of
    its layer (`scope` "layer", one colour each), under `weighting`."""
    layer, head = _selected(session, pathname)
    weighting = check_weighting(weighting)
    state = session.state(_prompt(store))
    label = "" if weighting == "raw" else " · value-weighted"
    if scope == "layer":
        heads = list(state.record.head_index)
        return attention_lines(
            results.layer_maps(session, state, layer, weighting),
            state.tokens,
            heads=[f"head {h}" for h in heads],
            title=f"Layer {layer}, every head{label}",
        )
    return attention_lines(
        results.head_map(session, state, layer, head, weighting),
        state.tokens,
        title=f"Layer {layer}, head {head}{label}",
    )


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
    session: ModelSession,
    click_data: dict | None,
    pathname: str | None,
    store: dict | None,
    weighting: str = "raw",
) -> str:
    """The exact weight(s) behind a clicked map cell (under `weighting`), as plain text."""
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
    matrix = results.head_map(session, state, layer, head, check_weighting(weighting))
    entries = map_block(matrix, tokens, row, col, factor)
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
        Input("head-weighting", "value"),
    )
    @guarded(lambda m: ("Head", message_figure(m), alert(m), f"error|{m}"), "the map")
    def _main(pathname, store, weighting):
        return head_main(session, pathname, store, weighting)

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
        State("head-weighting", "value"),
    )
    @guarded(lambda message: message, "the exact values")
    def _exact(click_data, pathname, store, weighting):
        return exact_values(session, click_data, pathname, store, weighting)

    # The token views follow the map too (a head switch waits for the map only);
    # everything they show comes from the prompt's cached results.
    @app.callback(Output("head-token-chips", "children"), Input("prompt-store", "data"))
    @guarded(lambda message: [], "the tokens")
    def _chips(store):
        return token_view_chips(session, store)

    @app.callback(
        Output("head-token-data", "data"),
        Input("head-drawn", "data"),
        State("url", "pathname"),
        State("prompt-store", "data"),
        State("head-weighting", "value"),
    )
    @guarded(lambda message: {"weights": None, "note": message}, "the token view")
    def _token_data(_drawn, pathname, store, weighting):
        return token_view_data(session, pathname, store, weighting)

    @app.callback(
        Output("head-lines", "figure"),
        Input("head-drawn", "data"),
        Input("head-lines-scope", "value"),
        State("url", "pathname"),
        State("prompt-store", "data"),
        State("head-weighting", "value"),
    )
    @guarded(lambda message: message_figure(message), "the attention lines")
    def _lines(_drawn, scope, pathname, store, weighting):
        return lines_figure(session, pathname, store, weighting, scope)

    app.clientside_callback(
        TOKEN_VIEW_JS,
        Output("head-token-painted", "data"),
        Input("head-token-data", "data"),
        Input("head-token-direction", "value"),
        Input("head-token-chips", "children"),
    )


#: Hover view of the coloured text, run in the browser: a mouseover on a chip of
#: #head-token-chips (one listener on the document, installed once) shades every
#: chip from the head's map in head-token-data; new data (a head switch, the
#: weighting) or a new direction repaints for the last hovered token. Text only
#: goes through textContent.
TOKEN_VIEW_JS = """
function(data, direction, _chips) {
    const view = window.headscopeTokenView || (window.headscopeTokenView = {active: null});
    view.data = data;
    view.direction = direction === "from" ? "from" : "to";
    if (!view.paint) {
        const fmt = function (w, scale) { return (w / scale).toFixed(4); };
        view.paint = function () {
            const box = document.getElementById("head-token-chips");
            const readout = document.getElementById("head-token-readout");
            if (!box) { return; }
            const chips = box.querySelectorAll(".hs-tchip");
            const d = view.data || {};
            const weights = d.weights;
            const i = view.active;
            const ready = !!weights && i !== null && i < weights.length &&
                chips.length === weights.length;
            let values = null;
            let top = 0;
            if (ready) {
                values = view.direction === "from"
                    ? weights.map(function (row) { return row[i]; })
                    : weights[i];
                top = Math.max.apply(null, values);
            }
            chips.forEach(function (chip, j) {
                const w = ready ? values[j] : 0;
                const alpha = top > 0 ? w / top : 0;
                chip.style.background = alpha > 0
                    ? "rgba(31, 95, 168, " + alpha.toFixed(3) + ")" : "";
                chip.style.color = alpha > 0.55 ? "#ffffff" : "";
                chip.classList.toggle("hs-token-query", ready && j === i);
                chip.dataset.weight = ready ? fmt(w, d.scale) : "";
            });
            if (!readout) { return; }
            if (!ready) { readout.textContent = d.note || "Hover a token."; return; }
            const order = values.map(function (w, j) { return [w, j]; })
                .filter(function (p) { return p[0] > 0; })
                .sort(function (a, b) { return b[0] - a[0] || a[1] - b[1]; })
                .slice(0, 5);
            const list = order.map(function (p) {
                return p[1] + " " + d.tokens[p[1]] + " " + fmt(p[0], d.scale);
            }).join(" · ");
            const what = view.direction === "from"
                ? "key " + i + " " + d.tokens[i] + " is attended by: "
                : "query " + i + " " + d.tokens[i] + " attends to: ";
            readout.textContent = "head " + d.head + " · " + what + (list || "nothing");
        };
        document.addEventListener("mouseover", function (event) {
            const target = event.target;
            const chip = target && target.closest
                ? target.closest("#head-token-chips .hs-tchip") : null;
            if (!chip) { return; }
            const index = Number(chip.dataset.index);
            if (index !== view.active) { view.active = index; view.paint(); }
        });
    }
    window.requestAnimationFrame(function () { view.paint(); });
    return window.dash_clientside.no_update;
}
"""
