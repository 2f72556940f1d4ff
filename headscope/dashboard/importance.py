"""Page 4, Head importance over a small prompt set: single-head ablation,
gradient importance (Michel et al. 2019), Causal Head Gating (Nam et al. 2025)
and the greedy pruning curve. Runs as a background job with progress and a
cancel button. The scores come from `experiments.score_heads`, the call
`headscope report` makes, with the same metric vocabulary and target rule: the
next-token loss over the target tokens ("auto": a repeat's predictable
tokens, else every token) for causal LMs, the sentence-embedding cosine to the
unablated model for encoders without an LM head.
"""

from __future__ import annotations

from collections.abc import Callable

from dash import Dash, Input, Output, State, dcc, html

from headscope.dashboard.background import POLL_INTERVAL_MS
from headscope.dashboard.components import card, graph, page_header, progress_block
from headscope.dashboard.examples import prompt_set
from headscope.dashboard.inputs import choice, prompt_lines
from headscope.dashboard.messages import alert, describe
from headscope.dashboard.session import ModelSession
from headscope.experiments.metrics import default_metric, metric_info
from headscope.experiments.scoring import HeadScores, pruning_curves, score_heads
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


TARGET = "auto"


def metric_for(session: ModelSession) -> tuple[str, str]:
    """(metric name, what it measures): loss for LMs, embedding cosine for encoders."""
    info = metric_info(default_metric(session.require_model().spec.has_lm_head))
    return info.name, f"{info.description} ({info.unit}, {info.better})"


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
                        [
                            html.Label("prompt set (one per line)", htmlFor="imp-prompts"),
                            dcc.Textarea(
                                id="imp-prompts",
                                value="\n".join(prompt_set(spec)),
                                spellCheck=False,
                                style={
                                    "width": "520px",
                                    "height": "118px",
                                    "fontFamily": "var(--hs-mono)",
                                    "fontSize": "12px",
                                },
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("methods"),
                            dcc.Checklist(
                                id="imp-methods",
                                options=[
                                    {"label": " single-head ablation", "value": "ablation"},
                                    {"label": " gradient importance (Michel)", "value": "gradient"},
                                    {"label": " causal head gating (CHG)", "value": "chg"},
                                ],
                                value=["ablation", "gradient"],
                            ),
                            html.Label("ablation"),
                            dcc.RadioItems(
                                id="imp-mode",
                                value="zero",
                                inline=True,
                                options=[{"label": f" {m} ", "value": m} for m in ABLATION_MODES],
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("CHG seeds", htmlFor="imp-seeds"),
                            dcc.Dropdown(
                                id="imp-seeds",
                                value=3,
                                clearable=False,
                                options=[{"label": str(s), "value": s} for s in SEED_CHOICES],
                                style={"width": "100px"},
                            ),
                            html.Label("CHG steps per phase", htmlFor="imp-steps"),
                            dcc.Dropdown(
                                id="imp-steps",
                                value=DEFAULT_STEPS,
                                clearable=False,
                                options=[{"label": str(s), "value": s} for s in STEP_CHOICES],
                                style={"width": "100px"},
                            ),
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
                card(
                    "Single-head ablation",
                    graph("imp-ablation", message="Press Run"),
                    note="metric(head ablated) − metric(all heads).",
                ),
                card(
                    "Gradient importance",
                    graph("imp-gradient", message="Press Run"),
                    note="E|∂metric/∂ξ_h| with gates ξ = 1 on z, L2-normalized per layer.",
                ),
                card(
                    "Greedy pruning",
                    graph("imp-pruning", message="Press Run"),
                    note="Metric after masking the least important heads first.",
                ),
            ],
            className="hs-grid-3",
        ),
        html.Div(
            [
                card("CHG facilitation (G⁻)", graph("imp-chg-facilitation", message="Press Run")),
                card(
                    "CHG interference (1 − G⁺)", graph("imp-chg-interference", message="Press Run")
                ),
                card(
                    "CHG roles (majority over seeds)", graph("imp-chg-roles", message="Press Run")
                ),
            ],
            className="hs-grid-3",
        ),
    ]


