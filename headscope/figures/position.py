"""Position-bias figures: attention-sink scores per head and key, and the
cumulative influence by distance against a mask-only baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from headscope.errors import InputError
from headscope.figures.arrays import float32, int32
from headscope.figures.style import (
    HIGHLIGHT_COLOR,
    LOG_AXIS,
    SEQUENTIAL,
    base_figure,
    plotly_text,
    token_label,
)


def sink_scores(
    scores: object,
    tokens: Sequence[str],
    *,
    threshold: float = 0.3,
    sinks: object = None,
    baseline: object = None,
    support: object = None,
    min_queries: int | None = None,
    rule: str | None = None,
    layer_index: Sequence[int] | None = None,
    head_index: Sequence[int] | None = None,
    max_keys: int = 32,
    max_heads: int | None = None,
    title: str = "Sink score α_k per head",
) -> go.Figure:
    """Heatmap of sink scores `[layer, head, key]` (one row per head, the first
    `max_keys` keys across). Cells that are sinks are marked ×: `sinks` (a boolean
    `[layer, head, key]`, e.g. `SinkDecision.sinks`, described by `rule` in the legend)
    when given, else the cells above `threshold`. `baseline` and `support` (`[key]`:
    uniform attention's α_k and the number of queries that see each key) add the ratio
    to the baseline and the support to the hover; with `min_queries`, keys seen by fewer
    queries (never sinks: too little evidence) are greyed out.

    `max_heads`: with more heads than that, only the rows of the `max_heads`
    heads with the highest α_k over the shown keys are drawn (heads with a
    marked sink first), in model order; the title says how many of how many."""
    grid = float32(scores)
    if grid.ndim != 3:
        raise ValueError(f"sink_scores needs [layer, head, key], got shape {grid.shape}")
    n_layers, n_heads, n_keys = grid.shape
    layers = list(layer_index) if layer_index is not None else list(range(n_layers))
    heads = list(head_index) if head_index is not None else list(range(n_heads))
    shown = min(n_keys, max_keys, len(tokens))
    rows = grid.reshape(n_layers * n_heads, n_keys)[:, :shown]
    row_names = [f"L{layer}.H{head}" for layer in layers for head in heads]
    key_names = [f"{k} {token_label(tokens[k])}" for k in range(shown)]
    if sinks is not None:
        marked = np.asarray(sinks, dtype=bool)
        if marked.shape != grid.shape:
            raise InputError(f"sinks must be {grid.shape}, got {marked.shape}")
        marked = marked.reshape(n_layers * n_heads, n_keys)[:, :shown]
        name = f"sink ({rule})" if rule else "sink"
    else:
        marked = rows > threshold
        name = f"sink (α > {threshold:g})"
    kept = np.arange(len(row_names))
    if max_heads is not None and len(row_names) > max(1, max_heads):
        peak = np.nan_to_num(rows, nan=-1.0).max(axis=1) + 2.0 * marked.any(axis=1)
        kept = np.sort(np.argsort(-peak, kind="stable")[: max(1, max_heads)])
        title = f"{title} (top {len(kept)} of {len(row_names)} heads by α_k)"
        rows, marked = rows[kept], marked[kept]
        row_names = [row_names[i] for i in kept]
    figure = base_figure(title, height=max(260, 110 + 14 * len(row_names)))
    hover = "%{y}<br>key %{x}<br>α %{z:.3f}"
    customdata = None
    if baseline is not None or support is not None:
        base = float32(baseline)[:shown] if baseline is not None else np.full(shown, np.nan)
        count = float32(support)[:shown] if support is not None else np.full(shown, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = rows / base[None, :]
        customdata = np.stack(
            [ratio, np.broadcast_to(base, rows.shape), np.broadcast_to(count, rows.shape)], -1
        )
        if baseline is not None:
            hover += "<br>%{customdata[0]:.1f}× uniform (α %{customdata[1]:.3f})"
        if support is not None:
            hover += "<br>%{customdata[2]:.0f} queries see this key"
    figure.add_trace(
        go.Heatmap(
            z=rows,
            x=key_names,
            y=row_names,
            zmin=0.0,
            zmax=1.0,
            colorscale=SEQUENTIAL,
            xgap=1,
            ygap=1,
            colorbar={"title": {"text": "α_k", "side": "right"}, "thickness": 10},
            customdata=customdata,
            hovertemplate=hover + "<extra></extra>",
        )
    )
    hot_rows, hot_cols = np.nonzero(marked)
    if len(hot_rows):
        figure.add_trace(
            go.Scatter(
                x=[key_names[c] for c in hot_cols],
                y=[row_names[r] for r in hot_rows],
                mode="markers",
                marker={
                    "symbol": "x-thin",
                    "size": 7,
                    "line": {"width": 1.5, "color": HIGHLIGHT_COLOR},
                },
                name=plotly_text(name),
                hoverinfo="skip",
            )
        )
    if support is not None and min_queries is not None:
        _grey_untested(figure, float32(support)[:shown] < min_queries, min_queries)
    figure.update_layout(
        xaxis={
            "type": "category",
            "title": {"text": "key"},
            "tickangle": -60,
            "tickmode": "array",
            "tickvals": key_names,
            "ticktext": [token_label(tokens[k]) for k in range(shown)],
        },
        yaxis={"type": "category", "autorange": "reversed", "title": {"text": "head"}},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        margin={"l": 70, "r": 10, "t": 50, "b": 90},
    )
    return figure


def _grey_untested(figure: go.Figure, untested: np.ndarray, min_queries: int) -> None:
    """A grey band over each run of keys seen by fewer than `min_queries` queries."""
    start = None
    for k, flag in enumerate([*untested.tolist(), False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            figure.add_shape(
                type="rect",
                xref="x",
                yref="paper",
                x0=start - 0.5,
                x1=k - 0.5,
                y0=0,
                y1=1,
                fillcolor="rgba(120, 120, 120, 0.28)",
                line={"width": 0},
                layer="above",
            )
            figure.add_annotation(
                x=(start + k - 1) / 2,
                y=1,
                xref="x",
                yref="paper",
                yanchor="bottom",
                showarrow=False,
                text=f"&lt; {min_queries} queries",
                font={"size": 9, "color": "#666"},
            )
            start = None


def influence_by_distance(
    curves: object,
    baseline: object = None,
    *,
    layer_index: Sequence[int] | None = None,
    baseline_name: str = "mask only",
    log_y: bool = False,
    title: str = "Cumulative influence by distance",
) -> go.Figure:
    """One line per layer of `curves[layer, distance]` (influence mass at each
    query − key distance after that many layers), coloured from early (light)
    to late (dark); `baseline` (`[layer, distance]` or `[distance]`) is the same
    computation on the mask alone, drawn dashed."""
    grid = float32(curves)
    if grid.ndim == 1:
        grid = grid[None]
    n_layers, n_dist = grid.shape
    layers = list(layer_index) if layer_index is not None else list(range(n_layers))
    colors = sample_colorscale(
        "Blues", [0.35 + 0.65 * i / max(1, n_layers - 1) for i in range(n_layers)]
    )
    x = int32(range(n_dist))
    figure = base_figure(title, height=380)
    base = None if baseline is None else float32(baseline)
    per_layer = base is not None and base.ndim == 2
    for i, layer in enumerate(layers):
        figure.add_trace(
            go.Scatter(
                x=x,
                y=grid[i],
                mode="lines",
                name=f"model, after layer {layer}",
                legendgroup=f"layer{layer}",
                line={"color": colors[i], "width": 2},
                hovertemplate="distance %{x}<br>influence %{y:.4f}<extra>layer "
                + str(layer)
                + "</extra>",
            )
        )
        if per_layer:
            figure.add_trace(
                _baseline_line(
                    x, base[i], f"{baseline_name}, after layer {layer}", colors[i], f"layer{layer}"
                )
            )
    if base is not None and not per_layer:
        figure.add_trace(_baseline_line(x, base, baseline_name, colors[-1], "baseline"))
    figure.update_layout(
        xaxis={"title": {"text": "distance (query − key)"}},
        yaxis={"title": {"text": "influence"}, **(LOG_AXIS if log_y else {"type": "linear"})},
        legend={"font": {"size": 10}},
    )
    return figure


def _baseline_line(x, values, name: str, color: str, group: str) -> go.Scatter:
    return go.Scatter(
        x=x,
        y=float32(values),
        mode="lines",
        name=plotly_text(name),
        legendgroup=group,
        line={"color": color, "width": 1.5, "dash": "dash"},
        hovertemplate="distance %{x}<br>baseline %{y:.4f}<extra>" + plotly_text(name) + "</extra>",
    )
