"""Figures for vision transformers (docs/methods.md §7): a patch map (rollout,
flow, relevance) overlaid on the image, the classic ViT rollout figure;
per-head mean attention distance by layer (Dosovitskiy et al. 2021, Fig. 7);
and one head's attention by relative patch offset.

Images come in as arrays `[height, width]` or `[height, width, channel]` with
values in [0, 1] (what the model saw: resized, before normalisation); patch
maps as `[rows, columns]`. The pruning curve of a vision model is drawn by
`figures.heads.pruning_curve`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from headscope.analyses.vision import AttentionDistance, OffsetAttention
from headscope.errors import InputError
from headscope.figures.arrays import float32, int32
from headscope.figures.style import BASELINE_COLOR, COLORS, base_figure, plotly_text

#: Heat-map colours over the image: transparent at 0 (the image shows through),
#: then red to yellow and more opaque as the value grows.
OVERLAY_SCALE = [
    [0.0, "rgba(0, 0, 0, 0)"],
    [0.15, "rgba(120, 0, 90, 0.25)"],
    [0.45, "rgba(220, 30, 40, 0.55)"],
    [0.75, "rgba(255, 140, 0, 0.75)"],
    [1.0, "rgba(255, 240, 60, 0.9)"],
]


def _rgb(image: object) -> np.ndarray:
    """`[H, W]` / `[H, W, 1|3|4]` floats in [0, 1] -> uint8 `[H, W, 3]`."""
    array = float32(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InputError(f"image must be [height, width(, channel)], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("image holds NaN or infinite values")
    array = array[..., :3] if array.shape[-1] == 4 else array
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _patch_size(image: np.ndarray, grid: tuple[int, int]) -> tuple[float, float]:
    rows, cols = grid
    return image.shape[0] / rows, image.shape[1] / cols


def _add_overlay(
    figure: go.Figure,
    image: np.ndarray,
    patch_map: np.ndarray,
    *,
    opacity: float,
    colorbar_title: str,
    zmax: float | None,
    row: int | None = None,
    col: int | None = None,
    show_scale: bool = True,
) -> None:
    where = {} if row is None else {"row": row, "col": col}
    height, width = _patch_size(image, patch_map.shape)
    figure.add_trace(go.Image(z=image, hoverinfo="skip"), **where)
    figure.add_trace(
        go.Heatmap(
            z=patch_map,
            x0=(width - 1) / 2,
            dx=width,
            y0=(height - 1) / 2,
            dy=height,
            zmin=0.0,
            zmax=zmax if zmax is not None else float(np.nanmax(patch_map)) or 1.0,
            colorscale=OVERLAY_SCALE,
            opacity=opacity,
            showscale=show_scale,
            colorbar={
                "title": {"text": plotly_text(colorbar_title), "side": "right"},
                "thickness": 10,
            },
            hovertemplate="patch (%{customdata[0]},%{customdata[1]})<br>"
            + plotly_text(colorbar_title)
            + " %{z:.4f}<extra></extra>",
            customdata=np.stack(
                np.meshgrid(
                    np.arange(patch_map.shape[0]), np.arange(patch_map.shape[1]), indexing="ij"
                ),
                -1,
            ).astype(np.int32),
        ),
        **where,
    )


def image_overlay(
    image: object,
    patch_map: object,
    *,
    title: str = "",
    what: str = "rollout from [CLS]",
    opacity: float = 1.0,
    height: int = 380,
) -> go.Figure:
    """The image with a `[rows, columns]` patch map laid over it (each patch's
    cell covers its pixels); `what` names the map in the colour bar and hover
    (e.g. "relevance share, class 3"). The colour scale is transparent at 0 and
    more opaque towards the maximum (`opacity` scales it all). The image's
    height and width must be multiples of the grid's. Memory: one uint8 RGB
    copy of the image."""
    rgb = _rgb(image)
    values = float32(patch_map)
    if values.ndim != 2:
        raise InputError(f"patch_map must be [rows, columns], got shape {values.shape}")
    if rgb.shape[0] % values.shape[0] or rgb.shape[1] % values.shape[1]:
        raise InputError(
            f"the image ({rgb.shape[0]}×{rgb.shape[1]} pixels) does not divide into the "
            f"{values.shape[0]}×{values.shape[1]} patch grid"
        )
    figure = base_figure(title, height=height)
    _add_overlay(figure, rgb, values, opacity=opacity, colorbar_title=what, zmax=None)
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, scaleanchor="x", autorange="reversed")
    figure.update_layout(margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return figure


def head_overlays(
    image: object,
    maps: object,
    *,
    title: str = "",
    what: str = "attention from [CLS]",
    layer_index: list[int] | None = None,
    head_index: list[int] | None = None,
    opacity: float = 1.0,
) -> go.Figure:
    """A grid of overlays, one per head: `maps` `[layer, head, rows, columns]`
    (e.g. each head's attention from [CLS] to the patches), rows of the grid are
    layers, columns heads, on one colour scale shared by all cells."""
    rgb = _rgb(image)
    values = float32(maps)
    if values.ndim != 4:
        raise InputError(f"maps must be [layer, head, rows, columns], got shape {values.shape}")
    n_layers, n_heads = values.shape[:2]
    layers = layer_index or list(range(n_layers))
    heads = head_index or list(range(n_heads))
    figure = make_subplots(
        rows=n_layers,
        cols=n_heads,
        subplot_titles=[f"L{layer} H{head}" for layer in layers for head in heads],
        horizontal_spacing=0.01,
        vertical_spacing=0.04,
    )
    top = float(np.nanmax(values)) or 1.0
    for i in range(n_layers):
        for j in range(n_heads):
            _add_overlay(
                figure,
                rgb,
                values[i, j],
                opacity=opacity,
                colorbar_title=what,
                zmax=top,
                row=i + 1,
                col=j + 1,
                show_scale=i == 0 and j == 0,
            )
    figure.update_layout(
        template=base_figure().layout.template,
        title={"text": plotly_text(title)},
        height=max(260, 150 * n_layers + 60),
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, autorange="reversed")
    for i in range(n_layers * n_heads):
        suffix = "" if i == 0 else str(i + 1)
        figure.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    return figure


def attention_distance_figure(
    distance: AttentionDistance,
    *,
    layer_index: list[int] | None = None,
    title: str = "Mean attention distance per head",
    n_images: int | None = None,
) -> go.Figure:
    """Mean attention distance (pixels) of every head against its layer, one dot
    per head (Dosovitskiy et al. 2021, Fig. 7), with the uniform-attention
    baseline as a dashed line. `distance.distance` is `[layer, head]` (or
    `[image, layer, head]`, averaged over images here). Hover: the head, its
    distance and its mass on prefix tokens; the support (patch queries per
    map, and `n_images`) is in the axis title."""
    values = float32(distance.distance)
    prefix = float32(distance.prefix_mass)
    if values.ndim == 3:
        values, prefix = values.mean(0), prefix.mean(0)
    if values.ndim != 2:
        raise InputError(f"distance must be [layer, head], got shape {values.shape}")
    n_layers, n_heads = values.shape
    layers = layer_index or list(range(n_layers))
    figure = base_figure(title, height=360)
    for h in range(n_heads):
        jitter = (h - (n_heads - 1) / 2) * 0.06
        figure.add_trace(
            go.Scatter(
                x=np.asarray(layers, dtype=np.float32) + jitter,
                y=values[:, h],
                mode="markers",
                name=f"head {h}",
                marker={"size": 9, "color": COLORS[h % len(COLORS)]},
                customdata=float32(np.stack([np.asarray(layers), prefix[:, h]], -1)),
                hovertemplate=f"layer %{{customdata[0]}}, head {h}<br>"
                "mean distance %{y:.2f} px<br>"
                "mass on [CLS] %{customdata[1]:.3f}<extra></extra>",
            )
        )
    figure.add_hline(
        y=distance.uniform,
        line={"color": BASELINE_COLOR, "dash": "dash", "width": 1},
        annotation_text=f"uniform attention: {distance.uniform:.2f} px",
        annotation_position="top left",
    )
    support = f"{distance.n_queries} patch queries per head"
    if n_images is not None:
        support += f", {n_images} image(s)"
    figure.update_layout(
        xaxis={"title": {"text": "layer"}, "tickmode": "array", "tickvals": layers},
        yaxis={
            "title": {
                "text": "mean attention distance (px)"
                + (", over patches" if distance.renormalized else "")
                + f"<br><sup>{support}</sup>"
            },
            "rangemode": "tozero",
        },
        legend={"orientation": "h", "y": -0.2, "yanchor": "top", "x": 0, "xanchor": "left"},
        margin={"b": 80},
    )
    return figure


def offset_figure(
    offsets: OffsetAttention,
    *,
    layer: int | None = None,
    head: int | None = None,
    relative: bool = False,
    title: str | None = None,
) -> go.Figure:
    """One head's attention by relative patch offset: a `[dy, dx]` heat map with
    (0, 0) (the query's own patch) in the centre, rows growing downwards.
    `offsets.mass` must be `[dy, dx]` for one head (index it first). With
    `relative=True` the colour is mass ÷ the uniform-attention mass (1 = no
    preference); hover always gives the mass, the uniform baseline and the
    support (queries with a patch at that offset)."""
    mass = float32(offsets.mass)
    if mass.ndim != 2:
        raise InputError(f"offset mass must be [dy, dx] for one head, got shape {mass.shape}")
    rows, cols = offsets.grid
    uniform = float32(offsets.uniform)
    support = float32(offsets.support)
    if relative:
        shown = float32(np.where(uniform > 0, mass / np.where(uniform > 0, uniform, 1.0), np.nan))
    else:
        shown = mass
    label = "mass ÷ uniform" if relative else "attention mass"
    name = f"layer {layer}, head {head}: " if layer is not None else ""
    figure = base_figure(title or f"{name}attention by relative patch offset", height=380)
    figure.add_trace(
        go.Heatmap(
            z=shown,
            x=int32(np.arange(-(cols - 1), cols)),
            y=int32(np.arange(-(rows - 1), rows)),
            colorscale="Viridis",
            zmin=0.0,
            customdata=np.stack([mass, uniform, support], -1),
            colorbar={"title": {"text": label, "side": "right"}, "thickness": 10},
            hovertemplate="offset dy %{y}, dx %{x}<br>mass %{customdata[0]:.4f}"
            "<br>uniform %{customdata[1]:.4f}<br>queries %{customdata[2]:.0f}<extra></extra>",
        )
    )
    figure.update_layout(
        xaxis={"title": {"text": "dx (patches, right +)"}, "constrain": "domain"},
        yaxis={
            "title": {"text": "dy (patches, down +)"},
            "autorange": "reversed",
            "scaleanchor": "x",
        },
    )
    return figure


def overlay_panels(image: object, maps: Mapping[str, object], *, title: str = "") -> go.Figure:
    """Side-by-side overlays of several `[rows, columns]` maps on one image
    (e.g. rollout, flow and relevance), each on its own colour scale."""
    rgb = _rgb(image)
    names = list(maps)
    if not names:
        raise InputError("no maps to draw")
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=[plotly_text(n) for n in names])
    for j, name in enumerate(names):
        values = float32(maps[name])
        _add_overlay(
            figure,
            rgb,
            values,
            opacity=1.0,
            colorbar_title=name,
            zmax=None,
            row=1,
            col=j + 1,
            show_scale=False,
        )
    figure.update_layout(
        template=base_figure().layout.template,
        title={"text": plotly_text(title)},
        height=340,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, autorange="reversed")
    for i in range(len(names)):
        suffix = "" if i == 0 else str(i + 1)
        figure.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    return figure
