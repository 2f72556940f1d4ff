"""Page 7, Ablation playground: toggle or scale heads (gates on z) and watch
the output change. Causal LMs show the next-token top-k and the loss on the
prompt's target tokens (its repeated tokens where it repeats itself, else every
token after the first: `experiments.attention.gated_run`); encoders
without a trained LM head (minilm) show the sentence embedding's cosine to the
unablated embedding and its similarity to a second sentence.

The gates live in the browser (`gates-store`) and in the URL (`?gates=1.3:0`,
`?heads=1.3` for the selected head, through the shell's `view-state` and this
page's `state_out`, see `dashboard.state`), so a link reproduces the playground
and the gates survive a visit to another page; each change runs one gated forward (plus a capture
of the gated maps) on the server. The maps show the gated weights, or their
difference from the ungated ones (gated − all heads on, a diverging scale
centred at 0).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from headscope.dashboard import state as view_state
from headscope.dashboard.components import card, graph, page_header
from headscope.dashboard.examples import SECOND_SENTENCE
from headscope.dashboard.inputs import check_fraction, check_gates, check_head
from headscope.dashboard.messages import alert, guarded
from headscope.dashboard.session import ModelSession, PromptState
from headscope.errors import InputError
from headscope.experiments import attention
from headscope.experiments.attention import GatedRun
from headscope.figures.maps import head_grid
from headscope.figures.predictions import next_token_bars, similarity_bars
from headscope.figures.style import DIVERGING, display_token, message_figure, plotly_text

TOP_K = 10
MAP_VIEWS = [
    {"label": "gated maps", "value": "gated"},
    {"label": "difference (gated − all heads on)", "value": "difference"},
]


def layout(session: ModelSession) -> list:
    spec = session.spec
    encoder = spec is not None and not spec.has_lm_head
    buttons = []
    if spec is not None:
        for layer in range(spec.n_layers):
            for head in range(spec.n_heads):
                buttons.append(
                    html.Button(
                        f"{layer}.{head}",
                        id={"type": "gate-cell", "layer": layer, "head": head},
                        className="hs-gate",
                        n_clicks=0,
                        title=f"layer {layer}, head {head}: click to toggle",
                    )
                )
    columns = spec.n_heads if spec is not None else 1
    second = html.Div(
        [
            html.Label("second sentence (similarity target)", htmlFor="play-second"),
            dcc.Input(
                id="play-second",
                value=SECOND_SENTENCE,
                type="text",
                debounce=True,
                style={"width": "100%", "fontFamily": "var(--hs-mono)"},
            ),
        ],
        className="hs-control",
        style={"display": "flex" if encoder else "none", "marginTop": "10px"},
    )
    result_title = "Sentence embedding" if encoder else f"Next token (top {TOP_K})"
    return [
        dcc.Store(id="gates-store", storage_type="memory"),
        dcc.Store(id="gates-selected", storage_type="memory"),
        view_state.state_out("playground"),
        *page_header(
            "Ablation playground",
            "Click a head to switch it off or on; the slider scales the selected head's z. "
            "Gate g: z ← g·z before W_O.",
            "play-message",
        ),
        html.Div(
            [
                html.Div(
                    [
                        card(
                            "Head gates",
                            html.Div(
                                buttons,
                                className="hs-picker",
                                id="play-gates",
                                style={"gridTemplateColumns": f"repeat({columns}, minmax(0, 1fr))"},
                            ),
                            html.Div(
                                [
                                    html.Span(
                                        "no head selected", id="play-selected", className="hs-label"
                                    ),
                                    dcc.Slider(
                                        id="play-scale",
                                        min=0,
                                        max=1,
                                        step=0.05,
                                        value=1,
                                        marks={0: "0", 0.5: "0.5", 1: "1"},
                                    ),
                                    html.Button(
                                        "Reset all gates",
                                        id="play-reset",
                                        className="hs-button hs-button-quiet",
                                        n_clicks=0,
                                    ),
                                ],
                                style={"marginTop": "10px"},
                            ),
                            second,
                        ),
                        card("Result", html.Div(id="play-metrics", className="hs-metric")),
                    ]
                ),
                card(result_title, graph("play-output", message="Computing…", height=360)),
            ],
            className="hs-grid-2",
        ),
        card(
            "Attention maps with these gates",
            dcc.RadioItems(
                id="play-view",
                options=MAP_VIEWS,
                value="gated",
                inline=True,
                inputStyle={"marginRight": "4px"},
                labelStyle={"marginRight": "14px", "fontSize": "13px"},
            ),
            graph("play-maps", message="Computing…", height=360),
            note="Gated maps: each thumbnail scaled to its own maximum. Difference: the gated "
            "weight minus the weight with every head on, per (query, key), on one scale "
            "centred at 0 (red: more attention with the gates; blue: less).",
        ),
    ]


# -- gate editing (pure) -----------------------------------------------------------------------


def edit_gates(
    session: ModelSession,
    trigger: object,
    scale: object,
    gates: object,
    selected: object,
) -> tuple[list[list[float]], list[int] | None, float]:
    """(gates, selected head, slider value) after a click on a head (toggle
    0 ↔ 1 and select it), a slider move (scale the selected head) or a reset."""
    spec = session.require_model().spec
    grid = check_gates(gates, spec)
    chosen = None
    if isinstance(selected, list) and len(selected) == 2:
        try:
            chosen = list(check_head(spec, *selected))
        except Exception:
            chosen = None
    if trigger == "play-reset":
        return [[1.0] * spec.n_heads for _ in range(spec.n_layers)], chosen, 1.0
    if isinstance(trigger, dict) and trigger.get("type") == "gate-cell":
        layer, head = check_head(spec, trigger.get("layer"), trigger.get("head"))
        grid[layer][head] = 0.0 if grid[layer][head] > 0 else 1.0
        return grid, [layer, head], grid[layer][head]
    if trigger == "play-scale" and chosen is not None:
        grid[chosen[0]][chosen[1]] = check_fraction(scale, 1.0)
        return grid, chosen, grid[chosen[0]][chosen[1]]
    current = grid[chosen[0]][chosen[1]] if chosen is not None else 1.0
    return grid, chosen, current


def gate_styles(
    session: ModelSession, gates: list[list[float]], selected, cells: list | None = None
) -> tuple[list, list]:
    """(style, className) of every gate button: in the layout's order, or for
    the button ids in `cells` (what the browser asked for) with `no_update`
    for an id that names no head of the model."""
    spec = session.require_model().spec
    if cells is None:
        cells = [
            {"layer": layer, "head": head}
            for layer in range(spec.n_layers)
            for head in range(spec.n_heads)
        ]
    styles, classes = [], []
    for cell in cells:
        try:
            layer, head = check_head(spec, cell.get("layer"), cell.get("head"))
        except (AttributeError, InputError):
            styles.append(no_update)
            classes.append(no_update)
            continue
        g = gates[layer][head]
        shade = 1.0 - g
        styles.append(
            {
                "background": f"rgba(180, 35, 24, {0.85 * shade:.3f})" if g < 1 else "#ffffff",
                "color": "#ffffff" if shade > 0.5 else "#1d2330",
            }
        )
        picked = isinstance(selected, list) and selected == [layer, head]
        classes.append("hs-gate" + (" hs-gate-selected" if picked else ""))
    return styles, classes


def requested_cells(outputs_list: object, index: int) -> list | None:
    """The gate-button ids of wildcard output `index` in dash's request (a list
    of `{"id": ..., "property": ...}`), or None when the request has no such list."""
    try:
        entries = outputs_list[index]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return None
    if not isinstance(entries, list):
        return None
    return [entry.get("id") if isinstance(entry, dict) else None for entry in entries]


def gates_from_view(
    session: ModelSession, view: object
) -> tuple[list[list[float]], list | None, float]:
    """(gates, selected head, slider value) from the shell's view state (the
    URL's `gates` and `heads`, already checked there and checked again here)."""
    spec = session.require_model().spec
    view = view if isinstance(view, dict) else {}
    grid = view_state.gate_grid(
        view_state.decode_gates(view.get(view_state.GATES) or "", spec), spec
    )
    heads = view_state.decode_heads(view.get(view_state.HEADS) or "", spec)
    chosen = list(heads[0]) if heads else None
    value = grid[chosen[0]][chosen[1]] if chosen else 1.0
    return grid, chosen, value


