"""Spectral figures: singular-value spectra of per-head QK / OV circuits, a
Marchenko–Pastur fit, and a head-to-head composition matrix with its random
baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.figures.arrays import float32, int32
from headscope.figures.style import (
    BASELINE_COLOR,
    COLORS,
    HIGHLIGHT_COLOR,
    LOG_AXIS,
    SEQUENTIAL,
    base_figure,
    plotly_text,
)


def singular_spectra(
    spectra: Mapping[str, object],
    *,
    highlight: Sequence[str] = (),
    title: str = "Singular values",
    normalize: bool = False,
    log_y: bool = True,
) -> go.Figure:
    """Singular values (descending) of several matrices, one line each:
    `spectra[name]` is a vector. Names in `highlight` are drawn bold and in
    colour, the others thin and grey. `normalize` divides each by its largest."""
    figure = base_figure(title, height=340)
    highlighted = list(highlight)
    order = [name for name in spectra if name not in highlighted] + [
        name for name in highlighted if name in spectra
    ]
    for name in order:
        values = np.sort(float32(spectra[name]).ravel())[::-1]
        if normalize and values.size and values[0] > 0:
            values = values / values[0]
        bold = name in highlighted
        color = COLORS[highlighted.index(name) % len(COLORS)] if bold else "#c4c4c4"
        figure.add_trace(
            go.Scatter(
                x=int32(range(1, values.size + 1)),
                y=values.astype(np.float32),
                mode="lines+markers" if bold else "lines",
                name=plotly_text(name),
                line={"color": color, "width": 2.5 if bold else 1},
                marker={"size": 4},
                showlegend=bold,
                hovertemplate="σ_%{x} = %{y:.4g}<extra>" + plotly_text(name) + "</extra>",
            )
        )
    figure.update_layout(
        xaxis={"title": {"text": "index"}},
        yaxis={
            "title": {"text": "σ / σ₁" if normalize else "σ"},
            **(LOG_AXIS if log_y else {"type": "linear"}),
        },
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return figure


def marchenko_pastur_density(x: np.ndarray, sigma2: float, ratio: float) -> np.ndarray:
    """Marchenko–Pastur density of the eigenvalues of (1/N)·WᵀW for an N × M
    matrix of i.i.d. entries with variance σ², `ratio` = M/N ≤ 1 (the mass at 0
    for ratio > 1 is left out)."""
    lower = sigma2 * (1 - np.sqrt(ratio)) ** 2
    upper = sigma2 * (1 + np.sqrt(ratio)) ** 2
    x = np.asarray(x, dtype=np.float64)
    inside = (x > lower) & (x < upper)
    density = np.zeros_like(x)
    density[inside] = np.sqrt((upper - x[inside]) * (x[inside] - lower)) / (
        2 * np.pi * sigma2 * ratio * x[inside]
    )
    return density


def marchenko_pastur(
    eigenvalues: object,
    *,
    sigma2: float,
    ratio: float,
    outlier_threshold: float | None = None,
    title: str = "Marchenko–Pastur fit",
) -> go.Figure:
    """Histogram of `eigenvalues` (density) with the fitted MP law (σ², ratio
    M/N) and its bulk edges; eigenvalues above `outlier_threshold` (default:
    the upper edge) are counted as outliers in the legend."""
    values = float32(eigenvalues).ravel()
    lower = sigma2 * (1 - np.sqrt(min(ratio, 1.0))) ** 2
    upper = sigma2 * (1 + np.sqrt(min(ratio, 1.0))) ** 2
    threshold = upper if outlier_threshold is None else outlier_threshold
    outliers = int((values > threshold).sum())
    figure = base_figure(title, height=340)
    # Bins sized for the bulk, so that far outliers do not squash it into one bar,
    # and few enough that a few dozen eigenvalues still make a readable histogram.
    bins = int(min(30, max(6, values.size // 4)))
    figure.add_trace(
        go.Histogram(
            x=values,
            histnorm="probability density",
            xbins={"start": 0.0, "size": max(threshold, upper, 1e-30) / bins},
            name="eigenvalues",
            marker={"color": COLORS[0], "line": {"width": 0}},
            opacity=0.75,
        )
    )
    top = float(max(values.max() if values.size else upper, upper)) * 1.02
    grid = np.linspace(0.0, top, 400)
    figure.add_trace(
        go.Scatter(
            x=float32(grid),
            y=float32(marchenko_pastur_density(grid, sigma2, min(ratio, 1.0))),
            mode="lines",
            name=f"MP law (σ² = {sigma2:.3g}, M/N = {ratio:.3g})",
            line={"color": HIGHLIGHT_COLOR, "width": 2},
        )
    )
    if outliers:
        figure.add_trace(
            go.Scatter(
                x=values[values > threshold],
                y=np.zeros(outliers, dtype=np.float32),
                mode="markers",
                name=f"{outliers} outliers",
                marker={"symbol": "triangle-up", "size": 10, "color": HIGHLIGHT_COLOR},
                hovertemplate="λ = %{x:.4g}<extra>outlier</extra>",
            )
        )
    figure.add_vline(
        x=float(lower),
        line={"color": BASELINE_COLOR, "dash": "dot", "width": 1},
        annotation_text="λ−",
        annotation_position="top left",
    )
    figure.add_vline(
        x=float(threshold),
        line={"color": BASELINE_COLOR, "dash": "dot", "width": 1},
        annotation_text="edge + TW margin" if outlier_threshold is not None else "λ+",
        annotation_position="top right",
    )
    figure.update_layout(
        xaxis={"title": {"text": "eigenvalue of WᵀW / N"}},
        yaxis={"title": {"text": "density"}},
        bargap=0.02,
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return figure


def composition_matrix(
    scores: object,
    labels: Sequence[str],
    *,
    readers: Sequence[str] | None = None,
    baseline: float | None = None,
    kind: str = "K",
    title: str | None = None,
) -> go.Figure:
    """Heatmap of composition scores `[writing head, reading head]`: rows are
    labelled by `labels`, columns by `readers` (default: the same heads). The
    colour scale starts at `baseline` (the random-matrix level, ≈ 1/√d_model)
    so only composition above chance is coloured; NaN cells (a writer not
    below the reader) stay blank."""
    grid = float32(scores)
    columns = list(readers) if readers is not None else list(labels)
    if grid.shape != (len(labels), len(columns)):
        raise InputError(
            f"composition_matrix needs a {len(labels)}×{len(columns)} matrix, got {grid.shape}"
        )
    names = [plotly_text(label) for label in labels]
    column_names = [plotly_text(label) for label in columns]
    text = title or f"{kind}-composition" + (
        f" (random baseline ≈ {baseline:.3f})" if baseline is not None else ""
    )
    figure = base_figure(text, height=max(360, 140 + 14 * len(labels)))
    finite = grid[np.isfinite(grid)]
    figure.add_trace(
        go.Heatmap(
            z=grid,
            x=column_names,
            y=names,
            zmin=float(baseline) if baseline is not None else 0.0,
            zmax=float(finite.max()) if finite.size else 1.0,
            colorscale=SEQUENTIAL,
            colorbar={"title": {"text": "score", "side": "right"}, "thickness": 10},
            hovertemplate="%{y} → %{x}<br>score %{z:.4f}<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    figure.update_layout(
        xaxis={"type": "category", "title": {"text": f"reading head ({kind})"}, "tickangle": -60},
        yaxis={"type": "category", "title": {"text": "writing head (OV)"}, "autorange": "reversed"},
        margin={"l": 80, "r": 10, "t": 50, "b": 80},
    )
    return figure
