"""Contributions: what each head, MLP and the embeddings write toward one
prediction (docs/methods.md §6). For a chosen position and target token: the
direct logit attribution per head and per layer (with the final norm's scale
frozen, so the parts sum to the logit; the page shows the check), the logit lens
per layer, and the residual contribution graph (the LLM Transparency Tool's view).

One forward per choice (fast), so the page computes in an ordinary callback. The
exact parts are also in the `data-parts` attribute of `#contrib-parts` (JSON),
so a test or a script can read what the page shows.
"""

from __future__ import annotations

import json

from dash import ALL, Dash, Input, Output, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from headscope.dashboard.components import card, graph, page_header, stats_table, token_chips
from headscope.dashboard.inputs import check_index, check_number, choice, clicked_index
from headscope.dashboard.messages import alert, guarded
from headscope.dashboard.session import ModelSession
from headscope.errors import InputError
from headscope.experiments.contributions import (
    Contributions,
    contributions,
    embedding_attribution,
    token_id,
)
from headscope.figures.contributions import (
    attribution_heatmap,
    contribution_graph_figure,
    layer_bars,
    logit_lens_figure,
)
from headscope.figures.style import display_token, message_figure

TARGETS = {"top": "the model's top prediction", "next": "the actual next token"}
SHARES = (0.01, 0.02, 0.04, 0.08, 0.16)
MAX_TOKENS_SHOWN = 600


def layout(session: ModelSession | None = None) -> list:
    """The page. For an encoder (no logits, post-norm) the prediction controls, the
    logit lens and the graph are hidden: only the split of the sentence embedding
    applies (their components stay, hidden, so the callbacks keep their ids)."""
    spec = session.spec if session is not None else None
    hidden = {"display": "none"} if spec is not None and not spec.causal else None
    return [
        *page_header(
            "Contributions",
            "What each head, MLP and the embeddings write toward one prediction: direct "
            "logit attribution, the logit lens and the residual contribution graph.",
            "contrib-message",
        ),
        card(
            None,
            html.Div(
                [
                    _control(
                        "position (predicting the token after it)",
                        dcc.Dropdown(
                            id="contrib-position", clearable=False, style={"width": "300px"}
                        ),
                    ),
                    _control(
                        "target token",
                        dcc.Dropdown(
                            id="contrib-target",
                            clearable=False,
                            value="top",
                            options=[{"label": v, "value": k} for k, v in TARGETS.items()],
                            style={"width": "240px"},
                        ),
                    ),
                    _control(
                        "minus the logit of (optional, one token)",
                        dcc.Input(
                            id="contrib-contrast",
                            type="text",
                            debounce=True,
                            placeholder="e.g. a wrong answer",
                            style={"width": "200px"},
                        ),
                    ),
                    _control(
                        "graph: hide edges under",
                        dcc.Dropdown(
                            id="contrib-share",
                            clearable=False,
                            value=0.04,
                            options=[{"label": f"{s:.0%}", "value": s} for s in SHARES],
                            style={"width": "110px"},
                        ),
                    ),
                ],
                className="hs-controls",
                style=hidden,
            ),
            html.Div("Click a token to pick the position.", className="hs-note", style=hidden),
            html.Div(id="contrib-tokens", className="hs-tokens"),
        ),
        card(None, html.Div(id="contrib-summary"), html.Div(id="contrib-parts")),
        html.Div(
            [
                card(None, graph("contrib-heads", message="Computing…", height=320)),
                card(None, graph("contrib-layers", message="Computing…", height=320)),
            ],
            className="hs-grid-2",
        ),
        html.Div(
            [
                card(None, graph("contrib-lens", message="Computing…", height=300)),
                card(
                    "The target token, layer by layer",
                    html.Div(id="contrib-lens-table"),
                    note="Rank (1 = top), probability and logit of the target under the "
                    "logit lens: the residual after each stage through the final norm (its "
                    "own scale) and the unembedding. The last row is the model's output.",
                ),
            ],
            className="hs-grid-main",
            style=hidden,
        ),
        card(None, graph("contrib-graph", message="Computing…", height=460), style=hidden),
    ]


def _control(label: str, control) -> html.Div:
    return html.Div(
        [html.Label(label, htmlFor=control.id), control],
        className="hs-control",
    )


def position_options(session: ModelSession, store: dict | None) -> tuple[list[dict], int]:
    """One option per token (labelled with the token it predicts, where the
    prompt has one) and the default: the last position."""
    batch = session.tokenize(store.get("prompt") if isinstance(store, dict) else None)
    tokens = batch.tokens[0]
    options = []
    for i, token in enumerate(tokens):
        label = f"{i}: {display_token(token)}"
        if i + 1 < len(tokens):
            label += f"  → {display_token(tokens[i + 1])}"
        options.append({"label": label, "value": i})
    return options, len(options) - 1