def gate_edits(grid: list[list[float]], chosen: list | None) -> dict:
    """The state edits of these gates and this selected head (for `state_out`)."""
    return {
        view_state.GATES: view_state.encode_gates(grid),
        view_state.HEADS: view_state.encode_heads([chosen]) if chosen else "",
    }


# -- the gated forward -------------------------------------------------------------------------


def gated_run(session: ModelSession, state: PromptState, gates: torch.Tensor) -> GatedRun:
    """Capture and outputs of the prompt with `gates` on z (under the model lock)."""
    batch = session.tokenize(state.prompt)
    with session.lock:
        return attention.gated_run(session.require_model(), batch, gates)


def reference_run(session: ModelSession, state: PromptState) -> GatedRun:
    """The ungated run of the prompt, cached with the prompt."""
    spec = session.require_model().spec
    ones = torch.ones(spec.n_layers, spec.n_heads)
    return state.cached("playground-reference", lambda: gated_run(session, state, ones))


def _embedding(session: ModelSession, text: str, gates: torch.Tensor | None = None) -> torch.Tensor:
    batch = session.tokenize(text)
    with session.lock:
        return attention.sentence_embedding(session.require_model(), batch, gates)


def playground_outputs(
    session: ModelSession,
    store: dict | None,
    gates: object,
    second: object,
    view: object = "gated",
) -> tuple:
    """(output figure, metrics text, maps figure, message). `view` "difference"
    draws the gated maps minus the ungated ones (`difference_grid`)."""
    model = session.require_model()
    spec = model.spec
    state = session.state(store.get("prompt") if isinstance(store, dict) else None)
    grid = check_gates(gates, spec)
    gate_tensor = torch.tensor(grid, dtype=torch.float32)
    off = [
        (layer, head)
        for layer in range(spec.n_layers)
        for head in range(spec.n_heads)
        if grid[layer][head] < 1
    ]
    reference = reference_run(session, state)
    run = reference if not off else gated_run(session, state, gate_tensor)
    described = ", ".join(f"{layer}.{head}×{grid[layer][head]:g}" for layer, head in off)
    gated_note = f"gated: {described}" if off else "all heads on"
    if view == "difference":
        maps = difference_grid(
            run.pattern,
            reference.pattern,
            layer_index=state.record.layer_index,
            head_index=state.record.head_index,
            title=f"gated − all heads on ({gated_note})",
        )
    else:
        maps = head_grid(
            run.pattern,
            layer_index=state.record.layer_index,
            head_index=state.record.head_index,
            thumb=32,
            title=f"maps with gates ({gated_note})",
            cell_px=56,
        )
    if spec.has_lm_head:
        probabilities = run.logits[-1].float().softmax(-1)
        base = reference.logits[-1].float().softmax(-1)
        # The tokens likely under either run, so a prediction the gates destroyed stays
        # on screen next to what replaced it.
        shown = torch.maximum(probabilities, base).topk(min(TOP_K, base.numel())).indices
        candidates = [model.tokenizer.decode([int(i)]) for i in shown]
        figure = next_token_bars(
            candidates,
            probabilities[shown],
            reference=base[shown],
            title=f"after {display_token(state.tokens[-1])!s} (position {len(state.tokens) - 1})"
            " · top tokens of either run",
        )
        best = int(probabilities.argmax())
        metrics = [
            html.Div(
                [
                    "top-1: ",
                    html.B(display_token(model.tokenizer.decode([best]))),
                    f"  p = {float(probabilities[best]):.3f} (all heads: {float(base[best]):.3f})",
                ],
                id="play-top1",
            ),
            html.Div(
                f"{loss_label(run)}: {_number(run.loss)} nats "
                f"(all heads: {_number(reference.loss)})",
                id="play-loss",
                title=f"mean next-token cross-entropy over {run.target_meaning}"
                if run.target_meaning
                else None,
            ),
            html.Div(gated_note, className="hs-muted"),
        ]
    else:
        text = second if isinstance(second, str) and second.strip() else SECOND_SENTENCE
        other = state.cached(("embedding", text), lambda: _embedding(session, text))
        gated_other = _embedding(session, text, gate_tensor)
        to_clean = float(F.cosine_similarity(run.embedding, reference.embedding, dim=0))
        to_second = float(F.cosine_similarity(run.embedding, gated_other, dim=0))
        clean_second = float(F.cosine_similarity(reference.embedding, other, dim=0))
        values = {
            "cosine to the unablated embedding": to_clean,
            "similarity to the second sentence": to_second,
        }
        figure = similarity_bars(
            values,
            reference={
                "cosine to the unablated embedding": 1.0,
                "similarity to the second sentence": clean_second,
            },
            title="mean-pooled sentence embedding",
        )
        metrics = [
            html.Div(f"cosine to the unablated embedding: {to_clean:.4f}", id="play-cosine"),
            html.Div(
                f"similarity to the second sentence: {to_second:.4f} "
                f"(all heads: {clean_second:.4f})",
                id="play-similarity",
            ),
            html.Div(gated_note, className="hs-muted"),
        ]
    return figure, metrics, maps, None