def importance_scores(
    session: ModelSession,
    prompts_text: object,
    methods: object,
    mode: object,
    seeds: object,
    steps: object,
    progress: Callable[[int, int, str], None] | None = None,
) -> HeadScores:
    """The page's head scores: `score_heads` on the prompt lines with the
    page's metric and target, exactly what `headscope report` computes for the
    same prompts, methods, metric and target (seed 0, one shard)."""
    prompts = prompt_lines(prompts_text)
    for prompt in prompts:
        session.tokenize(prompt)  # a clear message for an empty or too long line
    chosen = [m for m in METHODS if isinstance(methods, list) and m in methods]
    metric, _ = metric_for(session)
    with session.lock:
        return score_heads(
            session.require_model(),
            prompts,
            chosen,
            metric,
            TARGET,
            chg_seeds=choice(seeds, SEED_CHOICES, 3),
            chg_steps=choice(steps, STEP_CHOICES, DEFAULT_STEPS),
            ablation_mode=choice(mode, ABLATION_MODES, "zero"),
            progress=progress,
        )


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
    report = progress or (lambda done, total, label: None)
    if not (isinstance(methods, list) and any(m in METHODS for m in methods)):
        blank = message_figure("choose at least one method")
        return (*(blank,) * len(OUTPUT_IDS), alert("choose at least one method"))
    scores = importance_scores(session, prompts_text, methods, mode, seeds, steps, progress)
    skipped = message_figure("not selected")
    figures = dict.fromkeys(OUTPUT_IDS, skipped)
    orders = {}
    if "ablation" in scores.methods:
        effect = scores.methods["ablation"].effect
        assert effect is not None
        figures["imp-ablation"] = importance_heatmap(
            effect.mean(0),
            title=f"{scores.ablation_mode} ablation",
            colorbar_title="Δ metric",
            signed=True,
        )
        orders["ablation"] = scores.mean("ablation")
    warnings = []
    if "gradient" in scores.methods:
        gradient = scores.methods["gradient"]
        if gradient.warning is not None:
            warnings.append(f"gradient importance: {gradient.warning}")
        if gradient.warning is not None and not bool(gradient.scores.any()):
            figures["imp-gradient"] = message_figure("no first-order signal (see the message)")
        else:
            figures["imp-gradient"] = importance_heatmap(
                scores.mean("gradient"),
                title="Michel et al. importance",
                colorbar_title="importance",
                signed=False,
            )
            orders["gradient"] = scores.mean("gradient")
    if scores.chg is not None and scores.chg.warning is not None:
        warnings.append(f"causal head gating: {scores.chg.warning}")
        degenerate = message_figure("degenerate gating fit: no roles (see the message)")
        for key in ("imp-chg-facilitation", "imp-chg-interference", "imp-chg-roles"):
            figures[key] = degenerate
    elif scores.chg is not None:
        result = scores.chg
        figures["imp-chg-facilitation"] = importance_heatmap(
            result.facilitation,
            title="facilitation",
            colorbar_title="G⁻",
            signed=False,
            zmax=1.0,
        )
        figures["imp-chg-interference"] = importance_heatmap(
            result.interference,
            title="interference",
            colorbar_title="1 − G⁺",
            signed=False,
            zmax=1.0,
        )
        figures["imp-chg-roles"] = label_grid(
            [list(row) for row in result.roles], title=f"{result.g_plus.shape[0]} seeds"
        )
        orders["CHG facilitation"] = result.facilitation
    report(99, 100, "pruning curve…")
    if not orders:
        figures["imp-pruning"] = message_figure("no informative ranking to prune by")
        return _finish(figures, scores, warnings)
    with session.lock:
        fractions, curves, clean = pruning_curves(
            session.require_model(),
            prompt_lines(prompts_text),
            orders,
            scores.metric.name,
            TARGET,
            ablation_mode=scores.ablation_mode,
        )
    figures["imp-pruning"] = pruning_curve(
        fractions,
        {f"by {name}": values for name, values in curves.items()},
        metric_name=scores.metric.name.replace("_", " "),
        baseline=clean,
    )
    return _finish(figures, scores, warnings)


def _finish(figures: dict, scores: HeadScores, warnings: list[str]) -> tuple:
    """The figures in output order and one message: what was measured, and any
    warning (shown as a warning, not as information)."""
    note = f"{len(scores.prompts)} prompts · metric: {scores.described}"
    message = alert(" · ".join([note, *warnings]), kind="warning" if warnings else "info")
    return (*(figures[key] for key in OUTPUT_IDS), message)


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
