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

from dash import Dash, Input, Output, State, dcc, html, no_update

from headscope.analyses.uncertainty import bootstrap_interval
from headscope.dashboard.background import job_options, on_death
from headscope.dashboard.components import card, graph, page_header, progress_block, prompt_set_box
from headscope.dashboard.examples import prompt_set
from headscope.dashboard.inputs import choice, prompt_lines
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession
from headscope.dashboard.state import state_out, state_out_id
from headscope.experiments.metrics import default_metric, metric_info
from headscope.experiments.scoring import HeadScores, pruning_curves, score_heads
from headscope.experiments.targets import TARGET_RULES
from headscope.figures.heads import importance_heatmap, label_grid, pruning_curve
from headscope.figures.style import message_figure
from headscope.models.spec import ModelSpec

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
#: Target rules a prompt line can use (a "continuation" needs a target text).
TARGET_CHOICES = ("auto", "all", "repeats", "last")


def metric_for(session: ModelSession) -> tuple[str, str]:
    """(default metric name, what it measures): loss for LMs, embedding cosine for encoders."""
    info = metric_info(default_metric(session.require_model().spec.has_lm_head))
    return info.name, f"{info.description} ({info.unit}, {info.better})"


def metric_choices(spec: ModelSpec | None) -> tuple[str, ...]:
    """The metrics this model can be scored with from plain prompt lines: the
    loss needs a trained LM head; the embedding cosine works on any model."""
    if spec is not None and spec.has_lm_head:
        return ("loss", "embedding_cosine")
    return ("embedding_cosine",)


def _option(name: str) -> dict:
    info = metric_info(name)
    return {"label": f"{name} ({info.better})", "value": name}


