"""Page 4, Head importance over a small prompt set: single-head ablation,
gradient importance (Michel et al. 2019), Causal Head Gating (Nam et al. 2025)
and the greedy pruning curve. Runs as a background job with progress and a
cancel button; the metric is the next-token loss for causal LMs and the
sentence-embedding cosine to the unablated model for encoders without an LM head.
"""

from __future__ import annotations

from collections.abc import Callable

from dash import Dash, Input, Output, State, dcc, html

from headscope.dashboard.background import POLL_INTERVAL_MS
from headscope.dashboard.components import card, graph, page_header, progress_block
from headscope.dashboard.examples import prompt_set
from headscope.dashboard.inputs import choice, prompt_lines
from headscope.dashboard.messages import alert, describe
from headscope.dashboard.session import ModelSession, analysis_module
from headscope.figures.heads import importance_heatmap, label_grid, pruning_curve
from headscope.figures.style import message_figure

METHODS = ("ablation", "gradient", "chg")
ABLATION_MODES = ("zero", "mean")
SEED_CHOICES = (1, 2, 3, 5)
STEP_CHOICES = (25, 50, 100, 200)
DEFAULT_STEPS = 100  # causal_head_gating's own default
OUTPUT_IDS = (
    "imp-ablation",
    "imp-gradient",
    "imp-chg-facilitation",
    "imp-chg-interference",
    "imp-chg-roles",
    "imp-pruning",
)


def metric_for(session: ModelSession) -> tuple[str, str]:
    """(metric name, what it measures): loss for LMs, embedding cosine for encoders."""
    spec = session.require_model().spec
    if spec.has_lm_head:
        return "loss", "next-token loss (nats, lower is better)"
    return "embedding_cosine", "cosine to the unablated sentence embedding (higher is better)"


def layout(session: ModelSession) -> list:
    spec = session.spec
    _, described = metric_for(session) if spec is not None else ("", "")
    return [
        *page_header(
            "Head importance",
            f"Over the prompt set below. Metric: {described}.",
            "imp-message",
        ),
        card(
            None,
            html.Div(
                [
                    html.Div(
                        [html.Label("prompt set (one per line)", htmlFor="imp-prompts"),
                         dcc.Textarea(id="imp-prompts", value="\n".join(prompt_set(spec)),
                                      spellCheck=False,
                                      style={"width": "520px", "height": "118px",
                                             "fontFamily": "var(--hs-mono)", "fontSize": "12px"})],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("methods"),
                            dcc.Checklist(
                                id="imp-methods",
                                options=[
                                    {"label": " single-head ablation", "value": "ablation"},
                                    {"label": " gradient importance (Michel)",
                                     "value": "gradient"},
                                    {"label": " causal head gating (CHG)", "value": "chg"},
                                ],
                                value=["ablation", "gradient"],
                            ),
                            html.Label("ablation"),
                            dcc.RadioItems(id="imp-mode", value="zero", inline=True,
                                           options=[{"label": f" {m} ", "value": m}
                                                    for m in ABLATION_MODES]),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("CHG seeds", htmlFor="imp-seeds"),
                            dcc.Dropdown(id="imp-seeds", value=3, clearable=False,
                                         options=[{"label": str(s), "value": s}
                                                  for s in SEED_CHOICES],
                                         style={"width": "100px"}),
                            html.Label("CHG steps per phase", htmlFor="imp-steps"),
                            dcc.Dropdown(id="imp-steps", value=DEFAULT_STEPS, clearable=False,
                                         options=[{"label": str(s), "value": s}
                                                  for s in STEP_CHOICES],
                                         style={"width": "100px"}),
                        ],
                        className="hs-control",
                    ),
                    html.Button("Run", id="imp-run", className="hs-button", n_clicks=0),
                ],
                className="hs-controls",
            ),
            progress_block("imp"),
        ),
        html.Div(
            [
                card("Single-head ablation", graph("imp-ablation", message="Press Run"),
                     note="metric(head ablated) − metric(all heads)."),
                card("Gradient importance", graph("imp-gradient", message="Press Run"),
                     note="E|∂metric/∂ξ_h| with gates ξ = 1 on z, L2-normalized per layer."),
                card("Greedy pruning", graph("imp-pruning", message="Press Run"),
                     note="Metric after masking the least important heads first."),
            ],
            className="hs-grid-3",
        ),
        html.Div(
            [
                card("CHG facilitation (G⁻)", graph("imp-chg-facilitation", message="Press Run")),
                card("CHG interference (1 − G⁺)",
                     graph("imp-chg-interference", message="Press Run")),
                card("CHG roles (majority over seeds)",
                     graph("imp-chg-roles", message="Press Run")),
            ],
            className="hs-grid-3",
        ),
    ]


