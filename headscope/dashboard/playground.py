"""Page 7, Ablation playground: toggle or scale heads (gates on z) and watch
the output change. Causal LMs show the next-token top-k and the loss on the
prompt's target tokens (its repeated tokens where it repeats itself, else every
token after the first: `experiments.attention.gated_run`); encoders
without a trained LM head (minilm) show the sentence embedding's cosine to the
unablated embedding and its similarity to a second sentence.

The gates live in the browser (`gates-store`); each change runs one gated
forward (plus a capture of the gated maps) on the server.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

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
from headscope.figures.style import display_token, message_figure

TOP_K = 10


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
            "Attention maps with these gates", graph("play-maps", message="Computing…", height=360)
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
    session: ModelSession, store: dict | None, gates: object, second: object
) -> tuple:
    """(output figure, metrics text, gated maps figure, message)."""
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
        return (no_update, no_update, no_update, unchanged, unchanged, no_update, alert(message))

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
        State("gates-store", "data"),
        State("gates-selected", "data"),
        prevent_initial_call="initial_duplicate",
    )
    @guarded(_gates_refused, "the head gates")
    def _gates(_clicks, scale, _reset, gates, selected):
        cells = requested_cells(ctx.outputs_list, 3)
        if session.model is None:
            unchanged = [no_update] * len(cells or [])
            return (*(no_update,) * 3, unchanged, unchanged, "the model is not loaded", no_update)
        grid, chosen, value = edit_gates(session, ctx.triggered_id, scale, gates, selected)
        styles, classes = gate_styles(session, grid, chosen, cells)
        label = (
            f"selected head {chosen[0]}.{chosen[1]}: gate {value:g}"
            if chosen
            else "no head selected"
        )
        return grid, chosen, value, styles, classes, label, no_update

    @app.callback(
        Output("play-output", "figure"),
        Output("play-metrics", "children"),
        Output("play-maps", "figure"),
        Output("play-message", "children"),
        Input("prompt-store", "data"),
        Input("gates-store", "data"),
        Input("play-second", "value"),
    )
    @guarded(lambda m: (message_figure(m), None, message_figure(m), alert(m)), "the playground")
    def _outputs(store, gates, second):
        return playground_outputs(session, store, gates, second)
