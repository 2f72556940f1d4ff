"""Where one query token's information comes from: raw attention, attention
rollout, attention flow and relevance side by side, each against its
content-free baseline where one is defined."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from headscope.errors import InputError
from headscope.figures.arrays import float32, int32
from headscope.figures.style import (
    BASELINE_COLOR,
    HIGHLIGHT_COLOR,
    TEMPLATE,
    plotly_text,
    token_label,
)

#: Bar colours per method (grey is kept for the baselines).
SERIES_COLORS = ("#1f5fa8", "#e07b39", "#2ca02c", "#9467bd")


def flow_comparison(
    tokens: Sequence[str],
    query: int,
    series: Mapping[str, object],
    baselines: Mapping[str, object] | None = None,
    *,
    title: str = "",
    y_titles: Mapping[str, str] | None = None,
) -> go.Figure:
    """One row of bars per method (`series[name]` is a `[key]` vector for the
    query token), keys across; `baselines[name]` (same length) is drawn as a
    grey step line on that method's row. The query's own key is outlined.

    A string in place of a vector is shown as a message in that row (a result
    that is not available, and why). `y_titles[name]` names a row's y axis
    (default "weight")."""
    n = len(tokens)
    names = list(series)
    if not names:
        raise InputError("flow_comparison needs at least one series")
    figure = make_subplots(
        rows=len(names),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=[plotly_text(name) for name in names],
    )
    x = int32(range(n))
    labels = [f"{i} {token_label(t)}" for i, t in enumerate(tokens)]
    for row, name in enumerate(names, start=1):
        if isinstance(series[name], str):
            # An invisible trace gives the row its axes: without one, plotly leaves the
            # row's axes undrawn, puts the message in the first row, drops the tick labels
            # of a last row and widens the shared x range.
            figure.add_trace(
                go.Scatter(
                    x=int32([0, max(n - 1, 0)]),
                    y=float32([0, 0]),
                    mode="markers",
                    marker={"opacity": 0},
                    hoverinfo="skip",
                    showlegend=False,
                ),
                row=row,
                col=1,
            )
            suffix = "" if row == 1 else str(row)
            figure.add_annotation(
                text="<br>".join(plotly_text(line) for line in textwrap.wrap(series[name], 90)),
                xref=f"x{suffix} domain",
                yref=f"y{suffix} domain",
                x=0.5,
                y=0.5,
                showarrow=False,
                font={"size": 13, "color": "#666666"},
            )
            figure.update_yaxes(visible=False, range=[-1, 1], row=row, col=1)
            continue
        values = float32(series[name])
        if values.shape != (n,):
            raise InputError(f"series {name!r} has shape {values.shape}, expected ({n},)")
        colors = np.array([SERIES_COLORS[(row - 1) % len(SERIES_COLORS)]] * n, dtype=object)
        if 0 <= query < n:
            colors[query] = HIGHLIGHT_COLOR
        figure.add_trace(
            go.Bar(
                x=x,
                y=values,
                marker={"color": list(colors)},
                name=plotly_text(name),
                customdata=labels,
                hovertemplate="key %{customdata}<br>%{y:.4f}<extra>"
                + plotly_text(name)
                + "</extra>",
                showlegend=False,
            ),
            row=row,
            col=1,
        )
        baseline = None if baselines is None else baselines.get(name)
        if baseline is not None:
            figure.add_trace(
                go.Scatter(
                    x=x,
                    y=float32(baseline),
                    mode="lines",
                    line={"color": BASELINE_COLOR, "dash": "dot", "width": 1.5, "shape": "hvh"},
                    name="content-free baseline",
                    legendgroup="baseline",
                    showlegend=row == 1,
                    hovertemplate="baseline %{y:.4f}<extra></extra>",
                ),
                row=row,
                col=1,
            )
        y_title = (y_titles or {}).get(name, "weight")
        figure.update_yaxes(title_text=plotly_text(y_title), rangemode="tozero", row=row, col=1)
    # One bar per key, edge to edge, whatever the rows hold.
    figure.update_xaxes(range=[-0.5, n - 0.5], showgrid=False, zeroline=False)
    step = max(1, int(np.ceil(n / 48)))
    figure.update_xaxes(
        tickmode="array",
        tickvals=x[::step],
        ticktext=[token_label(t) for t in tokens][::step],
        tickangle=-60,
        row=len(names),
        col=1,
    )
    figure.update_layout(
        template=TEMPLATE,
        title={"text": plotly_text(title)},
        height=150 + 170 * len(names),
        bargap=0.15,
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        margin={"l": 60, "r": 20, "t": 70, "b": 90},
    )
    return figure


def first_token_note(
    name: str,
    values: object,
    baseline: object | None,
    query: int,
    token: str,
    *,
    mask: str = "causal",
) -> str | None:
    """A plain-text note when the row `values` (`[key]`, one query) gives its
    largest mass, apart from the query itself, to key 0; None otherwise.

    The note compares that mass with the content-free `baseline` row (uniform
    `mask` attention pushed through the same computation): when the baseline
    puts at least as much on key 0, the mask explains it; when it puts less,
    the excess is attention the model itself parks on the first token.
    `token` is key 0's text, shown as given (plain text, not for plotly)."""
    row = float32(values).astype(np.float64)
    if row.ndim != 1 or not 0 < query < row.shape[0]:
        return None
    others = row.copy()
    others[query] = -np.inf
    if int(np.argmax(others)) != 0 or not row[0] > 0:
        return None
    head = f"{name} puts {row[0]:.2f} on key 0 {token}, its largest share apart from the query"
    if baseline is None:
        return f"{head}; it has no content-free baseline to compare with."
    base = float(float32(baseline)[0])
    if base <= 0:
        return f"{head}; uniform {mask} attention alone puts nothing there."
    if base >= row[0]:
        return (
            f"{head}; uniform {mask} attention alone puts {base:.2f} there: the mask "
            "explains it, not content."
        )
    return (
        f"{head}; uniform {mask} attention alone puts {base:.2f} there. The model puts "
        f"{row[0] / base:.1f}× the mask's share on it: often an attention sink (see the "
        "Position page) rather than content."
    )
