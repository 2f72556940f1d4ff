"""What the model outputs: next-token probabilities (with and without an
intervention) and sentence-embedding similarities for encoders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from headscope.figures.arrays import float32
from headscope.figures.style import COLORS, base_figure, plotly_text, token_label


def next_token_bars(
    candidates: Sequence[str],
    probabilities: object,
    *,
    reference: object = None,
    title: str = "Next-token distribution",
    name: str = "with gates",
    reference_name: str = "all heads",
) -> go.Figure:
    """Horizontal bars of the top-k next tokens (most likely on top);
    `reference` (same candidates) is drawn as grey bars behind for comparison."""
    labels = [f"{i + 1}. {token_label(c)}" for i, c in enumerate(candidates)]
    figure = base_figure(title, height=max(240, 90 + 26 * len(labels)))
    if reference is not None:
        figure.add_trace(
            go.Bar(
                y=labels,
                x=float32(reference),
                orientation="h",
                name=plotly_text(reference_name),
                marker={"color": "#c9c9c9"},
                hovertemplate="%{y}<br>p = %{x:.4f}<extra>"
                + plotly_text(reference_name)
                + "</extra>",
            )
        )
    figure.add_trace(
        go.Bar(
            y=labels,
            x=float32(probabilities),
            orientation="h",
            name=plotly_text(name),
            marker={"color": COLORS[0]},
            texttemplate="%{x:.3f}",
            textposition="outside",
            hovertemplate="%{y}<br>p = %{x:.4f}<extra>" + plotly_text(name) + "</extra>",
        )
    )
    figure.update_layout(
        barmode="group",
        xaxis={"title": {"text": "probability"}, "range": [0, 1.08]},
        yaxis={"type": "category", "autorange": "reversed"},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        margin={"l": 110, "r": 20, "t": 50, "b": 40},
    )
    return figure


def similarity_bars(
    values: Mapping[str, float],
    *,
    reference: Mapping[str, float] | None = None,
    title: str = "Sentence-embedding similarity",
) -> go.Figure:
    """Cosine similarities as horizontal bars in [−1, 1]; `reference` holds the
    unablated value of the same quantities (grey bars)."""
    names = [plotly_text(name) for name in values]
    figure = base_figure(title, height=max(200, 100 + 40 * len(names)))
    if reference is not None:
        figure.add_trace(
            go.Bar(
                y=names,
                x=float32([reference.get(name, float("nan")) for name in values]),
                orientation="h",
                name="all heads",
                marker={"color": "#c9c9c9"},
                hovertemplate="%{y}<br>%{x:.4f}<extra>all heads</extra>",
            )
        )
    figure.add_trace(
        go.Bar(
            y=names,
            x=float32(list(values.values())),
            orientation="h",
            name="with gates",
            marker={"color": COLORS[0]},
            texttemplate="%{x:.3f}",
            textposition="outside",
            hovertemplate="%{y}<br>%{x:.4f}<extra>with gates</extra>",
        )
    )
    low = min([0.0, *values.values(), *(reference or {}).values()])
    figure.update_layout(
        barmode="group",
        xaxis={"title": {"text": "cosine similarity"}, "range": [min(-0.05, low - 0.05), 1.1]},
        yaxis={"type": "category", "autorange": "reversed"},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        margin={"l": 200, "r": 20, "t": 50, "b": 40},
    )
    return figure