def _parts_json(result: Contributions) -> str:
    a = result.attribution
    return json.dumps(
        {
            "measured": a.measured,
            "logit": a.logit,
            "heads": a.heads.tolist(),
            "attention_bias": a.attention_bias.tolist(),
            "mlps": a.mlps.tolist(),
            "token_embedding": a.token_embedding,
            "positional_embedding": a.positional_embedding,
            "final_bias": a.final_bias,
            "position": a.position,
            "target": a.target,
            "contrast": a.contrast,
        }
    )


def _summary(result: Contributions) -> list:
    a = result.attribution
    total = a.total()
    heads = float(a.heads.sum())
    rows = [
        ("measured", a.measured),
        ("the model's value (same forward)", f"{a.logit:.5f}"),
        ("sum of the parts below", f"{total:.5f}"),
        ("|sum − model| (float32 rounding)", f"{abs(total - a.logit):.1e}"),
        ("all heads (Σ of the heatmap)", f"{heads:+.5f}"),
        ("attention output biases b_O", f"{float(a.attention_bias.sum()):+.5f}"),
        ("all MLPs", f"{float(a.mlps.sum()):+.5f}"),
        ("token embedding", f"{a.token_embedding:+.5f}"),
        ("positional embedding (learned positions only)", f"{a.positional_embedding:+.5f}"),
        ("final-norm bias · W_U + unembedding bias", f"{a.final_bias:+.5f}"),
    ]
    convention = (
        f"Convention: the final {a.norm}'s scale s = {a.scale:.4g} is frozen at its value on "
        "this forward. Given s the norm is linear, so each part's logit is "
        "part·(g ⊙ W_U[:, target])/s"
        + (" after centring" if a.norm == "LayerNorm" else "")
        + ", and the parts add up to the logit exactly (up to float32 rounding). These are "
        "direct effects: what a head writes that a later layer reads (e.g. an MLP) counts "
        "to that later layer, not to the head. One prompt, one position; no baseline "
        "(0 means no direct effect)."
    )
    return [stats_table(rows), html.P(convention, className="hs-note")]


def _lens_table(result: Contributions) -> html.Table:
    lens = result.lens
    rows = [
        (stage, f"#{int(rank) + 1} · p {float(p):.3f} · {float(logit):+.2f}")
        for stage, rank, p, logit in zip(
            lens.stages, lens.target_rank, lens.target_prob, lens.target_logit, strict=True
        )
    ]
    return stats_table(rows)


def contribution_outputs(
    session: ModelSession,
    store: dict | None,
    position: object,
    target: object,
    contrast: object,
    min_share: object,
) -> tuple:
    """(summary, parts div, heads, layers, lens, lens table, graph, token chips)
    for one choice of position and target token."""
    model = session.require_model()
    spec = model.spec
    batch = session.tokenize(store.get("prompt") if isinstance(store, dict) else None)
    tokens = batch.tokens[0]
    p = check_index(position, len(tokens), name="position", default=len(tokens) - 1)
    if not spec.causal:  # every token is pooled: no position to pick
        return (*_encoder_outputs(session, batch), token_chips(tokens))
    chips = token_chips(tokens, query=p, button_type="contrib-token")
    if not spec.has_lm_head:
        text = f"{spec.name} has no trained LM head, so its logits mean nothing"
        blank = message_figure(text)
        return alert(text, kind="info"), None, blank, blank, blank, None, blank, chips
    mode = choice(target, tuple(TARGETS), "top")
    if mode == "next" and p == len(tokens) - 1:
        raise InputError(
            "the last token has no next token in the prompt: pick another position, "
            "or the model's top prediction"
        )
    other = None
    if isinstance(contrast, str) and contrast.strip():
        other = token_id(model, contrast)
    share = choice(check_number(min_share, 0.0, 1.0, 0.04), SHARES, 0.04)
    with session.lock:
        result = contributions(model, batch, p, mode, contrast=other, min_share=share)
    a = result.attribution
    parts = html.Div(id="contrib-parts-data", **{"data-parts": _parts_json(result)})
    height = max(240, 150 + 34 * spec.n_layers)
    embeddings = a.token_embedding + a.positional_embedding
    return (
        _summary(result),
        parts,
        attribution_heatmap(a, height=height),
        layer_bars(
            a.attention,
            a.mlps,
            title=f"Per layer: attention vs MLP (embeddings {embeddings:+.3f}, "
            f"final biases {a.final_bias:+.3f})",
            height=height,
        ),
        logit_lens_figure(result.lens),
        _lens_table(result),
        contribution_graph_figure(result.graph, attribution=a),
        chips,
    )


