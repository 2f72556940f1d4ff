"""Building blocks shared by the pages. All user text (prompts, tokens) is
passed to dash as plain strings, which React renders as text: never as HTML."""

from __future__ import annotations

from collections.abc import Sequence

from dash import dcc, html

from headscope.dashboard.export import export_controls
from headscope.figures.style import display_token, message_figure

GRAPH_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"scale": 2}}
#: Panels at least this tall (px) show plotly's toolbar on hover; smaller ones have none
#: (on a small panel the toolbar covers the title and the legend).
TOOLBAR_MIN_HEIGHT = 400


def graph_config(height: int, toolbar: bool | None = None) -> dict:
    """The plotly config of a panel `height` px tall: the toolbar on hover for large
    panels (zoom, pan, download), none for small ones; `toolbar` forces either."""
    show = height >= TOOLBAR_MIN_HEIGHT if toolbar is None else toolbar
    return {**GRAPH_CONFIG, "displayModeBar": "hover" if show else False}


def graph(
    component_id: str,
    *,
    message: str = "",
    height: int = 300,
    toolbar: bool | None = None,
    export: bool = True,
    figure: object = None,
    **props,
) -> html.Div:
    """A dcc.Graph (id `component_id`) that starts as `figure` or, without one,
    a blank figure showing `message`; its toolbar follows
    `graph_config(height, toolbar)`. With `export`, CSV and JSON buttons under
    it download the figure's data (`headscope.dashboard.export`)."""
    shown = dcc.Graph(
        id=component_id,
        figure=message_figure(message, height=height) if figure is None else figure,
        config=graph_config(height, toolbar),
        **props,
    )
    controls = [export_controls(component_id)] if export else []
    return html.Div([shown, *controls], className="hs-panel")


def card(title: str | None, *children, note: str | None = None, **props) -> html.Div:
    parts = []
    if title:
        parts.append(html.H3(title))
    if note:
        parts.append(html.P(note, className="hs-note"))
    return html.Div([*parts, *children], className="hs-card", **props)


def page_header(title: str, subtitle: str, message_id: str) -> list:
    return [
        html.Div(title, className="hs-page-title"),
        html.Div(subtitle, className="hs-page-sub"),
        html.Div(id=message_id),
    ]


def token_chips(
    tokens: Sequence[str],
    *,
    weights: Sequence[float] | None = None,
    query: int | None = None,
    button_type: str | None = None,
    limit: int = 600,
    hover_class: str | None = None,
) -> list:
    """Tokens as small labelled chips. `weights` in [0, 1] shade each chip
    (token highlighting); `button_type` makes them buttons with pattern ids
    `{"type": button_type, "index": i}`; `hover_class` adds that class and a
    `data-index` attribute to each chip (for client-side hover views)."""
    chips = []
    top = max(weights) if weights else 0.0
    for i, token in enumerate(tokens[:limit]):
        style = {}
        if weights is not None and top > 0:
            alpha = max(0.0, min(1.0, weights[i] / top))
            style = {
                "background": f"rgba(31, 95, 168, {alpha:.3f})",
                "color": "#ffffff" if alpha > 0.55 else "#1d2330",
            }
        title = f"{i}: {token!r}" + (f" — {weights[i]:.4f}" if weights is not None else "")
        content = [html.Span(str(i), className="hs-index"), display_token(token)]
        class_name = "hs-token" + (" hs-token-query" if query == i else "")
        extra = {}
        if hover_class:
            class_name += f" {hover_class}"
            extra["data-index"] = str(i)
        if button_type:
            chips.append(
                html.Button(
                    content,
                    id={"type": button_type, "index": i},
                    className=class_name,
                    style=style,
                    title=title,
                    n_clicks=0,
                )
            )
        else:
            chips.append(
                html.Span(content, className=class_name, style=style, title=title, **extra)
            )
    if len(tokens) > limit:
        chips.append(html.Span(f"… {len(tokens) - limit} more", className="hs-muted"))
    return chips


def prompt_set_box(component_id: str, prompts: Sequence[str], *, height: int = 118) -> html.Div:
    """A labelled text area holding a prompt set, one prompt per line (the pages
    that score heads over several prompts share it)."""
    return html.Div(
        [
            html.Label("prompt set (one per line)", htmlFor=component_id),
            dcc.Textarea(
                id=component_id,
                value="\n".join(prompts),
                spellCheck=False,
                style={
                    "width": "520px",
                    "height": f"{height}px",
                    "fontFamily": "var(--hs-mono)",
                    "fontSize": "12px",
                },
            ),
        ],
        className="hs-control",
    )


def table_panel(table: html.Table, *, name: str = "table") -> html.Div:
    """A wide table (a header row, then one row per item) in a panel with CSV and
    JSON export buttons: the files hold one record per body row, keyed by the
    header's column titles (`name` names the file)."""
    return html.Div([table, export_controls(name, kind="table")], className="hs-panel")


def stats_table(rows: Sequence[tuple[str, str]], *, name: str = "table") -> html.Div:
    """A two-column table (what, value) with CSV and JSON export buttons
    (`name` names the file)."""
    table = html.Table(
        html.Tbody([html.Tr([html.Td(what), html.Td(value)]) for what, value in rows]),
        className="hs-stats",
    )
    return html.Div([table, export_controls(name, kind="table")], className="hs-panel")


def progress_block(prefix: str) -> html.Div:
    """A progress bar, its label and a cancel button (ids `<prefix>-progress`,
    `<prefix>-progress-label`, `<prefix>-cancel`), hidden until a job runs."""
    return html.Div(
        [
            html.Progress(id=f"{prefix}-progress", value="0", max="1"),
            html.Span("starting…", id=f"{prefix}-progress-label", className="hs-muted"),
            html.Button(
                "Cancel",
                id=f"{prefix}-cancel",
                className="hs-button hs-button-quiet",
                disabled=True,
                n_clicks=0,
            ),
        ],
        id=f"{prefix}-progress-block",
        className="hs-progress",
        style={"display": "none"},
    )