def layout(session: ModelSession) -> list:
    spec = session.spec
    _, described = metric_for(session) if spec is not None else ("", "")
    return [
        *page_header(
            "Head importance",
            f"Over the prompt set below. Default metric: {described}; the loss scores the "
            "target tokens (auto: a repeat's predictable tokens, else every token).",
            "imp-message",
        ),
        card(
            None,
            html.Div(
                [
                    prompt_set_box("imp-prompts", prompt_set(spec)),
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
                            html.Label("metric", htmlFor="imp-metric"),
                            dcc.Dropdown(
                                id="imp-metric",
                                value=default_metric(spec.has_lm_head) if spec else None,
                                clearable=False,
                                options=[_option(m) for m in metric_choices(spec)],
                                style={"width": "250px"},
                            ),
                            html.Label("target tokens (loss)", htmlFor="imp-target"),
                            dcc.Dropdown(
                                id="imp-target",
                                value=TARGET,
                                clearable=False,
                                options=[
                                    {"label": f"{rule}: {TARGET_RULES[rule]}", "value": rule}
                                    for rule in TARGET_CHOICES
                                ],
                                style={"width": "250px"},
                                optionHeight=52,
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
                    html.Button("Score heads", id="imp-run", className="hs-button", n_clicks=0),
                    state_out("importance"),
                ],
                className="hs-controls",
            ),
            progress_block("imp"),
        ),
        html.Div(
            [
                card(
                    "Single-head ablation",
                    graph("imp-ablation", message="Press Score heads"),
                    note="metric(head ablated) − metric(all heads).",
                ),
                card(
                    "Gradient importance",
                    graph("imp-gradient", message="Press Score heads"),
                    note="E|∂metric/∂ξ_h| with gates ξ = 1 on z, L2-normalized per layer.",
                ),
                card(
                    "Greedy pruning",
                    graph("imp-pruning", message="Press Score heads"),
                    note="Metric after masking the least important heads first.",
                ),
            ],
            className="hs-grid-3",
        ),
        html.Div(
            [
                card(
                    "CHG facilitation (G⁻)",
                    graph("imp-chg-facilitation", message="Press Score heads"),
                ),
                card(
                    "CHG interference (1 − G⁺)",
                    graph("imp-chg-interference", message="Press Score heads"),
                ),
                card(
                    "CHG roles (majority over seeds)",
                    graph("imp-chg-roles", message="Press Score heads"),
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
    *,
    metric: object = None,
    target: object = TARGET,
) -> HeadScores:
    """The page's head scores: `score_heads` on the prompt lines with the
    chosen metric (default: the model's, `metric_for`) and target rule,
    exactly what `headscope report` computes for the same prompts, methods,
    metric and target (seed 0, one shard). Choices are validated here: a
    value the page does not offer falls back to its default."""
    prompts = prompt_lines(prompts_text)
    for prompt in prompts:
        session.tokenize(prompt)  # a clear message for an empty or too long line
    chosen = [m for m in METHODS if isinstance(methods, list) and m in methods]
    default, _ = metric_for(session)
    spec = session.require_model().spec
    with session.lock:
        return score_heads(
            session.require_model(),
            prompts,
            chosen,
            choice(metric, metric_choices(spec), default),
            choice(target, TARGET_CHOICES, TARGET),  # type: ignore[arg-type]
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
    *,
    metric: object = None,
    target: object = TARGET,
) -> tuple:
    """The six figures (ablation, gradient, CHG facilitation, interference,
    roles, pruning) and a message saying what was measured. Methods not asked
    for show a note; methods whose scores say nothing here (a degenerate CHG
    fit, a gradient with no first-order signal) show why instead of a map.
    Hovers give each score's 95% bootstrap interval over the prompts (over the
    seeds for CHG); signed effects whose interval includes zero are marked n.s."""
    report = progress or (lambda done, total, label: None)
    if not (isinstance(methods, list) and any(m in METHODS for m in methods)):
        blank = message_figure("choose at least one method")
        return (*(blank,) * len(OUTPUT_IDS), alert("choose at least one method"))
    scores = importance_scores(
        session, prompts_text, methods, mode, seeds, steps, progress, metric=metric, target=target
    )
    over = f"95% bootstrap over {len(scores.prompts)} prompts"
    skipped = message_figure("not selected")
    figures = dict.fromkeys(OUTPUT_IDS, skipped)
    orders = {}
    if "ablation" in scores.methods:
        effect = scores.methods["ablation"].effect
        assert effect is not None
        spread = bootstrap_interval(effect)
        figures["imp-ablation"] = importance_heatmap(
            spread.mean,
            title=f"{scores.ablation_mode} ablation",
            colorbar_title=f"Δ {scores.metric.name}",
            signed=True,
            interval=(spread.low, spread.high),
            support=over,
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
            spread = scores.interval("gradient")
            figures["imp-gradient"] = importance_heatmap(
                spread.mean,
                title="Michel et al. importance",
                colorbar_title="importance",
                signed=False,
                interval=(spread.low, spread.high),
                support=over,
            )
            orders["gradient"] = scores.mean("gradient")
    if scores.chg is not None and scores.chg.warning is not None:
        warnings.append(f"causal head gating: {scores.chg.warning}")
        degenerate = message_figure("degenerate gating fit: no roles (see the message)")
        for key in ("imp-chg-facilitation", "imp-chg-interference", "imp-chg-roles"):
            figures[key] = degenerate
    elif scores.chg is not None:
        result = scores.chg
        seeds_over = f"95% bootstrap over {result.g_minus.shape[0]} seeds"
        facilitation = bootstrap_interval(result.facilitation_per_seed)
        interference = bootstrap_interval(result.interference_per_seed)
        figures["imp-chg-facilitation"] = importance_heatmap(
            facilitation.mean,
            title="facilitation",
            colorbar_title="G⁻",
            signed=False,
            zmax=1.0,
            interval=(facilitation.low, facilitation.high),
            support=seeds_over,
        )
        figures["imp-chg-interference"] = importance_heatmap(
            interference.mean,
            title="interference",
            colorbar_title="1 − G⁺",
            signed=False,
            zmax=1.0,
            interval=(interference.low, interference.high),
            support=seeds_over,
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
            scores.target,  # type: ignore[arg-type]
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


def _failed(message: str) -> tuple:
    blank = message_figure(message)
    return (*(blank,) * len(OUTPUT_IDS), alert(message))


def sync_pickers(
    session: ModelSession, trigger: object, view: object, metric: object, target: object
) -> tuple:
    """(metric picker, target picker, state edits) between the pickers and the
    URL's state (`dashboard.state`): when the page opens or the URL changes,
    the state's metric and target set the pickers; when a picker changes, the
    state (and so the URL) follows. Values this page does not offer are ignored."""
    current = view if isinstance(view, dict) else {}
    metrics = metric_choices(session.spec)
    if trigger is None or trigger == "view-state":
        wanted_metric, wanted_target = current.get("metric"), current.get("target")
        return (
            wanted_metric if wanted_metric in metrics else no_update,
            wanted_target if wanted_target in TARGET_CHOICES else no_update,
            no_update,
        )
    edits = {}
    if metric in metrics:
        edits["metric"] = metric
    if target in TARGET_CHOICES:
        edits["target"] = target
    return no_update, no_update, edits or no_update


def register(app: Dash, session: ModelSession, manager) -> None:
    # The URL's metric and target set the pickers; the pickers' values go to the URL.
    @app.callback(
        Output("imp-metric", "value"),
        Output("imp-target", "value"),
        Input("view-state", "data"),
    )
    @guarded(lambda message: (no_update, no_update), "the metric and target pickers")
    def _pickers(view):
        return sync_pickers(session, "view-state", view, None, None)[:2]

    @app.callback(
        Output(state_out_id("importance"), "data"),
        Input("imp-metric", "value"),
        Input("imp-target", "value"),
        prevent_initial_call=True,
    )
    @guarded(lambda message: no_update, "the metric and target in the URL")
    def _report(metric, target):
        return sync_pickers(session, "imp-metric", None, metric, target)[2]

    @app.callback(
        *(Output(key, "figure") for key in OUTPUT_IDS),
        Output("imp-message", "children"),
        Input("imp-run", "n_clicks"),
        State("imp-prompts", "value"),
        State("imp-methods", "value"),
        State("imp-mode", "value"),
        State("imp-seeds", "value"),
        State("imp-steps", "value"),
        State("imp-metric", "value"),
        State("imp-target", "value"),
        **job_options("imp", manager),
    )
    @on_death(_failed, "the importance job")
    def _importance(
        set_progress, _clicks, prompts_text, methods, mode, seeds, steps, metric, target
    ):
        def report(done, total, label):
            set_progress((str(done), str(total), label))

        try:
            return importance_outputs(
                session,
                prompts_text,
                methods,
                mode,
                seeds,
                steps,
                progress=report,
                metric=metric,
                target=target,
            )
        except Exception as error:
            return _failed(describe(error, "the importance job"))