def signed_block_extreme(matrix: np.ndarray, factor: int) -> np.ndarray:
    """The entry of largest magnitude (its sign kept) of each `factor`×`factor`
    block of a 2-D array (the last blocks may be partial): the signed analogue
    of the block max the gated maps use, so no change is averaged away."""
    if factor == 1:
        return matrix
    rows, cols = matrix.shape
    out_rows, out_cols = -(-rows // factor), -(-cols // factor)
    padded = np.zeros((out_rows * factor, out_cols * factor), dtype=np.float32)
    padded[:rows, :cols] = np.nan_to_num(matrix)
    blocks = padded.reshape(out_rows, factor, out_cols, factor).transpose(0, 2, 1, 3)
    flat = blocks.reshape(out_rows, out_cols, factor * factor)
    pick = np.abs(flat).argmax(-1)
    return np.take_along_axis(flat, pick[..., None], -1)[..., 0]


def difference_grid(
    gated: torch.Tensor,
    reference: torch.Tensor,
    *,
    layer_index,
    head_index,
    title: str,
    thumb: int = 32,
) -> go.Figure:
    """The layer × head grid of gated − ungated attention `[layer, head, query, key]`:
    the gated maps' grid (`head_grid`: same layout, hover and click targets) with
    its cells replaced by the signed difference, on one diverging scale centred
    at 0 and symmetric about it (±the largest |difference|). Reduced maps show
    each block's entry of largest magnitude."""
    difference = (gated.float() - reference.float()).nan_to_num().numpy()
    figure = head_grid(
        gated,
        layer_index=layer_index,
        head_index=head_index,
        thumb=thumb,
        title=title,
        cell_px=120,
    )
    meta = figure.layout.meta
    factor, size, pitch = int(meta["factor"]), int(meta["size"]), int(meta["pitch"])
    n_layers, n_heads = difference.shape[:2]
    canvas = np.full((n_layers * pitch - (pitch - size), n_heads * pitch - (pitch - size)), np.nan)
    for li in range(n_layers):
        for hi in range(n_heads):
            block = signed_block_extreme(difference[li, hi], factor)
            canvas[li * pitch : li * pitch + size, hi * pitch : hi * pitch + size] = block
    peak = float(np.nanmax(np.abs(canvas))) if np.isfinite(canvas).any() else 0.0
    bound = max(peak, 1e-3)
    if peak == 0.0:
        figure.update_layout(
            title={
                "text": plotly_text(
                    f"{title} · no weight moved: a gate acts on z, after its layer's maps, "
                    "so only later layers' maps can change"
                )
            }
        )
    what = "Δ weight" if factor == 1 else "Δ of largest magnitude in the block"
    figure.data[0].update(
        z=canvas.astype(np.float32),
        customdata=None,
        zmin=-bound,
        zmax=bound,
        zmid=0.0,
        colorscale=DIVERGING,
        hovertemplate=f"%{{y}}<br>%{{x}}<br>{what} %{{z:+.4f}} (gated − all heads on)"
        "<br>click to open the head<extra></extra>",
        colorbar={
            "title": {"text": "Δ attention weight<br>(gated − all on)", "side": "right"},
            "thickness": 10,
        },
    )
    return figure


def loss_label(run: GatedRun) -> str:
    """What the playground's loss scores, e.g. "loss on the prompt's 9 repeated
    tokens" (the "auto" target rule: the first copy of a repeat is unpredictable
    and not scored) or "loss on the prompt's 20 tokens (every token after the first)"."""
    n = run.target_tokens
    plural = "" if n == 1 else "s"
    if run.target_rule == "repeats":
        return f"loss on the prompt's {n} repeated token{plural}"
    if run.target_rule == "all":
        return f"loss on the prompt's {n} token{plural} (every token after the first)"
    if run.target_rule is None:
        return "loss on the prompt"
    return f"loss on the prompt's {n} target token{plural} ({run.target_meaning})"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def register(app: Dash, session: ModelSession) -> None:
    def _gates_refused(message: str) -> tuple:
        # Wildcard outputs need one value per button the request names: none changes.
        cells = requested_cells(ctx.outputs_list, 3) or []
        unchanged = [no_update] * len(cells)
        return (
            no_update,
            no_update,
            no_update,
            unchanged,
            unchanged,
            no_update,
            alert(message),
        )

    @app.callback(
        Output("gates-store", "data"),
        Output("gates-selected", "data"),
        Output("play-scale", "value"),
        Output({"type": "gate-cell", "layer": ALL, "head": ALL}, "style"),
        Output({"type": "gate-cell", "layer": ALL, "head": ALL}, "className"),
        Output("play-selected", "children"),
        Output("play-message", "children", allow_duplicate=True),
        Input({"type": "gate-cell", "layer": ALL, "head": ALL}, "n_clicks"),
        Input("play-scale", "value"),
        Input("play-reset", "n_clicks"),
        Input("view-state", "data"),
        State("gates-store", "data"),
        State("gates-selected", "data"),
        prevent_initial_call="initial_duplicate",
    )
    @guarded(_gates_refused, "the head gates")
    def _gates(_clicks, scale, _reset, view, gates, selected):
        cells = requested_cells(ctx.outputs_list, 3)
        if session.model is None:
            unchanged = [no_update] * len(cells or [])
            return (
                *(no_update,) * 3,
                unchanged,
                unchanged,
                "the model is not loaded",
                no_update,
            )
        trigger = ctx.triggered_id
        if trigger is None or trigger == "view-state":
            # The page opened, or the URL or a loaded session set the gates: they win.
            grid, chosen, value = gates_from_view(session, view)
        else:
            grid, chosen, value = edit_gates(session, trigger, scale, gates, selected)
        styles, classes = gate_styles(session, grid, chosen, cells)
        label = (
            f"selected head {chosen[0]}.{chosen[1]}: gate {value:g}"
            if chosen
            else "no head selected"
        )
        return grid, chosen, value, styles, classes, label, no_update

    # The gates on screen go to the URL and the links (the shell merges `state_out`).
    @app.callback(
        Output(view_state.state_out_id("playground"), "data"),
        Input("gates-store", "data"),
        Input("gates-selected", "data"),
        prevent_initial_call=True,
    )
    @guarded(lambda message: no_update, "the gates in the URL")
    def _report(gates, selected):
        if session.model is None or not isinstance(gates, list):
            return no_update
        spec = session.model.spec
        chosen = list(check_head(spec, *selected)) if isinstance(selected, list) else None
        return gate_edits(check_gates(gates, spec), chosen)

    @app.callback(
        Output("play-output", "figure"),
        Output("play-metrics", "children"),
        Output("play-maps", "figure"),
        Output("play-message", "children"),
        Input("prompt-store", "data"),
        Input("gates-store", "data"),
        Input("play-second", "value"),
        Input("play-view", "value"),
    )
    @guarded(lambda m: (message_figure(m), None, message_figure(m), alert(m)), "the playground")
    def _outputs(store, gates, second, view):
        return playground_outputs(session, store, gates, second, view)