def _encoder_outputs(session: ModelSession, batch) -> tuple:
    """(summary, parts div, heads, layers, lens, lens table, graph) for an encoder:
    each component's part of the sentence embedding (§6.4); the logit lens and the
    contribution graph do not apply."""
    model = session.require_model()
    spec = model.spec
    with session.lock:
        a = embedding_attribution(model, batch)
    units = "projection on e/‖e‖"
    rows = [
        ("measured", "the sentence embedding e (mean over tokens), projected on e/‖e‖"),
        ("‖e‖ (the model's embedding, same forward)", f"{a.norm:.5f}"),
        ("sum of the parts below", f"{a.total():.5f}"),
        ("|sum − ‖e‖| (float32 rounding)", f"{abs(a.total() - a.norm):.1e}"),
        ("all heads (Σ of the heatmap)", f"{float(a.heads.sum()):+.5f}"),
        ("attention output biases b_O", f"{float(a.attention_bias.sum()):+.5f}"),
        ("all MLPs", f"{float(a.mlps.sum()):+.5f}"),
        ("embedding block (after its LayerNorm)", f"{a.embeddings:+.5f}"),
        ("biases of the block LayerNorms", f"{a.norm_biases:+.5f}"),
    ]
    convention = (
        f"{spec.name} is a post-norm encoder: every block re-normalises its sum, and "
        f"{'it has no trained LM head, so ' if not spec.has_lm_head else ''}there is no "
        "logit to attribute. The page splits the sentence embedding instead: with every "
        "LayerNorm's scale frozen at its value on this forward, each norm is linear, so "
        "e is a sum of parts, each carried through the later norms; each part is shown "
        "as its projection on e's direction (the parts sum to ‖e‖; 0 = nothing along e). "
        "The position picker does not apply (every token is pooled); the logit lens and "
        "the contribution graph need logits and an additive residual stream, so they "
        "are not shown."
    )
    summary = [stats_table(rows), html.P(convention, className="hs-note")]
    data = {
        "measured": a.measured,
        "norm": a.norm,
        "heads": a.heads.tolist(),
        "attention_bias": a.attention_bias.tolist(),
        "mlps": a.mlps.tolist(),
        "embeddings": a.embeddings,
        "norm_biases": a.norm_biases,
    }
    parts = html.Div(id="contrib-parts-data", **{"data-parts": json.dumps(data)})
    height = max(240, 150 + 34 * spec.n_layers)
    blank = message_figure("not applicable to an encoder (no logits)")
    return (
        summary,
        parts,
        attribution_heatmap(a, units=units, height=height),
        layer_bars(
            a.attention,
            a.mlps,
            title=f"Per layer: attention vs MLP (embedding block {a.embeddings:+.3f}, "
            f"norm biases {a.norm_biases:+.3f})",
            units=units,
            height=height,
        ),
        blank,
        None,
        message_figure("not applicable to a post-norm encoder (not an additive residual)"),
    )


def _failed(message: str) -> tuple:
    blank = message_figure(message)
    return alert(message), None, blank, blank, blank, None, blank, no_update


#: `contribution_outputs` with every failure shown as a message on the page.
contribution_page = guarded(_failed, "the contributions page")(contribution_outputs)


def register(app: Dash, session: ModelSession) -> None:
    @app.callback(
        Output("contrib-position", "options"),
        Output("contrib-position", "value"),
        Input("prompt-store", "data"),
    )
    def _options(store):
        try:
            return position_options(session, store)
        except Exception:
            return [], None

    @app.callback(
        Output("contrib-position", "value", allow_duplicate=True),
        Input({"type": "contrib-token", "index": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    @guarded(lambda message: no_update, "picking the position")
    def _pick(clicks):
        index = clicked_index(ctx.triggered_id, clicks, MAX_TOKENS_SHOWN)
        if index is None:
            raise PreventUpdate
        return index

    @app.callback(
        Output("contrib-summary", "children"),
        Output("contrib-parts", "children"),
        Output("contrib-heads", "figure"),
        Output("contrib-layers", "figure"),
        Output("contrib-lens", "figure"),
        Output("contrib-lens-table", "children"),
        Output("contrib-graph", "figure"),
        Output("contrib-tokens", "children"),
        Input("prompt-store", "data"),
        Input("contrib-position", "value"),
        Input("contrib-target", "value"),
        Input("contrib-contrast", "value"),
        Input("contrib-share", "value"),
    )
    def _contributions(store, position, target, contrast, share):
        if position is None:
            raise PreventUpdate
        return contribution_page(session, store, position, target, contrast, share)
