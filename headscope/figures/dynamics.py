"""Training-dynamics and model-diff figures (docs/methods.md §2.13, §2.14).

- `dynamics_figure`: a taxonomy score of every head against the training step
  (chance-level baseline dashed), above the in-context loss with its bootstrap
  band (0, no in-context learning, dashed); the phase change (the interval of
  the fastest in-context-loss drop) shaded on both.
- `importance_figure`: ablation importance of chosen heads against the step,
  with bootstrap bands.
- `diff_heatmap`: the per-head delta B − A of one score with its interval
  ("n.s." where it includes 0).
- `similarity_heatmap`: one layer's map correlation between the heads of A
  (rows) and B (columns), the Hungarian matching outlined.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from headscope.analyses.diffing import ModelDiff
from headscope.analyses.dynamics import PhaseChange, TrainingDynamics
from headscope.errors import InputError
from headscope.figures.arrays import float32
from headscope.figures.heads import importance_heatmap
from headscope.figures.style import (
    BASELINE_COLOR,
    COLORS,
    DIVERGING,
    TEMPLATE,
    base_figure,
    plotly_text,
)

PHASE_FILL = "rgba(214, 39, 40, 0.10)"


def _head_color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def _shade_phase(figure: go.Figure, phase: PhaseChange | None, rows: int) -> None:
    """Shade the phase change: the intervals of the fastest score rise and the
    fastest in-context-loss drop together when they coincide (same or adjacent
    intervals), else the drop's interval alone, named as such."""
    if phase is None:
        return
    if phase.coincide:
        low = min(phase.rise_steps[0], phase.drop_steps[0])
        high = max(phase.rise_steps[1], phase.drop_steps[1])
        text = f"phase change: steps {low}–{high}"
    else:
        low, high = phase.drop_steps
        text = f"fastest in-context-loss drop: steps {low}–{high}"
    for row in range(1, rows + 1):
        figure.add_vrect(
            x0=low, x1=high, fillcolor=PHASE_FILL, line_width=0, layer="below", row=row, col=1
        )
    figure.add_annotation(
        x=(low + high) / 2,
        y=1.0,
        xref="x",
        yref="paper",
        yanchor="bottom",
        showarrow=False,
        text=plotly_text(text),
        font={"size": 11, "color": "#b22222"},
    )


def dynamics_figure(
    dynamics: TrainingDynamics,
    *,
    category: str = "induction",
    heads: Sequence[tuple[int, int]] | None = None,
    phase: PhaseChange | None = None,
    chance: float | None = None,
    height: int = 520,
) -> go.Figure:
    """`category` score of each head in `heads` (default: every head of the
    layers where the category can label, i.e. layer ≥ 1 for induction) against
    the step, over the in-context loss (nats, late half − early half, mean over
    prompts with its 95% bootstrap band). `chance`: the score a head that
    spreads its attention evenly would get, drawn dashed. `phase` (from
    `analyses.dynamics.phase_change`) shades the phase change (`_shade_phase`)."""
    if category not in dynamics.scores:
        raise InputError(f"no {category!r} scores; scored: {sorted(dynamics.scores)}")
    scores = float32(dynamics.scores[category])
    n_layers, n_heads = scores.shape[1:]
    if heads is None:
        first = 1 if category == "induction" and n_layers > 1 else 0
        heads = [(layer, head) for layer in range(first, n_layers) for head in range(n_heads)]
    steps = list(dynamics.steps)
    figure = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.58, 0.42],
    )
    figure.update_layout(template=TEMPLATE, height=height, margin={"t": 36})
    support = dynamics.support.get(category, ())
    for index, (layer, head) in enumerate(heads):
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=scores[:, layer, head],
                mode="lines+markers",
                name=f"{layer}.{head}",
                line={"color": _head_color(index), "width": 2},
                customdata=np.asarray(support or [0] * len(steps)),
                hovertemplate=(
                    f"head {layer}.{head}, step %{{x}}<br>{plotly_text(category)} score "
                    "%{y:.3f}<br>mean over "
                    f"{dynamics.prompts} prompts, %{{customdata}} defining queries<extra></extra>"
                ),
            ),
            row=1,
            col=1,
        )
    if chance is not None:
        figure.add_hline(
            y=chance,
            line={"dash": "dash", "color": BASELINE_COLOR, "width": 1},
            annotation_text="chance (uniform attention)",
            annotation_position="top left",
            row=1,
            col=1,
        )
    loss = float32(dynamics.in_context_loss)
    low, high = float32(dynamics.in_context_low), float32(dynamics.in_context_high)
    figure.add_trace(
        go.Scatter(
            x=steps + steps[::-1],
            y=np.concatenate([high, low[::-1]]),
            fill="toself",
            fillcolor="rgba(31, 95, 168, 0.15)",
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
        ),
        row=2,
        col=1,
    )
    figure.add_trace(
        go.Scatter(
            x=steps,
            y=loss,
            mode="lines+markers",
            name="in-context loss",
            line={"color": "#222222", "width": 2},
            customdata=np.stack([low, high, float32(dynamics.early_loss)], axis=-1),
            hovertemplate=(
                "step %{x}<br>in-context loss %{y:.3f} nats [%{customdata[0]:.3f}, "
                "%{customdata[1]:.3f}] 95% bootstrap over "
                f"{dynamics.prompts} prompts<br>(late half − early half; early half "
                "%{customdata[2]:.3f})<extra></extra>"
            ),
        ),
        row=2,
        col=1,
    )
    figure.add_hline(
        y=0,
        line={"dash": "dash", "color": BASELINE_COLOR, "width": 1},
        annotation_text="0: no in-context learning",
        annotation_position="bottom left",
        row=2,
        col=1,
    )
    _shade_phase(figure, phase, 2)
    figure.update_yaxes(title_text=plotly_text(f"{category} score"), range=[0, 1.05], row=1, col=1)
    figure.update_yaxes(title_text="in-context loss (nats)", row=2, col=1)
    figure.update_xaxes(title_text="training step", row=2, col=1)
    return figure


