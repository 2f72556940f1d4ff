"""Page 5, Position: attention sinks per head (Xiao et al. 2023; the α_k metric
of Gu et al. 2025, read against uniform attention's α_k, docs/methods.md §3.2) and
the model's cumulative influence by distance next to the same computation on the
attention mask alone (Wu et al. 2025, "On the Emergence of Position Bias in
Transformers")."""

from __future__ import annotations

from dash import Dash, Input, Output, dcc, html

from headscope.analyses.position import SINK_FLOOR, SINK_MIN_QUERIES, SINK_RATIO
from headscope.dashboard import results
from headscope.dashboard.components import card, graph, page_header
from headscope.dashboard.inputs import check_number, choice
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession
from headscope.figures.position import influence_by_distance, sink_scores
from headscope.figures.style import display_token, message_figure

#: The range of the sink-ratio slider.
RATIO_MIN, RATIO_MAX = 1.0, 10.0
#: Rows of the sink heatmap shown unless "every head" is ticked (the heads with the highest α_k).
TOP_HEADS = 24
#: Sink (head, key) pairs named in the summary line (the strongest); the rest fold away.
TOP_PAIRS = 8

#: Masks offered as the mask-only baseline (the first is the model's own).
CAUSAL_MASKS = ("causal", "sliding_window", "prefix", "decay")
BIDIRECTIONAL_MASKS = ("bidirectional",)


def mask_choices(session: ModelSession) -> tuple[str, ...]:
    spec = session.spec
    return CAUSAL_MASKS if spec is None or spec.causal else BIDIRECTIONAL_MASKS


def layout(session: ModelSession) -> list:
    masks = mask_choices(session)
    return [
        *page_header(
            "Position",
            "Which keys soak up attention regardless of content, and how influence spreads "
            "with distance compared to what the mask alone would give.",
            "pos-message",
        ),
        html.Div(
            [
                card(
                    "Attention sinks",
                    html.Div(
                        [
                            html.Label("sink ratio to uniform attention", htmlFor="pos-threshold"),
                            dcc.Slider(
                                id="pos-threshold",
                                min=RATIO_MIN,
                                max=RATIO_MAX,
                                step=0.5,
                                value=SINK_RATIO,
                                marks={v: f"{v:g}×" for v in (1, 2, 4, 6, 8, 10)},
                            ),
                        ],
                        className="hs-control",
                        style={"maxWidth": "360px"},
                    ),
                    html.Div(id="pos-sink-heads", className="hs-metric", style={"margin": "6px 0"}),
                    dcc.Checklist(
                        id="pos-all-heads",
                        options=[{"label": " show every head", "value": "all"}],
                        value=[],
                        inputStyle={"marginRight": "4px"},
                        style={"fontSize": "12px"},
                    ),
                    graph("pos-sinks", message="Computing…", height=420),
                    note="α_k = mean attention to key k over the queries that can see it. "
                    "Uniform attention over the same keys gives α_k^uniform (the causal mask "
                    "alone drifts it toward key 0; 1/T when bidirectional), read from the "
                    f"model. A sink needs α_k > {SINK_FLOOR:g}, α_k ≥ ratio × α_k^uniform "
                    f"and at least {SINK_MIN_QUERIES} queries that see the key. With more than "
                    f"{TOP_HEADS} heads the map shows the {TOP_HEADS} with the highest α_k "
                    "(sinks first) unless “show every head” is ticked.",
                ),
                card(
                    "Influence by distance",
                    html.Div(
                        [
                            html.Label("mask-only baseline", htmlFor="pos-mask"),
                            dcc.Dropdown(
                                id="pos-mask",
                                value=masks[0],
                                clearable=False,
                                options=[{"label": m.replace("_", " "), "value": m} for m in masks],
                                style={"width": "220px"},
                            ),
                        ],
                        className="hs-control",
                    ),
                    graph("pos-influence", message="Computing…", height=420),
                    note="Cumulative product of the head-averaged maps (no residual): mass at "
                    "each |query − key| distance after each layer. Dashed: uniform attention "
                    "over the mask alone (decay: weights ∝ γ^distance).",
                ),
            ],
            className="hs-grid-2",
        ),
    ]


