"""Patching figures (docs/methods.md §2.5): the fraction of the clean −
corrupted metric gap that patching restores (0: the corrupted run, 1: the
clean run), per head as a layer × head heatmap and per (head, position) as a
head × token heatmap whose columns are the prompt's tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.figures.arrays import float32, int32
from headscope.figures.heads import importance_heatmap
from headscope.figures.style import DIVERGING, base_figure, token_label

#: What every patching number is, said once for colour bars and hovers.
RESTORED = "fraction restored"
#: Token columns labelled one by one up to this many; beyond, every k-th.
MAX_TICKS = 60


def patching_heatmap(
    fractions: object,
    *,
    title: str = "",
    interval: tuple[object, object] | None = None,
    support: str | None = None,
    selected: tuple[int, int] | None = None,
) -> go.Figure:
    """A `[layer, head]` map of patching fractions on a diverging scale centred
    on 0 (the corrupted run; 1 is the clean run). With `interval` (low, high)
    and `support`, hovers give each head's interval and cells whose interval
    includes 0 read "n.s." (`figures.heads.importance_heatmap`)."""
    figure = importance_heatmap(
        fractions,
        title=title,
        colorbar_title=RESTORED,
        signed=True,
        interval=interval,
        support=support,
        selected=selected,
    )
    if not title:
        figure.update_layout(margin={"t": 16})
    if interval is None:
        figure.data[0].update(
            hovertemplate="layer %{y}, head %{x}<br>"
            + RESTORED
            + " %{z:.4f}<br>(0 = the corrupted run, 1 = the clean run)<extra></extra>"
        )
    return figure


def head_name(layer: int, head: int) -> str:
    return f"L{layer} H{head}"


def position_heatmap(
    fractions: object,
    heads: Sequence[tuple[int, int]],
    clean_tokens: Sequence[str],
    corrupted_tokens: Sequence[str],
    *,
    title: str = "",
    height: int | None = None,
) -> go.Figure:
    """A `[head, position]` map of patching fractions: one row per head (in
    `heads`' order, top to bottom), one column per token. Tick labels show the
    clean tokens, those that differ in the corrupted prompt marked with `*`
    and written `clean→corrupted` in the hover, with the exact fraction."""
    grid = float32(fractions)
    n_rows = len(heads)
    if grid.ndim != 2 or grid.shape[0] != n_rows:
        raise InputError(f"position_heatmap needs [head, position] with {n_rows} rows")
    n = grid.shape[1]
    if len(clean_tokens) != n or len(corrupted_tokens) != n:
        raise InputError(
            f"{n} positions but {len(clean_tokens)} clean and {len(corrupted_tokens)} "
            "corrupted tokens"
        )
    changed = [a != b for a, b in zip(clean_tokens, corrupted_tokens, strict=True)]
    names = [head_name(layer, head) for layer, head in heads]
    bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    bound = bound or 1.0
    hover_tokens = np.empty(grid.shape, dtype=object)
    for position in range(n):
        clean = token_label(clean_tokens[position])
        text = (
            f"{clean} → {token_label(corrupted_tokens[position])} (changed)"
            if changed[position]
            else f"{clean} (same in both)"
        )
        hover_tokens[:, position] = text
    figure = base_figure(title, height=height or max(240, 180 + 26 * n_rows))
    figure.add_trace(
        go.Heatmap(
            z=grid,
            x=int32(range(n)),
            y=names,
            zmin=-bound,
            zmax=bound,
            colorscale=DIVERGING,
            xgap=1,
            ygap=1,
            customdata=hover_tokens,
            colorbar={"title": {"text": RESTORED, "side": "right"}, "thickness": 10},
            hovertemplate=(
                "%{y}, position %{x}: %{customdata}<br>"
                + RESTORED
                + " %{z:.4f} (0 = corrupted, 1 = clean)<extra></extra>"
            ),
        )
    )
    step = max(1, -(-n // MAX_TICKS))
    ticks = list(range(0, n, step))
    labels = [f"{'*' if changed[i] else ''}{token_label(clean_tokens[i])} {i}" for i in ticks]
    figure.update_layout(
        xaxis={
            "title": {"text": "clean token and position (* changed in the corrupted prompt)"},
            "tickmode": "array",
            "tickvals": int32(ticks),
            "ticktext": labels,
            "tickangle": -60 if n > 12 else 0,
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={
            "type": "category",
            "autorange": "reversed",
            "showgrid": False,
            "zeroline": False,
        },
        margin={"l": 75, "r": 10, "t": 40, "b": 120},
    )
    return figure
