"""The look shared by every headscope figure: fonts, colours, a small template,
and safe text for plotly labels.

Plotly renders a subset of HTML in titles, tick labels and hover text (`<b>`,
`<br>`, `<a href>`...). Prompts and tokens are user text, so everything that
reaches a label goes through `plotly_text`, which escapes `&`, `<` and `>` as
entities: plotly shows them literally and never interprets them as markup.
"""

from __future__ import annotations

import textwrap

import plotly.graph_objects as go

FONT_FAMILY = "Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif"
MONO_FAMILY = "'JetBrains Mono', 'DejaVu Sans Mono', Menlo, Consolas, monospace"

#: Attention weights and other probabilities: white at 0, deep blue at the top.
SEQUENTIAL = [
    [0.0, "#ffffff"],
    [0.15, "#deebf7"],
    [0.4, "#9ecae1"],
    [0.7, "#4292c6"],
    [1.0, "#08306b"],
]
#: Unbounded positive statistics (entropy, rank): a perceptual scale.
STATISTIC = "Viridis"
#: Signed quantities centred on 0 (copying scores, differences): blue < 0 < red.
DIVERGING = "RdBu_r"

#: Series colours, in order: data, comparison, baseline, extra.
COLORS = ("#1f5fa8", "#e07b39", "#7f7f7f", "#2ca02c", "#9467bd", "#d62728")
BASELINE_COLOR = "#555555"
HIGHLIGHT_COLOR = "#d62728"

#: A log axis labelled at powers of ten only, written as powers (10⁻⁴, never "100μ"
#: beside "0.001"); the ticks between decades stay unlabelled (no bare "2", "5").
LOG_AXIS = {"type": "log", "exponentformat": "power", "minorloglabels": "none"}

TEMPLATE = go.layout.Template(
    layout=go.Layout(
        font={"family": FONT_FAMILY, "size": 12, "color": "#222222"},
        title={"font": {"size": 14}, "x": 0.0, "xanchor": "left", "y": 0.98, "yanchor": "top"},
        paper_bgcolor="#ffffff",
        plot_bgcolor="#ffffff",
        colorway=list(COLORS),
        margin={"l": 60, "r": 20, "t": 44, "b": 50},
        hoverlabel={"font": {"family": MONO_FAMILY, "size": 12}, "bgcolor": "#ffffff"},
        xaxis={"gridcolor": "#ececec", "zerolinecolor": "#cccccc", "linecolor": "#999999"},
        yaxis={"gridcolor": "#ececec", "zerolinecolor": "#cccccc", "linecolor": "#999999"},
        legend={"bgcolor": "rgba(255,255,255,0.8)"},
    )
)


def plotly_text(text: object) -> str:
    """`text` as a plotly label that shows literally (no markup is interpreted)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def display_token(token: str) -> str:
    """A token as a visible plain-text label: whitespace made visible (space ␣,
    newline ↵, tab ⇥), the empty string as ∅. Not escaped (see `plotly_text`)."""
    if token == "":
        return "∅"
    return token.replace(" ", "␣").replace("\n", "↵").replace("\r", "↵").replace("\t", "⇥")


def token_label(token: str) -> str:
    """`display_token` escaped for plotly."""
    return plotly_text(display_token(token))


def base_figure(title: str = "", *, height: int | None = None) -> go.Figure:
    """An empty figure with the headscope template and an escaped title."""
    figure = go.Figure()
    figure.update_layout(template=TEMPLATE, title={"text": plotly_text(title)})
    if height is not None:
        figure.update_layout(height=height)
    return figure


def message_figure(message: str, *, height: int = 260) -> go.Figure:
    """A blank figure that shows `message` (no data yet, or an error)."""
    figure = base_figure(height=height)
    figure.update_layout(
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[
            {
                "text": "<br>".join(
                    plotly_text(line) for line in textwrap.wrap(message, 70) or [""]
                ),
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "font": {"size": 13, "color": "#666666"},
            }
        ],
    )
    return figure