def check_ratio(value: object, default: float = SINK_RATIO) -> float:
    """The slider's ratio: a finite number, clipped to [RATIO_MIN, RATIO_MAX]."""
    return check_number(value, RATIO_MIN, RATIO_MAX, default)


def position_outputs(
    session: ModelSession,
    store: dict | None,
    ratio: object,
    mask: object,
    every_head: object = None,
) -> tuple:
    """(sink heads text, sink figure, influence figure, message). `every_head`
    (the checklist's value, ["all"] when ticked) draws every head's row instead
    of the TOP_HEADS strongest."""
    state = session.state(store.get("prompt") if isinstance(store, dict) else None)
    record = state.record
    limit = check_ratio(ratio)
    problems = []
    try:
        decision = results.sinks(state, limit)
        sinks = sink_scores(
            decision.alpha,
            state.tokens,
            sinks=decision.sinks,
            baseline=decision.baseline,
            support=decision.support,
            min_queries=decision.min_queries,
            rule=f"≥ {limit:g}× uniform",
            layer_index=record.layer_index,
            head_index=record.head_index,
            max_heads=None if isinstance(every_head, list) and "all" in every_head else TOP_HEADS,
        )
        # The strongest pairs first (ratio to uniform attention), the rest folded away.
        hot = sorted(decision.pairs(), key=lambda p: -float(decision.ratio[p]))

        def named(pairs) -> str:
            return ", ".join(
                f"L{record.layer_index[li]}.H{record.head_index[hi]}→{k} "
                f"{display_token(state.tokens[k])} ({float(decision.ratio[li, hi, k]):.1f}×)"
                for li, hi, k in pairs
            )

        first = display_token(state.tokens[0]) if state.tokens else "BOS"
        bos = (
            f" Key 0 is {first}, added by the tokenizer." if record.provenance.prepended_bos else ""
        )
        rule = f"{decision.rule()}, the mask read from the model."
        strongest = "" if len(hot) <= TOP_PAIRS else f", the {TOP_PAIRS} strongest"
        text = (
            f"{len(hot)} sink (head, key) pairs{strongest}: {named(hot[:TOP_PAIRS])}. "
            f"Rule: {rule}{bos}"
            if hot
            else f"No sink: no head has {rule}{bos}"
        )
        reach = 1.0 / float(decision.baseline[0])
        if reach < limit:  # even α_0 = 1 would fall short of the ratio
            text += (
                f" On {len(state.tokens)} tokens even all of every query's attention on "
                f"key 0 is only {reach:.1f}× uniform: too short a prompt to call a "
                "first-token sink."
            )
        if len(hot) > TOP_PAIRS:
            text = [
                html.Div(text),
                html.Details(
                    [html.Summary(f"all {len(hot)} pairs"), html.Div(named(hot))],
                    id="pos-all-pairs",
                ),
            ]
    except Exception as error:
        problems.append(describe(error, "the sink scores"))
        sinks, text = message_figure("sink scores unavailable"), ""
    try:
        kind = choice(mask, mask_choices(session), mask_choices(session)[0])
        curves = results.influence(state, kind)
        influence = influence_by_distance(
            curves.model,
            curves.baseline,
            layer_index=record.layer_index,
            baseline_name=f"{curves.mask} mask only",
        )
    except Exception as error:
        problems.append(describe(error, "the influence curves"))
        influence = message_figure("influence curves unavailable")
    message = alert("; ".join(dict.fromkeys(problems)), kind="warning") if problems else None
    return text, sinks, influence, message


def register(app: Dash, session: ModelSession) -> None:
    @app.callback(
        Output("pos-sink-heads", "children"),
        Output("pos-sinks", "figure"),
        Output("pos-influence", "figure"),
        Output("pos-message", "children"),
        Input("prompt-store", "data"),
        Input("pos-threshold", "value"),
        Input("pos-mask", "value"),
        Input("pos-all-heads", "value"),
    )
    @guarded(lambda m: ("", message_figure(m), message_figure(m), alert(m)), "the position page")
    def _position(store, threshold, mask, every_head):
        return position_outputs(session, store, threshold, mask, every_head)
