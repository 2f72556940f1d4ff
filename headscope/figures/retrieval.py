"""Retrieval and streaming figures (docs/methods.md §2.15): a `[layer, head]` map
of a score with its baseline, support and interval in the hover, and the ablation
check as bars of copy accuracy with Wilson intervals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from headscope.analyses.retrieval import HeadScore
from headscope.figures.arrays import float32
from headscope.figures.heads import layer_head_heatmap
from headscope.figures.style import (
    BASELINE_COLOR,
    COLORS,
    HIGHLIGHT_COLOR,
    base_figure,
    plotly_text,
)


def score_heatmap(score: HeadScore, *, title: str = "", colorbar_title: str = "") -> go.Figure:
    """A `[layer, head]` map of a HeadScore on [0, 1]. The hover gives each head's
    score, its interval (when there is one), the chance baseline and the support."""
    grid = float32(score.score)
    figure = layer_head_heatmap(
        grid, title=title, colorbar_title=colorbar_title or "score", zmin=0.0, zmax=1.0
    )
    low, high = float32(score.low), float32(score.high)
    baseline, support = float32(score.baseline), float32(score.support)
    custom = np.empty((*grid.shape, 3), dtype=object)
    for index in np.ndindex(grid.shape):
        bounds = (low[index], high[index])
        custom[index] = (
            float(baseline[index]),
            int(support[index]),
            f"[{bounds[0]:.3f}, {bounds[1]:.3f}] 95%"
            if np.isfinite(bounds).all()
            else "(no interval)",
        )
    label = plotly_text(colorbar_title or "score")
    figure.data[0].update(
        customdata=custom,
        hovertemplate=(
            "layer %{y}, head %{x}<br>"
            + label
            + " %{z:.3f} %{customdata[2]}<br>chance (uniform attention) %{customdata[0]:.3f}"
            + "<br>support: %{customdata[1]:.0f} "
            + plotly_text(score.unit)
            + "<extra></extra>"
        ),
    )
    return figure


def _accuracy(item: Any) -> tuple[float, float, float]:
    return float(item.accuracy), float(item.low), float(item.high)


def ablation_bars(checks: Sequence[Any], *, title: str = "") -> go.Figure:
    """Copy accuracy per ablation check (each with `by`, `intervention`, `count`,
    `clean`, `top` and `bottom_pooled`, accuracies with `accuracy`, `low`, `high`):
    three bars per check (no change, the top heads changed, streaming heads changed)
    with 95% Wilson intervals as error bars."""
    names = [
        f"{c.by}<br>({'z ← 0' if c.intervention == 'zero' else 'sink + window'})" for c in checks
    ]
    figure = base_figure(title, height=360)
    series = (
        ("no head changed", [c.clean for c in checks], BASELINE_COLOR),
        ("top heads changed", [c.top for c in checks], HIGHLIGHT_COLOR),
        ("streaming heads changed (pooled draws)", [c.bottom_pooled for c in checks], COLORS[0]),
    )
    for name, items, color in series:
        values = [_accuracy(item) for item in items]
        mean = [v[0] for v in values]
        figure.add_trace(
            go.Bar(
                name=name,
                x=names,
                y=mean,
                marker_color=color,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [v[2] - v[0] for v in values],
                    "arrayminus": [v[0] - v[1] for v in values],
                },
                customdata=[
                    [v[1], v[2], int(item.total)] for v, item in zip(values, items, strict=True)
                ],
                hovertemplate=(
                    "%{x}<br>"
                    + name
                    + ": copy accuracy %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}] 95% "
                    "Wilson, %{customdata[2]} generated tokens<extra></extra>"
                ),
            )
        )
    figure.update_layout(
        barmode="group",
        yaxis={"title": {"text": "greedy copy accuracy"}, "range": [0, 1.05]},
        legend={"orientation": "h", "y": -0.3},
        margin={"l": 55, "r": 10, "t": 40, "b": 110},
    )
    return figure
