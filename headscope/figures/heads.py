"""Per-head figures: layer × head heatmaps of a score, a grid of categorical
head labels, and the greedy pruning curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.figures.arrays import float32, int32
from headscope.figures.style import (
    BASELINE_COLOR,
    COLORS,
    DIVERGING,
    HIGHLIGHT_COLOR,
    SEQUENTIAL,
    STATISTIC,
    base_figure,
    plotly_text,
)

#: Colours of the head categories in `label_grid` (unknown labels get grey).
LABEL_COLORS = {
    "previous_token": "#1f77b4",
    "duplicate_token": "#9467bd",
    "induction": "#d62728",
    "next_token": "#17becf",
    "first_token_sink": "#8c564b",
    "local": "#2ca02c",
    "uniform": "#bcbd22",
    "insufficient": "#fdd9a0",
    "none": "#e5e5e5",
    "unlabelled": "#e5e5e5",
}
#: How a label reads in legends and hovers, where it differs from the label itself.
LABEL_NAMES = {"insufficient": "insufficient evidence"}


def _head_axes(figure: go.Figure, layers: Sequence[int], heads: Sequence[int]) -> None:
    figure.update_layout(
        xaxis={
            "title": {"text": "head"},
            "tickmode": "array",
            "tickvals": int32(heads),
            "ticktext": [str(h) for h in heads],
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={
            "title": {"text": "layer"},
            "tickmode": "array",
            "tickvals": int32(layers),
            "ticktext": [str(layer) for layer in layers],
            "autorange": "reversed",
            "showgrid": False,
            "zeroline": False,
        },
    )


def _outline(figure: go.Figure, layers, heads, selected) -> None:
    if selected is None or selected[0] not in layers or selected[1] not in heads:
        return
    layer, head = selected
    figure.add_shape(
        type="rect",
        x0=head - 0.5,
        x1=head + 0.5,
        y0=layer - 0.5,
        y1=layer + 0.5,
        line={"color": HIGHLIGHT_COLOR, "width": 2.5},
    )


def _height(n_layers: int, height: int | None) -> int:
    return height if height is not None else max(200, 120 + 30 * n_layers)


def layer_head_heatmap(
    values: object,
    *,
    title: str = "",
    colorbar_title: str = "",
    layer_index: Sequence[int] | None = None,
    head_index: Sequence[int] | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
    colorscale: object = None,
    signed: bool = False,
    fmt: str = ".2f",
    annotate: bool | None = None,
    selected: tuple[int, int] | None = None,
    height: int | None = None,
) -> go.Figure:
    """Heatmap of a `[layer, head]` score. `signed=True` centres a diverging
    scale on 0. Cells are annotated with their value when the grid is small
    (≤ 16 heads, unless `annotate` says otherwise); click data carry
    `pointNumber = [layer row, head column]`."""
    grid = float32(values)
    if grid.ndim != 2:
        raise InputError(f"layer_head_heatmap needs [layer, head], got shape {grid.shape}")
    layers = list(layer_index) if layer_index is not None else list(range(grid.shape[0]))
    heads = list(head_index) if head_index is not None else list(range(grid.shape[1]))
    if signed:
        bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        zmin, zmax = -(bound or 1.0), bound or 1.0
        scale = colorscale or DIVERGING
    else:
        scale = colorscale or (SEQUENTIAL if zmax is not None and zmax <= 1.0 else STATISTIC)
    show_text = annotate if annotate is not None else len(heads) <= 16
    figure = base_figure(title, height=_height(len(layers), height))
    figure.add_trace(
        go.Heatmap(
            z=grid,
            zmin=zmin,
            zmax=zmax,
            colorscale=scale,
            xgap=1,
            ygap=1,
            colorbar={
                "title": {"text": plotly_text(colorbar_title), "side": "right"},
                "thickness": 10,
            },
            texttemplate=f"%{{z:{fmt}}}" if show_text else None,
            textfont={"size": 10 if len(heads) <= 8 else 8},
            hovertemplate=(
                "layer %{y}, head %{x}<br>"
                + plotly_text(colorbar_title or "value")
                + f" %{{z:{fmt}}}<extra></extra>"
            ),
            x=int32(heads),
            y=int32(layers),
        )
    )
    _head_axes(figure, layers, heads)
    figure.update_layout(margin={"l": 55, "r": 10, "t": 40, "b": 40})
    _outline(figure, layers, heads, selected)
    return figure


def label_grid(
    labels: Sequence[Sequence[str]],
    *,
    scores: object = None,
    support: object = None,
    categories: Sequence[Sequence[str | None]] | None = None,
    min_support: int | None = None,
    title: str = "",
    layer_index: Sequence[int] | None = None,
    head_index: Sequence[int] | None = None,
    selected: tuple[int, int] | None = None,
    height: int | None = None,
) -> go.Figure:
    """A layer × head grid coloured by each head's category label (e.g. the
    head taxonomy), with the label (and its score, when given) in each cell.

    `support` (`[layer, head]`, e.g. the number of queries behind each label) goes
    into the hover ("induction 0.98 (support 9 queries)"); `categories` names the
    category behind a label where it differs (for "insufficient": the category whose
    support fell short of `min_support`). "insufficient" has its own colour and
    reads "insufficient evidence"."""
    rows = [list(row) for row in labels]
    n_layers, n_heads = len(rows), len(rows[0]) if rows else 0
    layers = list(layer_index) if layer_index is not None else list(range(n_layers))
    heads = list(head_index) if head_index is not None else list(range(n_heads))
    categories_seen = list(dict.fromkeys(label for row in rows for label in row))
    codes = float32([[categories_seen.index(label) for label in row] for row in rows])
    n = max(1, len(categories_seen))
    scale = []
    for i, category in enumerate(categories_seen):
        color = LABEL_COLORS.get(category, COLORS[i % len(COLORS)])
        scale += [[i / n, color], [(i + 1) / n, color]]
    if not scale:
        scale = [[0.0, "#e5e5e5"], [1.0, "#e5e5e5"]]
    score_grid = float32(scores) if scores is not None else None
    support_grid = float32(support) if support is not None else None
    # Scores in the cells only where they fit; hover always has them.
    with_scores = score_grid is not None and n_heads <= 8
    text = [
        [
            _short(label) + (f"<br>{score_grid[li, hi]:.2f}" if with_scores else "")
            for hi, label in enumerate(row)
        ]
        for li, row in enumerate(rows)
    ]
    hover = [
        [
            _hover(
                label,
                None if categories is None else categories[li][hi],
                None if score_grid is None else float(score_grid[li, hi]),
                None if support_grid is None else float(support_grid[li, hi]),
                min_support,
            )
            for hi, label in enumerate(row)
        ]
        for li, row in enumerate(rows)
    ]
    # The legend sits in the bottom margin, below the axis title, one row per ~3 labels.
    legend_rows = -(-len(categories_seen) // 3)
    figure = base_figure(
        title, height=_height(n_layers, height) + (20 * legend_rows if height is None else 0)
    )
    figure.add_trace(
        go.Heatmap(
            z=codes,
            zmin=-0.5,
            zmax=n - 0.5,
            colorscale=scale,
            showscale=False,
            xgap=1,
            ygap=1,
            text=text,
            customdata=hover,
            texttemplate="%{text}" if n_heads <= 16 else None,
            textfont={"size": 9},
            hovertemplate="layer %{y}, head %{x}<br>%{customdata}<extra></extra>",
            x=int32(heads),
            y=int32(layers),
        )
    )
    for i, category in enumerate(categories_seen):  # a legend for the categories
        figure.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                marker={
                    "size": 10,
                    "symbol": "square",
                    "color": LABEL_COLORS.get(category, COLORS[i % len(COLORS)]),
                },
                name=plotly_text(_name(category)),
            )
        )
    _head_axes(figure, layers, heads)
    figure.update_layout(
        legend={
            "orientation": "h",
            "yref": "container",
            "y": 0,
            "yanchor": "bottom",
            "x": 0,
            "font": {"size": 10},
        },
        # the axis title keeps its place below the ticks, above the legend (without
        # automargin plotly drew it on the tick labels' line)
        xaxis={"automargin": True, "title": {"standoff": 4}},
        margin={"l": 55, "r": 10, "t": 40, "b": 50 + 20 * legend_rows},
    )
    _outline(figure, layers, heads, selected)
    return figure


def _short(label: str) -> str:
    return plotly_text(
        {
            "previous_token": "prev",
            "duplicate_token": "dup",
            "induction": "induct",
            "next_token": "next",
            "first_token_sink": "sink",
            "insufficient": "insuff.",
        }.get(label, label)
    )


def _name(label: str) -> str:
    return LABEL_NAMES.get(label, label.replace("_", " "))


def _hover(
    label: str,
    category: str | None,
    score: float | None,
    support: float | None,
    min_support: int | None,
) -> str:
    """e.g. "induction 0.98 (support 9 queries)", or for a label without enough
    evidence "insufficient evidence: induction 1.00 (support 1 query, below 4)"."""
    shown = category if category is not None and category != label else None
    text = _name(label) + (f": {shown.replace('_', ' ')}" if shown else "")
    if score is not None and np.isfinite(score):
        text += f" {score:.2f}"
    if support is not None and np.isfinite(support):
        count = int(support)
        text += f" (support {count} {'query' if count == 1 else 'queries'}"
        if min_support is not None and count < min_support:
            text += f", below {min_support}"
        text += ")"
    return plotly_text(text)


def importance_heatmap(
    scores: object,
    *,
    title: str,
    colorbar_title: str = "importance",
    signed: bool | None = None,
    zmax: float | None = None,
    layer_index: Sequence[int] | None = None,
    head_index: Sequence[int] | None = None,
    selected: tuple[int, int] | None = None,
    interval: tuple[object, object] | None = None,
    support: str | None = None,
) -> go.Figure:
    """A `[layer, head]` importance score (ablation effect, gradient
    importance, CHG score). Signed scores get a diverging scale; `zmax` fixes
    the top of an unsigned one (1 for gate-valued scores such as CHG).

    `interval` = (low, high) `[layer, head]` bounds of each score's confidence
    interval, shown in the hover with `support` (e.g. "95% bootstrap over 6
    prompts"); for signed scores a cell whose interval includes zero is
    annotated "n.s." (not significant) and its value drawn at half opacity."""
    grid = float32(scores)
    if signed is None:
        signed = bool(np.nanmin(grid) < 0) if np.isfinite(grid).any() else False
    figure = layer_head_heatmap(
        grid,
        title=title,
        colorbar_title=colorbar_title,
        layer_index=layer_index,
        head_index=head_index,
        signed=signed,
        zmin=None if signed else 0.0,
        zmax=None if signed else zmax,
        selected=selected,
    )
    if interval is None:
        return figure
    low, high = float32(interval[0]), float32(interval[1])
    if low.shape != grid.shape or high.shape != grid.shape:
        raise InputError(f"interval bounds must have the scores' shape {grid.shape}")
    undefined = ~(np.isfinite(low) & np.isfinite(high))
    not_significant = signed & ~undefined & (low <= 0) & (high >= 0)
    text = np.empty(grid.shape, dtype=object)
    for index, value in np.ndenumerate(grid):
        text[index] = f"{value:.2f}" + ("<br>n.s." if not_significant[index] else "")
    label = plotly_text(colorbar_title or "value")
    where = plotly_text(support) if support else "confidence interval"
    heatmap = figure.data[0]
    heatmap.update(
        customdata=np.stack([low, high, not_significant.astype(np.float32)], axis=-1),
        text=text,
        texttemplate="%{text}" if heatmap.texttemplate else None,
        hovertemplate=(
            "layer %{y}, head %{x}<br>"
            + label
            + " %{z:.3f}<br>["
            + "%{customdata[0]:.3f}, %{customdata[1]:.3f}] "
            + where
            + "<extra></extra>"
        ),
    )
    if bool(not_significant.any()):
        faded = np.where(not_significant, grid, np.nan)
        figure.add_trace(
            go.Heatmap(
                z=np.where(np.isfinite(faded), 1.0, np.nan),
                x=heatmap.x,
                y=heatmap.y,
                colorscale=[[0, "rgba(255,255,255,0.5)"], [1, "rgba(255,255,255,0.5)"]],
                showscale=False,
                hoverinfo="skip",
                xgap=1,
                ygap=1,
            )
        )
    return figure


def pruning_curve(
    fractions: object,
    curves: Mapping[str, object],
    *,
    metric_name: str = "loss",
    baseline: float | None = None,
    title: str = "Greedy pruning curve",
) -> go.Figure:
    """The metric after masking the lowest-ranked fraction of heads, one line
    per ranking (`curves[name]` has one value per fraction); `baseline` is a
    horizontal reference (e.g. the unablated metric)."""
    x = float32(fractions)
    figure = base_figure(title, height=340)
    for i, (name, values) in enumerate(curves.items()):
        figure.add_trace(
            go.Scatter(
                x=x * 100.0,
                y=float32(values),
                mode="lines+markers",
                name=plotly_text(name),
                line={"color": COLORS[i % len(COLORS)], "width": 2},
                hovertemplate="%{x:.0f}% heads masked<br>"
                + plotly_text(metric_name)
                + " %{y:.4f}<extra>"
                + plotly_text(name)
                + "</extra>",
            )
        )
    if baseline is not None:
        figure.add_hline(
            y=float(baseline),
            line={"color": BASELINE_COLOR, "dash": "dot", "width": 1},
            annotation_text="all heads",
            annotation_position="top left",
        )
    figure.update_layout(
        xaxis={"title": {"text": "heads masked (%)"}, "range": [-2, 102]},
        yaxis={"title": {"text": plotly_text(metric_name)}},
        legend={"orientation": "h", "y": -0.25, "yanchor": "top", "x": 0, "xanchor": "left"},
        margin={"b": 90},
    )
    return figure
