"""Figures of what each component writes toward one prediction (docs/methods.md §6):
the per-head direct logit attribution, per-layer attention vs MLP bars, the logit
lens and the residual contribution graph. Pure: results in, plotly figures out."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from headscope.figures.arrays import float32
from headscope.figures.heads import layer_head_heatmap
from headscope.figures.style import (
    BASELINE_COLOR,
    COLORS,
    DIVERGING,
    SEQUENTIAL,
    base_figure,
    plotly_text,
    token_label,
)

#: Hover precision of attribution values (logit units).
HOVER_FORMAT = ".5f"


def attribution_heatmap(
    attribution: Any, *, units: str = "logit units", height: int | None = None
) -> go.Figure:
    """`[layer, head]` direct attribution (a `LogitAttribution` or an
    `EmbeddingAttribution`: `.heads`, `.measured`), diverging around 0; cells are
    annotated, hovers give five decimals."""
    figure = layer_head_heatmap(
        attribution.heads,
        title=f"Direct attribution per head: {attribution.measured}",
        colorbar_title=units,
        signed=True,
        fmt=".2f",
        height=height,
    )
    figure.update_traces(
        hovertemplate=(
            f"layer %{{y}}, head %{{x}}<br>direct attribution %{{z:{HOVER_FORMAT}}} {units}"
            "<extra></extra>"
        )
    )
    return figure


def layer_bars(
    attention: Any, mlps: Any, *, title: str, units: str = "logit units", height: int = 300
) -> go.Figure:
    """Per layer, the direct attribution of the attention block (its heads plus
    b_O) beside the MLP's."""
    layers = [f"layer {layer}" for layer in range(len(mlps))]
    figure = base_figure(title, height=height)
    for name, values, color in (
        ("attention (heads + b_O)", attention, COLORS[0]),
        ("MLP", mlps, COLORS[1]),
    ):
        figure.add_trace(
            go.Bar(
                name=name,
                x=layers,
                y=float32(values),
                marker_color=color,
                hovertemplate=f"%{{x}}: {name} %{{y:{HOVER_FORMAT}}}<extra></extra>",
            )
        )
    figure.update_layout(
        barmode="group",
        yaxis_title=units,
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 60, "r": 10, "t": 40, "b": 60},
    )
    return figure


def logit_lens_figure(lens: Any, *, height: int | None = None) -> go.Figure:
    """The logit lens: one row per stage (embeddings, then each layer), its top-k
    tokens left to right shaded by probability; the row label gives the target's
    rank and probability at that stage."""
    probs = float32(lens.top_probs)
    n_stages, k = probs.shape
    labels = [
        f"{stage} · {token_label(lens.target_token)} #{int(rank) + 1}, p={float(p):.3f}"
        for stage, rank, p in zip(lens.stages, lens.target_rank, lens.target_prob, strict=True)
    ]
    text = [[token_label(token) for token in row] for row in lens.top_tokens]
    figure = base_figure(
        f"Logit lens at position {lens.position}: residual after each stage through the "
        "final norm and unembedding (top tokens by probability)",
        height=height or max(220, 110 + 34 * n_stages),
    )
    figure.add_trace(
        go.Heatmap(
            z=probs,
            x=[f"#{i + 1}" for i in range(k)],
            y=labels,
            text=text,
            texttemplate="%{text}",
            textfont={"size": 11},
            colorscale=SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            xgap=2,
            ygap=2,
            colorbar={"title": {"text": "probability", "side": "right"}, "thickness": 10},
            hovertemplate="%{y}<br>%{x}: %{text}, p = %{z:.4f}<extra></extra>",
        )
    )
    figure.update_layout(
        yaxis={"autorange": "reversed", "showgrid": False},
        xaxis={"showgrid": False, "side": "top"},
        margin={"l": 10, "r": 10, "t": 60, "b": 20},
    )
    figure.update_yaxes(automargin=True)
    return figure


def _positions(graph: Any, n_heads: int) -> dict[str, tuple[float, float]]:
    """Layers left to right: residual nodes on y = 0, heads fanned above, b_O and
    the MLP below."""
    spread = 3.0
    where: dict[str, tuple[float, float]] = {}
    for node, data in graph.nodes(data=True):
        kind, layer = data["kind"], data["layer"]
        x0 = 3.0 * layer
        if kind == "residual":
            where[node] = (x0 + 3.0, 0.0)
        elif kind == "head":
            step = spread / max(n_heads - 1, 1)
            where[node] = (x0 + 1.0, 1.0 + step * data["head"])
        elif kind == "bias":
            where[node] = (x0 + 1.0, -1.0)
        elif kind == "mid":
            where[node] = (x0 + 2.0, 0.0)
        else:  # mlp
            where[node] = (x0 + 2.5, -1.5)
    return where


