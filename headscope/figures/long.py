"""Long-context figures: per head × position strips, head × distance
histograms, sinks over position, and a map browsed tile by tile.

Thousands of positions do not fit a screen: strips and curves are reduced on
the server in blocks of `factor` positions (block mean or block max, both
named in the title, `layout.meta` records them). The map figure holds two
heatmaps on one colour axis: the overview (a coarse pyramid level of the whole
map) and a detail trace that a zoom fills with a finer level of the visible
window (`map_detail`), so the browser never receives a full-resolution map.
"""

from __future__ import annotations

import base64
import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.figures.arrays import float32, reduction_factor
from headscope.figures.style import (
    COLORS,
    LOG_AXIS,
    SEQUENTIAL,
    STATISTIC,
    TEMPLATE,
    plotly_text,
    token_label,
)

REDUCTIONS = ("mean", "max")
#: Columns a strip is reduced to at most (a 1400 px page shows about this many).
STRIP_COLUMNS = 1024
#: Points a curve over position is reduced to at most.
CURVE_POINTS = 1024
#: The map's colour scale tops out at this quantile of its positive cells: a
#: long prompt's weights are mostly tiny, and a few near 1 (the first queries,
#: which see few keys) would otherwise leave everything else white.
COLOUR_QUANTILE = 0.995


