"""Token-level views of attention: BertViz's head view as a plotly figure.

`attention_lines` draws the prompt's tokens twice, queries in a column on the
left and keys on the right, with a line from each query to each key whose
opacity is the weight (one head), or one colour per head (several heads, e.g.
every head of a layer). Tokens are labels, escaped for plotly (`token_label`):
they show literally, never as markup.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.figures.arrays import float32
from headscope.figures.style import COLORS, TEMPLATE, message_figure, plotly_text, token_label

#: Prompts longer than this are not drawn as lines (N² lines say nothing; see the map).
MAX_LINE_TOKENS = 128
#: Opacity steps: a weight w is drawn at opacity round(w·LEVELS)/LEVELS; weights
#: below half a step are not drawn.
LEVELS = 10
#: One colour per head, beyond the six series colours of the style.
HEAD_COLORS = (
    *COLORS,
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#393b79",
    "#637939",
    "#ad494a",
    "#7b4173",
    "#3182bd",
    "#e6550d",
)


def head_color(index: int) -> str:
    """The colour of the `index`-th head of a multi-head view (cycling)."""
    return HEAD_COLORS[index % len(HEAD_COLORS)]


def attention_lines(
    pattern: object,
    tokens: Sequence[str],
    *,
    heads: Sequence[str] | None = None,
    title: str = "",
    max_tokens: int = MAX_LINE_TOKENS,
    levels: int = LEVELS,
) -> go.Figure:
    """Attention as lines between two columns of tokens (queries left, keys
    right): `pattern` is one `[query, key]` map (one colour) or `[head, query,
    key]` maps (one colour each, named by `heads`, toggled from the legend).
    Line opacity is the weight itself (0 to 1, not scaled to the map's max), in
    `levels` steps; weights under half a step are left out. Hovering a token
    lists its strongest keys (left column) or queries (right column).

    Prompts longer than `max_tokens` give a message figure instead."""
    maps = float32(pattern)
    if maps.ndim == 2:
        maps = maps[None]
        multi = False
    elif maps.ndim == 3:
        multi = True
    else:
        raise InputError(
            f"attention_lines needs [query, key] or [head, query, key], got {maps.shape}"
        )
    n_heads, n = maps.shape[0], maps.shape[-1]
    if maps.shape[1] != n or len(tokens) != n:
        raise InputError(
            f"attention_lines needs square maps matching {len(tokens)} tokens, "
            f"got shape {tuple(maps.shape)}"
        )
    names = list(heads) if heads is not None else [f"head {i}" for i in range(n_heads)]
    if len(names) != n_heads:
        raise InputError(f"{len(names)} head names for {n_heads} maps")
    if n > max_tokens:
        return message_figure(
            f"Attention lines are drawn for prompts of up to {max_tokens} tokens; this one "
            f"has {n}. The map shows every weight.",
            height=160,
        )
    if levels < 1:
        raise InputError("levels must be at least 1")
    maps = np.nan_to_num(maps, nan=0.0)
    pitch = int(np.clip(900 / max(n, 1), 10, 20))
    font = max(8, min(12, pitch - 2))
    labels = [token_label(t) for t in tokens]
    traces: list[go.Scatter] = []
    for h in range(n_heads):
        color = head_color(h) if multi else COLORS[0]
        group = f"head{h}"
        if multi:  # the legend entry, drawn whether or not the head has lines
            traces.append(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="lines",
                    name=plotly_text(names[h]),
                    legendgroup=group,
                    line={"color": color, "width": 3},
                    hoverinfo="skip",
                )
            )
        steps = np.rint(np.clip(maps[h], 0.0, 1.0) * levels).astype(np.int32)
        for level in range(1, levels + 1):
            q, k = np.nonzero(steps == level)
            if q.size == 0:
                continue
            traces.append(_segments(q, k, level / levels, color, group, multi))
    traces.append(_column(0.0, "left", labels, maps, "query", names, multi, font))
    traces.append(_column(1.0, "right", labels, maps, "key", names, multi, font))
    plot_px = pitch * n + 16
    top_px = 44 + (34 if multi else 0)
    figure = go.Figure(
        data=traces,
        layout={
            "template": TEMPLATE,
            "title": {"text": plotly_text(title)},
            "height": plot_px + top_px + 10,
            "showlegend": multi,
            "legend": {
                "orientation": "h",
                "x": 0,
                "y": 1.0 + 20 / plot_px,  # above the column headings
                "yanchor": "bottom",
                "font": {"size": 11},
            },
            "hovermode": "closest",
            "xaxis": {
                "visible": False,
                "range": [-0.9, 1.9],
                "fixedrange": True,
            },
            "yaxis": {
                "visible": False,
                "range": [n - 0.5, -0.5],
                "fixedrange": True,
            },
            "margin": {"l": 10, "r": 10, "t": top_px, "b": 10},
            "meta": {"n": n, "heads": n_heads, "levels": levels},
            "annotations": [
                _heading(0.0, "queries"),
                _heading(1.0, "keys"),
            ],
        },
    )
    return figure


def _segments(
    q: np.ndarray, k: np.ndarray, opacity: float, color: str, group: str, multi: bool
) -> go.Scatter:
    """One trace of query→key segments at one opacity (NaN breaks the line)."""
    count = q.size
    x = np.empty(3 * count, dtype=np.float32)
    y = np.empty(3 * count, dtype=np.float32)
    x[0::3], x[1::3], x[2::3] = 0.0, 1.0, np.nan
    y[0::3], y[1::3], y[2::3] = q, k, np.nan
    return go.Scatter(
        x=x,
        y=y,
        mode="lines",
        line={"color": color, "width": 1.5 if multi else 2.0},
        opacity=opacity,
        connectgaps=False,
        legendgroup=group,
        showlegend=False,
        hoverinfo="skip",
    )


def _column(
    x: float,
    side: str,
    labels: list[str],
    maps: np.ndarray,
    role: str,
    names: list[str],
    multi: bool,
    font: int,
) -> go.Scatter:
    """A column of token labels; hover names each token's strongest partners."""
    n = len(labels)
    other = "keys" if role == "query" else "queries"
    rows = maps if role == "query" else maps.transpose(0, 2, 1)  # [head, token, partner]
    top = np.argsort(-rows, axis=-1, kind="stable")[..., :3]
    texts = []
    for i in range(n):
        parts = [f"{role} {i} {labels[i]}"]
        for h, name in enumerate(names):
            best = ", ".join(
                f"{j} {labels[j]} {rows[h, i, j]:.3f}" for j in top[h, i] if rows[h, i, j] > 0
            )
            prefix = f"{plotly_text(name)}: " if multi else f"top {other}: "
            parts.append(prefix + (best or "none"))
        texts.append("<br>".join(parts))
    return go.Scatter(
        x=np.full(n, x, dtype=np.float32),
        y=np.arange(n, dtype=np.float32),
        mode="markers+text",
        text=labels,
        textposition=f"middle {side}",
        textfont={"size": font, "family": "'JetBrains Mono', 'DejaVu Sans Mono', monospace"},
        marker={"size": 5, "color": "#7f7f7f"},
        hovertext=texts,
        hovertemplate="%{hovertext}<extra></extra>",
        showlegend=False,
        cliponaxis=False,
    )


def _heading(x: float, text: str) -> dict:
    return {
        "x": x,
        "y": 1.0,
        "xref": "x",
        "yref": "paper",
        "yanchor": "bottom",
        "text": text,
        "showarrow": False,
        "font": {"size": 11, "color": "#666666"},
    }