def contribution_graph_figure(
    result: Any, *, attribution: Any = None, height: int = 460
) -> go.Figure:
    """The residual contribution graph (a `ContributionGraph`): layers left to right,
    edge width ∝ the part's proximity share of the residual it is added to (edges
    under `min_share` dropped). With `attribution`, head and MLP nodes are coloured
    by their direct logit attribution."""
    graph = result.graph
    where = _positions(graph, result.n_heads)
    kinds = {
        "residual": ("residual", BASELINE_COLOR),
        "mid": ("residual", BASELINE_COLOR),
        "head": ("head", COLORS[0]),
        "bias": ("bias", "#bbbbbb"),
        "mlp": ("MLP", COLORS[1]),
    }
    figure = base_figure(
        "Contribution graph: edge width = the part's proximity share of the residual it "
        f"joins (Ferrando & Voita 2024); edges under {result.min_share:.0%} hidden",
        height=height,
    )
    buckets: dict[int, tuple[list, list]] = {}
    mid_x, mid_y, mid_text = [], [], []
    for source, target, data in graph.edges(data=True):
        share = float(data["share"])
        width = 1 + round(share * 10)
        xs, ys = buckets.setdefault(width, ([], []))
        (x0, y0), (x1, y1) = where[source], where[target]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
        mid_text.append(
            f"{plotly_text(graph.nodes[source]['label'])} → "
            f"{plotly_text(graph.nodes[target]['label'])}: share {share:.3f}"
        )
    for width, (xs, ys) in sorted(buckets.items()):
        figure.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"width": width, "color": "rgba(31, 95, 168, 0.6)"},
                hoverinfo="skip",
                showlegend=False,
            )
        )
    figure.add_trace(
        go.Scatter(
            x=mid_x,
            y=mid_y,
            mode="markers",
            marker={"size": 8, "opacity": 0},
            hovertemplate="%{text}<extra></extra>",
            text=mid_text,
            showlegend=False,
        )
    )
    values = _node_values(graph, attribution)
    # One colour scale for heads and MLPs, bounded by the heads: an MLP's value is
    # often ten times a head's and would wash every head out (hovers are exact).
    heads = [abs(v) for node, v in values.items() if node.startswith("head/")]
    bound = max(heads, default=0.0) or 1.0
    labelled = result.n_heads <= 16
    for kind, (name, color) in kinds.items():
        nodes = [n for n, d in graph.nodes(data=True) if d["kind"] == kind]
        if kind == "bias":  # b_O nodes only where a bias carries a visible share
            nodes = [n for n in nodes if graph.degree(n) > 0]
        if not nodes:
            continue
        hover = []
        for node in nodes:
            line = plotly_text(graph.nodes[node]["label"])
            if node in values:
                line += f"<br>direct logit attribution {values[node]:+.4f}"
            hover.append(line)
        marker: dict[str, Any] = {"size": 12 if kind in ("residual", "mid") else 11}
        if values and kind in ("head", "mlp"):
            shown = np.array([values.get(node, 0.0) for node in nodes], dtype=np.float32)
            marker.update(
                color=shown,
                colorscale=DIVERGING,
                cmin=-bound,
                cmax=bound,
                line={"width": 1.5, "color": color},
                showscale=kind == "head",
                colorbar={
                    "title": {"text": "DLA (clipped at the largest head)", "side": "right"},
                    "thickness": 10,
                },
            )
        else:
            marker.update(color=color, symbol="square" if kind in ("residual", "mid") else "circle")
        figure.add_trace(
            go.Scatter(
                x=[where[n][0] for n in nodes],
                y=[where[n][1] for n in nodes],
                mode="markers+text" if labelled and kind in ("head", "mlp") else "markers",
                texttemplate=[_short(graph.nodes[n]) for n in nodes],
                textposition="middle left" if kind == "head" else "bottom center",
                textfont={"size": 10, "color": "#5f6b7a"},
                name=name if kind != "mid" else "residual (after attention)",
                marker=marker,
                text=hover,
                hovertemplate="%{text}<extra></extra>",
                showlegend=kind != "mid",
            )
        )
    n_layers = result.n_layers
    figure.update_layout(
        xaxis={
            "tickmode": "array",
            "tickvals": [3.0 * layer + 1.5 for layer in range(n_layers)],
            "ticktext": [f"layer {layer}" for layer in range(n_layers)],
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={"visible": False},
        legend={"orientation": "h", "y": -0.12},
        margin={"l": 20, "r": 10, "t": 44, "b": 50},
    )
    return figure


def _short(data: dict) -> str:
    return f"H{data['head']}" if data["kind"] == "head" else "MLP"


def _node_values(graph: Any, attribution: Any) -> dict[str, float]:
    if attribution is None:
        return {}
    values = {}
    for node, data in graph.nodes(data=True):
        if data["kind"] == "head":
            values[node] = float(attribution.heads[data["layer"], data["head"]])
        elif data["kind"] == "mlp":
            values[node] = float(attribution.mlps[data["layer"]])
    return values