def block_reduce(values: object, factor: int, reduce: str = "mean") -> np.ndarray:
    """Reduce the last axis of `values` in blocks of `factor` (the last block may
    be partial) by `reduce` ("mean" or "max"), ignoring NaN unless a whole block
    is NaN."""
    if reduce not in REDUCTIONS:
        raise InputError(f"reduce must be 'mean' or 'max', got {reduce!r:.40}")
    array = float32(values)
    if factor <= 1:
        return array
    n = array.shape[-1]
    blocks = math.ceil(n / factor)
    padded = np.full((*array.shape[:-1], blocks * factor), np.nan, dtype=np.float32)
    padded[..., :n] = array
    shaped = padded.reshape(*array.shape[:-1], blocks, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        out = np.nanmean(shaped, axis=-1) if reduce == "mean" else np.nanmax(shaped, axis=-1)
    return out.astype(np.float32)


def _reduced_note(factor: int, reduce: str, unit: str = "positions") -> str:
    return "" if factor == 1 else f" · block {reduce} over {factor} {unit}"


def head_labels(layers: Sequence[int], heads: Sequence[int]) -> list[str]:
    """`L{layer}.H{head}` for every head, layer-major (the strips' row order)."""
    return [f"L{layer}.H{head}" for layer in layers for head in heads]


def position_strip(
    values: object,
    labels: Sequence[str],
    *,
    title: str,
    colorbar_title: str,
    reduce: str = "mean",
    max_columns: int = STRIP_COLUMNS,
    colorscale: object = STATISTIC,
    zmin: float | None = None,
    zmax: float | None = None,
    selected: int | None = None,
) -> go.Figure:
    """A `[head, position]` statistic as a heatmap, one row per head (`labels`),
    positions across, reduced to at most `max_columns` columns by block
    `reduce` (the title says by how much; `layout.meta = {"factor", "reduce",
    "n"}`). `selected` outlines one row."""
    grid = float32(values)
    if grid.ndim != 2 or grid.shape[0] != len(labels):
        raise InputError(
            f"position_strip needs [head, position] with {len(labels)} rows, got {grid.shape}"
        )
    n = grid.shape[1]
    factor = reduction_factor(n, max_columns)
    shown = block_reduce(grid, factor, reduce)
    hover = (
        "%{y}<br>position %{x:.0f}<br>%{z:.4g}<extra></extra>"
        if factor == 1
        else f"%{{y}}<br>positions around %{{x:.0f}} (block of {factor})<br>"
        f"block {reduce} %{{z:.4g}}<extra></extra>"
    )
    rows = len(labels)
    figure = go.Figure(
        data=[
            go.Heatmap(
                z=shown,
                x0=(factor - 1) / 2,
                dx=factor,
                y=list(labels),
                zmin=zmin,
                zmax=zmax,
                colorscale=colorscale,
                colorbar={"title": {"text": plotly_text(colorbar_title)}, "thickness": 10},
                hovertemplate=hover,
            )
        ],
        layout={
            "template": TEMPLATE,
            "title": {"text": plotly_text(title + _reduced_note(factor, reduce))},
            "height": max(200, 90 + 14 * rows),
            "xaxis": {"title": {"text": "position"}, "showgrid": False, "range": [-0.5, n - 0.5]},
            "yaxis": {"autorange": "reversed", "showgrid": False, "type": "category"},
            "margin": {"l": 70, "r": 20, "t": 40, "b": 44},
            "meta": {"factor": factor, "reduce": reduce, "n": n},
        },
    )
    if selected is not None and 0 <= selected < rows:
        figure.add_shape(
            type="rect",
            xref="paper",
            yref="y",
            x0=0,
            x1=1,
            y0=selected - 0.5,
            y1=selected + 0.5,
            line={"color": "#d62728", "width": 1.5},
        )
    return figure


def distance_bin_labels(edges: Sequence[int]) -> list[str]:
    """`0`, `1`, `2–3`, `4–7`, ...: the distances each bin holds."""
    labels = []
    for lo, hi in itertools.pairwise(edges):
        labels.append(str(lo) if hi - lo == 1 else f"{lo}–{hi - 1}")
    return labels


def distance_histograms(
    histogram: object,
    edges: Sequence[int],
    labels: Sequence[str],
    *,
    title: str = "Attention mass by distance",
) -> go.Figure:
    """Head × distance-bin heatmap of each head's attention mass by |query − key|
    (log bins `edges`), as the fraction of that head's total mass."""
    grid = float32(histogram)
    if grid.ndim != 2 or grid.shape != (len(labels), len(edges) - 1):
        raise InputError(
            f"distance_histograms needs [head, bin] = [{len(labels)}, {len(edges) - 1}], "
            f"got {grid.shape}"
        )
    total = grid.sum(axis=1, keepdims=True)
    fraction = np.divide(grid, total, out=np.zeros_like(grid), where=total > 0)
    figure = go.Figure(
        data=[
            go.Heatmap(
                z=fraction,
                x=distance_bin_labels(edges),
                y=list(labels),
                zmin=0.0,
                zmax=1.0,
                colorscale=SEQUENTIAL,
                colorbar={"title": {"text": "fraction"}, "thickness": 10},
                hovertemplate="%{y}<br>distance %{x}<br>%{z:.3f} of the mass<extra></extra>",
                xgap=1,
                ygap=1,
            )
        ],
        layout={
            "template": TEMPLATE,
            "title": {"text": plotly_text(title + " (fraction of each head's mass)")},
            "height": max(200, 90 + 14 * len(labels)),
            "xaxis": {"title": {"text": "distance |query − key| (log bins)"}, "type": "category"},
            "yaxis": {"autorange": "reversed", "type": "category"},
            "margin": {"l": 70, "r": 20, "t": 40, "b": 50},
        },
    )
    return figure


def sinks_over_position(
    alpha: object,
    sink_mass: object,
    tokens: Sequence[str],
    *,
    head: str,
    sink_keys: int = 1,
    max_points: int = CURVE_POINTS,
) -> go.Figure:
    """One head's sinks along the prompt: α_k (key mass / the queries that see
    key k: the mean attention key k receives) per key position, reduced by
    block max so that a sink key stays visible, and each query's sink mass
    (attention on the first `sink_keys` keys), reduced by block mean. Log y."""
    a, s = float32(alpha), float32(sink_mass)
    if a.ndim != 1 or s.shape != a.shape or len(tokens) != a.shape[0]:
        raise InputError(
            f"sinks_over_position needs α and sink mass of {len(tokens)} positions, "
            f"got {a.shape} and {s.shape}"
        )
    n = a.shape[0]
    factor = reduction_factor(n, max_points)
    a_shown, s_shown = block_reduce(a, factor, "max"), block_reduce(s, factor, "mean")
    starts = np.arange(0, n, factor)
    x = (starts + (np.minimum(starts + factor, n) - 1)) / 2
    first = [token_label(tokens[i]) for i in starts]
    where = "position %{x:.0f} %{customdata}" if factor == 1 else "positions around %{x:.0f}"
    figure = go.Figure(
        data=[
            go.Scatter(
                x=float32(x),
                y=a_shown,
                name="α_k: mean attention to key k" + ("" if factor == 1 else " (block max)"),
                mode="lines",
                line={"color": COLORS[0], "width": 1.4},
                customdata=first,
                hovertemplate=f"{where}<br>α %{{y:.4g}}<extra></extra>",
            ),
            go.Scatter(
                x=float32(x),
                y=s_shown,
                name=f"sink mass of query q (keys < {sink_keys})"
                + ("" if factor == 1 else " (block mean)"),
                mode="lines",
                line={"color": COLORS[1], "width": 1.2},
                customdata=first,
                hovertemplate=f"{where}<br>sink mass %{{y:.4g}}<extra></extra>",
            ),
        ],
        layout={
            "template": TEMPLATE,
            "title": {
                "text": plotly_text(f"Sinks over position, head {head}")
                + plotly_text(_reduced_note(factor, "max / mean"))
            },
            "height": 330,
            "xaxis": {"title": {"text": "position"}, "range": [-0.5, n - 0.5]},
            "yaxis": {"title": {"text": "attention"}, **LOG_AXIS},
            # the legend at the bottom of the figure, clear of the axis title
            "legend": {
                "orientation": "h",
                "yref": "container",
                "y": 0,
                "yanchor": "bottom",
                "x": 0,
            },
            "margin": {"l": 60, "r": 20, "t": 40, "b": 100},
            "meta": {"factor": factor, "n": n},
        },
    )
    return figure


def colour_cap(*arrays: object, quantile: float = COLOUR_QUANTILE) -> float:
    """The top of the map's colour scale: `quantile` of the positive finite cells
    of `arrays` (1.0 when there are none)."""
    values = [a[np.isfinite(a) & (a > 0)] for a in (float32(x) for x in arrays)]
    cells = np.concatenate([v.ravel() for v in values]) if values else np.empty(0)
    if not cells.size:
        return 1.0
    return float(np.quantile(cells, quantile))


def typed_array(values: object) -> dict[str, str]:
    """`values` as plotly's typed-array JSON (`{"dtype": "f4", "bdata": base64,
    "shape": "r, c"}`), the form a figure's numpy arrays take on the wire: for
    data sent outside a Figure (a dash Patch), which would otherwise go as a
    nested list of numbers, several times larger and slower to parse."""
    array = float32(values)
    return {
        "dtype": "f4",
        "bdata": base64.b64encode(array.tobytes()).decode("ascii"),
        "shape": ", ".join(str(size) for size in array.shape),
    }


def _cell_axis(start_cell: int, factor: int) -> dict:
    """x0/dx (or y0/dy) that put cell c of a level at token position c·factor +
    (factor − 1)/2, the centre of the tokens it covers."""
    return {"start": start_cell * factor + (factor - 1) / 2, "step": factor}


def tiled_map(
    overview: object,
    *,
    n_tokens: int,
    factor: int,
    reduce: str,
    head: str,
    zmax: float | None = None,
    height: int = 640,
    revision: str | None = None,
) -> go.Figure:
    """A map browsed tile by tile: `overview` is a whole pyramid level (block
    `reduce` over `factor` × `factor` tokens) drawn in token coordinates
    (queries down, keys across); trace 1, empty and hidden here, is where
    `map_detail` puts a finer level of the visible window on zoom. Both share
    one colour axis from 0 to `zmax` (default: `colour_cap` of the overview,
    its 99.5th percentile; larger weights saturate).
    `revision`: plotly's uirevision (a new one resets the zoom)."""
    grid = float32(overview)
    if grid.ndim != 2:
        raise InputError(f"tiled_map needs a 2-D overview, got shape {grid.shape}")
    top = colour_cap(grid) if zmax is None else zmax
    axis = _cell_axis(0, factor)
    how = "weight" if factor == 1 else f"block {reduce}"
    hover = "query %{y:.0f}<br>key %{x:.0f}<br>" + how + " %{z:.4g}<extra>overview</extra>"
    figure = go.Figure(
        data=[
            go.Heatmap(
                z=grid,
                x0=axis["start"],
                dx=axis["step"],
                y0=axis["start"],
                dy=axis["step"],
                coloraxis="coloraxis",
                hovertemplate=hover,
                name="overview",
            ),
            go.Heatmap(
                z=np.full((1, 1), np.nan, dtype=np.float32),
                coloraxis="coloraxis",
                visible=False,
                name="detail",
            ),
        ],
        layout={
            "template": TEMPLATE,
            "title": {"text": map_title(n_tokens, head, factor, reduce)},
            "height": height,
            "coloraxis": {
                "colorscale": SEQUENTIAL,
                "cmin": 0.0,
                "cmax": top if top and top > 0 else 1.0,
                "colorbar": {
                    "title": {"text": f"{how}<br>(top: p{COLOUR_QUANTILE * 100:g})"},
                    "thickness": 12,
                },
            },
            "xaxis": {
                "title": {"text": "key position"},
                "range": [-0.5, n_tokens - 0.5],
                "showgrid": False,
                "zeroline": False,
                "constrain": "domain",
            },
            "yaxis": {
                "title": {"text": "query position"},
                "range": [n_tokens - 0.5, -0.5],
                "showgrid": False,
                "zeroline": False,
                "scaleanchor": "x",
                "constrain": "domain",
            },
            "uirevision": revision,
            "meta": {"n": n_tokens, "factor": factor, "reduce": reduce, "head": head},
            "margin": {"l": 70, "r": 20, "t": 44, "b": 50},
        },
    )
    return figure


def map_title(n_tokens: int, head: str, factor: int, reduce: str) -> str:
    """The map's title (plotly-escaped): the head, the length, the overview's reduction."""
    note = "" if factor == 1 else f" · overview: block {reduce} over {factor}×{factor} tokens"
    return plotly_text(f"Head {head} · {n_tokens} tokens{note}")


def map_detail(
    detail: object, *, row0: int, col0: int, factor: int, reduce: str
) -> dict[str, object]:
    """The properties of the map figure's detail trace (trace 1) for `detail`,
    cells of a pyramid level (`factor` tokens a side) from cell (`row0`, `col0`):
    assign them to `figure.data[1]` (or a dash Patch of it)."""
    grid = float32(detail)
    if grid.ndim != 2:
        raise InputError(f"map_detail needs a 2-D array, got shape {grid.shape}")
    rows, cols = _cell_axis(row0, factor), _cell_axis(col0, factor)
    how = "weight" if factor == 1 else f"block {reduce} over {factor}×{factor}"
    return {
        "z": grid,
        "x0": cols["start"],
        "dx": cols["step"],
        "y0": rows["start"],
        "dy": rows["step"],
        "visible": True,
        "hovertemplate": "query %{y:.0f}<br>key %{x:.0f}<br>"
        + how
        + " %{z:.4g}<extra>detail</extra>",
    }


def detail_note(factor: int, reduce: str, rows: tuple[int, int], cols: tuple[int, int]) -> str:
    """The map title's detail part: what the detail trace shows (plotly-escaped)."""
    what = "exact weights" if factor == 1 else f"block {reduce} over {factor}×{factor} tokens"
    return plotly_text(
        f" · detail: {what}, queries {rows[0]}–{rows[1] - 1}, keys {cols[0]}–{cols[1] - 1}"
    )
