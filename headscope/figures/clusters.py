"""Head clustering figures (docs/methods.md §2.12): a layer's head × head
correlation ordered by cluster (clusters boxed), the elbow curves of the
within-cluster error, the cross-layer correlation of every head with every
head, and the ablation check of each cluster (each member alone vs the whole
cluster). Pure: results in, plotly figures out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from headscope.analyses.clustering import LayerClusters
from headscope.errors import InputError
from headscope.figures.arrays import float32
from headscope.figures.style import BASELINE_COLOR, COLORS, DIVERGING, base_figure, plotly_text

#: What every correlation is, said once for colour bars and hovers.
MEASURE = "Pearson r of attention maps"


def _box(figure: go.Figure, start: int, stop: int, color: str = "#1d2330") -> None:
    figure.add_shape(
        type="rect",
        x0=start - 0.5,
        x1=stop - 0.5,
        y0=start - 0.5,
        y1=stop - 0.5,
        line={"color": color, "width": 2},
        fillcolor="rgba(0,0,0,0)",
    )


def correlation_heatmap(
    layer: LayerClusters, *, baseline: float | None = None, support: str = "", title: str = ""
) -> go.Figure:
    """The layer's head × head correlation, heads ordered cluster by cluster
    and each cluster boxed; the hover names both heads, r, and the baseline
    (the correlation of random maps on the same support)."""
    order = list(layer.order)
    grid = float32(layer.correlation)[np.ix_(order, order)]
    labels = [f"{layer.layer}.{h}" for h in order]
    note = f"<br>random maps, same support: r = {baseline:.3f}" if baseline is not None else ""
    figure = base_figure(title or f"Layer {layer.layer}: {layer.k} clusters", height=360)
    figure.add_trace(
        go.Heatmap(
            z=grid,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale=DIVERGING,
            colorbar={"title": {"text": "r"}},
            hovertemplate="heads %{y} and %{x}<br>"
            + MEASURE
            + " %{z:.3f}"
            + note
            + (f"<br>{plotly_text(support)}" if support else "")
            + "<extra></extra>",
        )
    )
    start = 0
    for cluster in layer.clusters:
        _box(figure, start, start + len(cluster))
        start += len(cluster)
    figure.update_layout(
        xaxis={"title": {"text": "head (ordered by cluster)"}, "type": "category"},
        yaxis={"type": "category", "autorange": "reversed"},
    )
    return figure


def elbow_figure(layers: Sequence[LayerClusters]) -> go.Figure:
    """Within-cluster error (fraction of the standardized map variance left
    inside clusters) against the number of clusters, one line per layer, the
    chosen k marked (hollow where the elbow is unclear)."""
    figure = base_figure("Within-cluster error by number of clusters", height=340)
    for i, layer in enumerate(layers):
        errors = float32(layer.errors)
        ks = np.arange(1, len(errors) + 1)
        color = COLORS[i % len(COLORS)]
        figure.add_trace(
            go.Scatter(
                x=ks,
                y=errors,
                mode="lines+markers",
                name=f"layer {layer.layer}",
                line={"color": color, "width": 2},
                hovertemplate="layer "
                + str(layer.layer)
                + ", k = %{x}<br>within-cluster error %{y:.4f}<extra></extra>",
            )
        )
        figure.add_trace(
            go.Scatter(
                x=[layer.k],
                y=[errors[layer.k - 1]],
                mode="markers",
                marker={
                    "size": 13,
                    "color": color if layer.clear else "rgba(0,0,0,0)",
                    "line": {"color": color, "width": 2},
                    "symbol": "diamond",
                },
                showlegend=False,
                hovertemplate=f"layer {layer.layer}: chosen k = {layer.k}"
                + ("" if layer.clear else " (no clear elbow)")
                + "<extra></extra>",
            )
        )
    figure.update_layout(
        xaxis={"title": {"text": "clusters k"}, "dtick": 1},
        yaxis={"title": {"text": "within-cluster error (fraction)"}, "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.25, "yanchor": "top", "x": 0, "xanchor": "left"},
        margin={"b": 90},
    )
    return figure


def cross_layer_heatmap(
    cross: object, *, baseline: float | None = None, support: str = ""
) -> go.Figure:
    """Every head against every head (`[layer, head, layer, head]`), layers
    boxed: heads of different layers that attend alike stand out off the
    diagonal blocks."""
    values = float32(cross)
    if values.ndim != 4 or values.shape[:2] != values.shape[2:]:
        raise InputError("cross_layer_heatmap needs a [layer, head, layer, head] array")
    n_layers, n_heads = values.shape[:2]
    grid = values.reshape(n_layers * n_heads, n_layers * n_heads)
    labels = [f"{layer}.{head}" for layer in range(n_layers) for head in range(n_heads)]
    note = f"<br>random maps, same support: r = {baseline:.3f}" if baseline is not None else ""
    figure = base_figure("Cross-layer similarity of head maps", height=420)
    figure.add_trace(
        go.Heatmap(
            z=grid,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale=DIVERGING,
            colorbar={"title": {"text": "r"}},
            hovertemplate="heads %{y} and %{x}<br>"
            + MEASURE
            + " %{z:.3f}"
            + note
            + (f"<br>{plotly_text(support)}" if support else "")
            + "<extra></extra>",
        )
    )
    for layer in range(n_layers):
        _box(figure, layer * n_heads, (layer + 1) * n_heads, color=BASELINE_COLOR)
    figure.update_layout(
        xaxis={"title": {"text": "layer.head"}, "type": "category"},
        yaxis={"type": "category", "autorange": "reversed"},
    )
    return figure


def redundancy_bars(
    names: Sequence[str],
    members: Sequence[Sequence[str]],
    single: Sequence[tuple[Sequence[float], Sequence[float], Sequence[float]]],
    whole: Sequence[tuple[float, float, float]],
    *,
    harm: str = "harm",
) -> go.Figure:
    """Per cluster, the harm of ablating each member alone and of ablating the
    whole cluster: bars at the mean over prompts, whiskers the interval.
    `single[c]` = (means, lows, highs) per member, `whole[c]` = (mean, low, high)."""
    if not (len(names) == len(members) == len(single) == len(whole)):
        raise InputError(
            "redundancy_bars needs one name, member list, single and whole per cluster"
        )
    figure = base_figure("Ablating one head vs the whole cluster", height=360)
    xs, ys, lows, highs, colors, texts = [], [], [], [], [], []
    for name, heads, (means, low, high), (w_mean, w_low, w_high) in zip(
        names, members, single, whole, strict=True
    ):
        for head, mean, lo, hi in zip(heads, means, low, high, strict=True):
            xs.append(f"{name} · {head} alone")
            ys.append(mean)
            lows.append(mean - lo if np.isfinite(lo) else 0.0)
            highs.append(hi - mean if np.isfinite(hi) else 0.0)
            colors.append(COLORS[0])
            texts.append(f"{head} alone")
        xs.append(f"{name} · all")
        ys.append(w_mean)
        lows.append(w_mean - w_low if np.isfinite(w_low) else 0.0)
        highs.append(w_high - w_mean if np.isfinite(w_high) else 0.0)
        colors.append(COLORS[1])
        texts.append("whole cluster")
    figure.add_trace(
        go.Bar(
            x=[plotly_text(x) for x in xs],
            y=float32(ys),
            marker={"color": colors},
            error_y={"type": "data", "symmetric": False, "array": highs, "arrayminus": lows},
            customdata=[plotly_text(t) for t in texts],
            hovertemplate="%{customdata}<br>" + plotly_text(harm) + " %{y:.4f}<extra></extra>",
        )
    )
    figure.add_hline(y=0, line={"color": BASELINE_COLOR, "width": 1})
    figure.update_layout(
        yaxis={"title": {"text": plotly_text(harm)}},
        xaxis={"tickangle": -30},
        margin={"b": 110},
    )
    return figure
