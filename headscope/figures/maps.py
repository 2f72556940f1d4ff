"""Attention maps: one head's `[query, key]` map with token labels, and a
layer × head grid of thumbnails.

Maps larger than `max_size` per side are reduced on the server by block max
(`arrays.block_max`); the figure's `layout.meta` records the block size so a
click can be mapped back to exact values (`map_block`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.figures.arrays import block_max, float32, reduction_factor
from headscope.figures.style import (
    HIGHLIGHT_COLOR,
    SEQUENTIAL,
    TEMPLATE,
    base_figure,
    plotly_text,
    token_label,
)

MAX_TICK_LABELS = 48


def _axis_categories(tokens: Sequence[str], factor: int) -> tuple[list[str], list[str], list[str]]:
    """(category names, tick values, tick texts): names are unique ("12 the"),
    ticks show the bare token, thinned to at most MAX_TICK_LABELS."""
    n = len(tokens)
    if factor == 1:
        names = [f"{i} {token_label(t)}" for i, t in enumerate(tokens)]
        texts = [token_label(t) for t in tokens]
    else:
        starts = range(0, n, factor)
        names = [f"{s}–{min(s + factor, n) - 1}" for s in starts]
        texts = [f"{s} {token_label(tokens[s])}" for s in starts]
    step = max(1, math.ceil(len(names) / MAX_TICK_LABELS))
    return names, names[::step], texts[::step]


def attention_map(
    pattern: object,
    tokens: Sequence[str],
    *,
    title: str = "",
    max_size: int = 512,
    zmax: float | None = None,
    query: int | None = None,
    height: int = 560,
) -> go.Figure:
    """Heatmap of one `[query, key]` map, queries down, keys across, labelled
    with `tokens`; hover shows query token, key token and weight.

    Above `max_size` tokens the map is reduced by block max (the title says by
    how much; `layout.meta = {"factor", "n"}`). `zmax` fixes the top of the
    colour scale (default: the map's max). `query` outlines that query row.
    """
    matrix = float32(pattern)
    n = matrix.shape[-1]
    if matrix.ndim != 2 or matrix.shape[0] != n or len(tokens) != n:
        raise InputError(
            f"attention_map needs a square [query, key] map matching {len(tokens)} tokens, "
            f"got shape {tuple(matrix.shape)}"
        )
    factor = reduction_factor(n, max_size)
    shown = block_max(matrix, factor)
    names, tick_values, tick_texts = _axis_categories(tokens, factor)
    top = float(np.nanmax(matrix)) if zmax is None and np.isfinite(matrix).any() else zmax
    if factor == 1:
        hover = "query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>"
        suffix = ""
    else:
        hover = "queries %{y}<br>keys %{x}<br>block max %{z:.4f}<extra></extra>"
        suffix = f" (downsampled ×{factor} by block max; click a cell for exact values)"
    heatmap = go.Heatmap(
        z=shown,
        x=names,
        y=names,
        zmin=0.0,
        zmax=top if top and top > 0 else 1.0,
        colorscale=SEQUENTIAL,
        colorbar={"title": {"text": "weight", "side": "right"}, "thickness": 12},
        hovertemplate=hover,
    )
    axis = {
        "type": "category",
        "tickmode": "array",
        "tickvals": tick_values,
        "ticktext": tick_texts,
        "showgrid": False,
        "constrain": "domain",
    }
    # One constructor call: plotly validates the layout once (maps are redrawn on
    # every head switch, so this is on the latency path).
    figure = go.Figure(
        data=[heatmap],
        layout={
            "template": TEMPLATE,
            "title": {"text": plotly_text(title + suffix if title else suffix.strip(" ()"))},
            "height": height,
            "xaxis": {**axis, "title": {"text": "key"}, "tickangle": -60, "side": "bottom"},
            "yaxis": {
                **axis,
                "title": {"text": "query"},
                "autorange": "reversed",
                "scaleanchor": "x",
            },
            "meta": {"factor": factor, "n": n},
            "margin": {"l": 90, "r": 20, "t": 44, "b": 90},
        },
    )
    if query is not None and 0 <= query < n:
        row = query // factor
        figure.add_shape(
            type="rect",
            xref="x",
            yref="y",
            x0=-0.5,
            x1=len(names) - 0.5,
            y0=row - 0.5,
            y1=row + 0.5,
            line={"color": HIGHLIGHT_COLOR, "width": 2},
        )
    return figure


def map_block(
    pattern: object, tokens: Sequence[str], row: int, col: int, factor: int, *, limit: int = 8
) -> list[tuple[int, str, int, str, float]]:
    """Exact entries behind display cell (`row`, `col`) of a map reduced by
    `factor`: the `limit` largest as (query, query token, key, key token, weight)."""
    matrix = float32(pattern)
    q0, k0 = row * factor, col * factor
    block = matrix[q0 : q0 + factor, k0 : k0 + factor]
    if block.size == 0:
        return []
    flat = np.argsort(-np.nan_to_num(block, nan=-1.0), axis=None)[:limit]
    entries = []
    for index in flat:
        dq, dk = divmod(int(index), block.shape[1])
        q, k = q0 + dq, k0 + dk
        entries.append((q, tokens[q], k, tokens[k], float(matrix[q, k])))
    return entries


def head_grid(
    pattern: object,
    *,
    layer_index: Sequence[int] | None = None,
    head_index: Sequence[int] | None = None,
    thumb: int = 40,
    selected: tuple[int, int] | None = None,
    hover: Sequence[Sequence[str]] | None = None,
    title: str = "",
    cell_px: int | None = None,
    tokens: Sequence[str] | None = None,
) -> go.Figure:
    """All heads of one prompt as a layer × head grid of thumbnails (rows are
    layers), each reduced by block max to at most `thumb` cells per side and
    scaled to its own maximum so that every pattern is visible.

    Hovering a cell names its head, query and key (with `tokens`, their text)
    and the weight (the block max when reduced; `customdata` holds the weights,
    `z` the weights over the head's max). The axes are categories named
    "layer L · query Q tok" (rows) and "head H · key K tok" (columns), so a
    click's x and y name the head (`grid_head`). An invisible marker at each
    thumbnail's centre keeps `customdata = [layer, head]` (model indices) and
    the head's text (`hover[l][h]`), without hover of its own. `selected`
    (model indices) outlines one head. `cell_px`: the height of one thumbnail
    row in pixels (default: sized for a 1300 px wide page).
    """
    maps = float32(pattern)
    if maps.ndim != 4 or maps.shape[-1] != maps.shape[-2]:
        raise InputError(f"head_grid needs [layer, head, query, key], got {maps.shape}")
    n_layers, n_heads, n = maps.shape[:3]
    layers = list(layer_index) if layer_index is not None else list(range(n_layers))
    heads = list(head_index) if head_index is not None else list(range(n_heads))
    factor = reduction_factor(n, thumb)
    size = math.ceil(n / factor)
    gap = max(1, round(size * 0.12))
    pitch = size + gap
    canvas = np.full((n_layers * pitch - gap, n_heads * pitch - gap), np.nan, dtype=np.float32)
    normalised = canvas.copy()
    for li in range(n_layers):
        for hi in range(n_heads):
            small = block_max(maps[li, hi], factor)
            peak = np.nanmax(small) if np.isfinite(small).any() else 0.0
            rows, cols = slice(li * pitch, li * pitch + size), slice(hi * pitch, hi * pitch + size)
            canvas[rows, cols] = small
            normalised[rows, cols] = small / peak if peak > 0 else small
    if tokens is not None and len(tokens) != n:
        raise InputError(f"head_grid got {len(tokens)} tokens for maps of {n}")
    x_names = _grid_names("head", heads, "key", tokens, n, factor, size, gap)
    y_names = _grid_names("layer", layers, "query", tokens, n, factor, size, gap)
    middle = size // 2
    xs, ys, custom, texts = [], [], [], []
    for li, layer in enumerate(layers):
        for hi, head in enumerate(heads):
            xs.append(x_names[hi * pitch + middle])
            ys.append(y_names[li * pitch + middle])
            custom.append((layer, head))
            extra = f"<br>{plotly_text(hover[li][hi])}" if hover is not None else ""
            texts.append(f"layer {layer}, head {head}{extra}<br>click to open")
    row_px = cell_px if cell_px is not None else int(min(150, 1250 / n_heads))
    figure = base_figure(title, height=max(220, n_layers * row_px + 70))
    what = "weight" if factor == 1 else "block max"
    figure.add_trace(
        go.Heatmap(
            z=normalised,
            x=x_names,
            y=y_names,
            customdata=canvas,
            zmin=0.0,
            zmax=1.0,
            colorscale=SEQUENTIAL,
            hoverongaps=False,
            hovertemplate=f"%{{y}}<br>%{{x}}<br>{what} %{{customdata:.4f}} "
            "(%{z:.0%} of the head's max)<br>click to open the head<extra></extra>",
            showscale=True,
            colorbar={"title": {"text": "weight / head max", "side": "right"}, "thickness": 10},
        )
    )
    figure.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            marker={"size": 6, "opacity": 0.0},
            # A plain list on purpose: dash's clickData copies customdata[pointNumber]
            # from the figure as sent, which a base64 typed array does not support.
            customdata=[list(pair) for pair in custom],
            hovertext=texts,
            hoverinfo="skip",  # the cells answer hover and clicks
            showlegend=False,
        )
    )
    category = {
        "type": "category",
        "categoryorder": "array",
        "tickmode": "array",
        "showgrid": False,
        "zeroline": False,
        "constrain": "domain",
    }
    figure.update_layout(
        hovermode="closest",
        hoverdistance=-1,
        plot_bgcolor="#e9e9ee",
        xaxis={
            **category,
            "categoryarray": x_names,
            "tickvals": [x_names[hi * pitch + middle] for hi in range(n_heads)],
            "ticktext": [f"H{h}" for h in heads],
            "side": "top",
            "range": [-0.5, len(x_names) - 0.5],
        },
        yaxis={
            **category,
            "categoryarray": y_names,
            "tickvals": [y_names[li * pitch + middle] for li in range(n_layers)],
            "ticktext": [f"L{layer}" for layer in layers],
            "range": [len(y_names) - 0.5, -0.5],
            "scaleanchor": "x",
        },
        margin={"l": 50, "r": 20, "t": 60 if title else 36, "b": 10},
        meta={"factor": factor, "size": size, "pitch": pitch},
    )
    if selected is not None and selected[0] in layers and selected[1] in heads:
        li, hi = layers.index(selected[0]), heads.index(selected[1])
        figure.add_shape(
            type="rect",
            x0=hi * pitch - 0.5 - gap / 2,
            x1=hi * pitch + size - 0.5 + gap / 2,
            y0=li * pitch - 0.5 - gap / 2,
            y1=li * pitch + size - 0.5 + gap / 2,
            line={"color": HIGHLIGHT_COLOR, "width": 2},
        )
    return figure


def _grid_names(
    outer: str,
    indices: Sequence[int],
    role: str,
    tokens: Sequence[str] | None,
    n: int,
    factor: int,
    size: int,
    gap: int,
) -> list[str]:
    """Category names of a head grid axis: one per cell ("head 3 · key 5 cat",
    "layer 1 · queries 8–11"), and unique names for the gaps between thumbnails."""
    names: list[str] = []
    for i, index in enumerate(indices):
        if i:
            names.extend(f"gap {i}.{j}" for j in range(gap))
        for b in range(size):
            start = b * factor
            if factor == 1:
                cell = f"{role} {start}" + (
                    "" if tokens is None else f" {token_label(tokens[start])}"
                )
            else:
                cell = f"{_PLURAL[role]} {start}–{min(start + factor, n) - 1}"
            names.append(f"{outer} {index} · {cell}")
    return names


_PLURAL = {"query": "queries", "key": "keys"}
_GRID_NAME = re.compile(r"^(layer|head) (\d+) · ")


def grid_head(x: object, y: object) -> tuple[int, int] | None:
    """(layer, head) named by a head-grid cell's x and y categories (from a click),
    or None when they are not the grid's names."""
    found = {}
    for value in (x, y):
        match = _GRID_NAME.match(value) if isinstance(value, str) else None
        if match is None:
            return None
        found[match.group(1)] = int(match.group(2))
    if set(found) != {"layer", "head"}:
        return None
    return found["layer"], found["head"]