def importance_figure(
    dynamics: TrainingDynamics,
    heads: Sequence[tuple[int, int]],
    *,
    phase: PhaseChange | None = None,
    height: int = 320,
) -> go.Figure:
    """Ablation importance (harm to the repeated-token loss when the head's z is
    zeroed, nats) of `heads` against the step, with 95% bootstrap bands over
    prompts; 0 (no effect) dashed."""
    if dynamics.importance is None:
        raise InputError("these dynamics were computed without importance")
    assert dynamics.importance_low is not None and dynamics.importance_high is not None
    mean = float32(dynamics.importance)
    low, high = float32(dynamics.importance_low), float32(dynamics.importance_high)
    steps = list(dynamics.steps)
    figure = make_subplots(rows=1, cols=1)
    figure.update_layout(template=TEMPLATE, height=height, margin={"t": 36})
    for index, (layer, head) in enumerate(heads):
        color = _head_color(index)
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=mean[:, layer, head],
                mode="lines+markers",
                name=f"{layer}.{head}",
                line={"color": color, "width": 2},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": high[:, layer, head] - mean[:, layer, head],
                    "arrayminus": mean[:, layer, head] - low[:, layer, head],
                    "thickness": 1,
                    "color": color,
                },
                hovertemplate=(
                    f"head {layer}.{head}, step %{{x}}<br>ablation harm %{{y:.3f}} nats "
                    f"(95% bootstrap over {dynamics.prompts} prompts)<extra></extra>"
                ),
            )
        )
    figure.add_hline(y=0, line={"dash": "dash", "color": BASELINE_COLOR, "width": 1})
    _shade_phase(figure, phase, 1)
    figure.update_yaxes(title_text="ablation harm (nats)")
    figure.update_xaxes(title_text="training step")
    return figure


def diff_heatmap(diff: ModelDiff, key: str = "induction", *, title: str | None = None) -> go.Figure:
    """Per head, the mean of B − A of `key` (a taxonomy category or
    "importance") over the prompts, on a diverging scale; the hover gives the
    95% bootstrap interval and cells whose interval includes 0 read "n.s."."""
    if key not in diff.deltas:
        raise InputError(f"no delta for {key!r}; available: {sorted(diff.deltas)}")
    delta = diff.deltas[key]
    what = "ablation harm" if key == "importance" else f"{key} score"
    return importance_heatmap(
        delta.mean,
        title=title if title is not None else f"Δ {what}: {diff.name_b} − {diff.name_a}",
        colorbar_title=f"Δ {what}",
        signed=True,
        interval=(delta.low, delta.high),
        support=f"95% bootstrap over {delta.n} prompts",
    )


def similarity_heatmap(diff: ModelDiff, layer: int) -> go.Figure:
    """Layer `layer`'s attention-map correlation between A's heads (rows) and
    B's heads (columns); the matched pairs are outlined."""
    if not 0 <= layer < diff.similarity.shape[0]:
        raise InputError(f"layer must be in 0..{diff.similarity.shape[0] - 1}, got {layer}")
    grid = float32(diff.similarity[layer])
    heads = list(range(grid.shape[0]))
    name_a, name_b = plotly_text(diff.name_a), plotly_text(diff.name_b)
    figure = base_figure(f"layer {layer}: attention-map correlation, matched pairs outlined")
    figure.add_trace(
        go.Heatmap(
            z=grid,
            x=heads,
            y=heads,
            zmin=-1.0,
            zmax=1.0,
            colorscale=DIVERGING,
            xgap=1,
            ygap=1,
            texttemplate="%{z:.2f}" if len(heads) <= 16 else None,
            colorbar={"title": {"text": "Pearson r", "side": "right"}, "thickness": 10},
            hovertemplate=(
                f"{name_a} head {layer}.%{{y}} vs {name_b} head {layer}.%{{x}}<br>"
                f"map correlation %{{z:.3f}} over {diff.prompts} prompts<extra></extra>"
            ),
        )
    )
    figure.update_yaxes(title_text=f"head of {name_a}", autorange="reversed", dtick=1)
    figure.update_xaxes(title_text=f"head of {name_b}", dtick=1)
    for row, column in enumerate(diff.matching[layer].tolist()):
        figure.add_shape(
            type="rect",
            x0=column - 0.5,
            x1=column + 0.5,
            y0=row - 0.5,
            y1=row + 0.5,
            line={"color": "#111111", "width": 2},
        )
    figure.update_layout(height=max(260, 50 * len(heads) + 110))
    return figure