def importance_outputs(
    session: ModelSession,
    prompts_text: object,
    methods: object,
    mode: object,
    seeds: object,
    steps: object,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple:
    """The six figures (ablation, gradient, CHG facilitation, interference,
    roles, pruning) and a message. Methods not asked for show a note."""
    heads = analysis_module("heads")
    report = progress or (lambda done, total, label: None)
    model = session.require_model()
    spec = model.spec
    prompts = prompt_lines(prompts_text)
    for prompt in prompts:
        session.tokenize(prompt)  # a clear message for an empty or too long line
    chosen = [m for m in METHODS if isinstance(methods, list) and m in methods]
    if not chosen:
        blank = message_figure("choose at least one method")
        return (*(blank,) * len(OUTPUT_IDS), alert("choose at least one method"))
    ablation_mode = choice(mode, ABLATION_MODES, "zero")
    n_seeds = choice(seeds, SEED_CHOICES, 3)
    n_steps = choice(steps, STEP_CHOICES, DEFAULT_STEPS)
    metric, described = metric_for(session)
    sign = 1.0 if metric == "loss" else -1.0  # importance: higher = more needed
    skipped = message_figure("not selected")
    figures = dict.fromkeys(OUTPUT_IDS, skipped)
    orders = {}
    total = (len(chosen) + 1) * 100  # 100 progress units per stage (CHG reports its steps)
    done = 0
    with session.lock:
        if "ablation" in chosen:
            report(done * 100, total, f"ablating each of {spec.n_layers * spec.n_heads} heads…")
            scores = heads.ablation_scores(model, prompts, metric=metric, mode=ablation_mode)
            figures["imp-ablation"] = importance_heatmap(
                scores, title=f"{ablation_mode} ablation", colorbar_title="Δ metric", signed=True
            )
            orders["ablation"] = sign * scores
            done += 1
        if "gradient" in chosen:
            report(done * 100, total, "gradient importance…")
            importance = heads.gradient_importance(model, prompts, metric=metric)
            figures["imp-gradient"] = importance_heatmap(
                importance, title="Michel et al. importance", colorbar_title="importance",
                signed=False,
            )
            orders["gradient"] = importance
            done += 1
        if "chg" in chosen:
            base = done * 100

            def step(current: int, steps_total: int) -> None:
                report(base + int(100 * current / max(1, steps_total)), total,
                       f"causal head gating: step {current}/{steps_total}")

            report(base, total, "causal head gating…")
            result = heads.causal_head_gating(
                model, prompts, metric=metric, seeds=n_seeds, steps=n_steps, progress=False,
                callback=step,
            )
            figures["imp-chg-facilitation"] = importance_heatmap(
                result.facilitation, title="facilitation", colorbar_title="G⁻", signed=False,
                zmax=1.0,
            )
            figures["imp-chg-interference"] = importance_heatmap(
                result.interference, title="interference", colorbar_title="1 − G⁺",
                signed=False, zmax=1.0,
            )
            figures["imp-chg-roles"] = label_grid(
                [list(row) for row in result.roles], title=f"{n_seeds} seeds"
            )
            orders["CHG facilitation"] = result.facilitation
            done += 1
        report(done * 100, total, "pruning curve…")
        curves = {}
        fractions = None
        for name, order in orders.items():
            fractions, values = heads.pruning_curve(
                model, prompts, order, metric=metric, mode=ablation_mode
            )
            curves[f"by {name}"] = values
        if curves:
            first = next(iter(curves.values()))
            figures["imp-pruning"] = pruning_curve(
                fractions, curves, metric_name=metric.replace("_", " "), baseline=float(first[0])
            )
    note = f"{len(prompts)} prompts · metric: {described}"
    return (*(figures[key] for key in OUTPUT_IDS), alert(note, kind="info"))


def register(app: Dash, session: ModelSession, manager) -> None:
    @app.callback(
        *(Output(key, "figure") for key in OUTPUT_IDS),
        Output("imp-message", "children"),
        Input("imp-run", "n_clicks"),
        State("imp-prompts", "value"),
        State("imp-methods", "value"),
        State("imp-mode", "value"),
        State("imp-seeds", "value"),
        State("imp-steps", "value"),
        background=True,
        manager=manager,
        interval=POLL_INTERVAL_MS,
        progress=[
            Output("imp-progress", "value"),
            Output("imp-progress", "max"),
            Output("imp-progress-label", "children"),
        ],
        running=[
            (Output("imp-progress-block", "style"), {"display": "flex"}, {"display": "none"}),
            (Output("imp-run", "disabled"), True, False),
            (Output("imp-cancel", "disabled"), False, True),
        ],
        cancel=[Input("imp-cancel", "n_clicks")],
        prevent_initial_call=True,
    )
    def _importance(set_progress, _clicks, prompts_text, methods, mode, seeds, steps):
        def report(done, total, label):
            set_progress((str(done), str(total), label))

        try:
            return importance_outputs(
                session, prompts_text, methods, mode, seeds, steps, progress=report
            )
        except Exception as error:
            message = describe(error, "the importance job")
            blank = message_figure(message)
            return (*(blank,) * len(OUTPUT_IDS), alert(message))
