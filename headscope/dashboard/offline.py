"""The dashboard with no model: a saved capture (`headscope dashboard --record
DIR`) or a saved report (`--report DIR`), in Python `create_app(record=...)` or
`create_app(report=...)`.

- A capture (`AttentionRecord.save`, or `HeadStats.save` with or without its
  `maps/`): the Overview grid and summaries and the Head page of its prompt(s),
  the same analyses the live dashboard runs (`results`, pure functions of the
  record). Statistics without maps give the layer × head summaries only.
- A report (`headscope report` output): its head-importance scores per method
  with their 95% bootstrap intervals, significance and warnings (Importance),
  and what was measured, the taxonomy and the sink scores (Overview).

Every other page needs a model and says so. Nothing here unpickles: records
load through `records` (safetensors + a JSON sidecar, checked), a report is
read from its `report.json` only (size-capped, JSON), never from its parquet.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from headscope.dashboard import overview, results, routes, shell
from headscope.dashboard.components import (
    card,
    graph,
    page_header,
    stats_table,
    token_chips,
)
from headscope.dashboard.head import label_text
from headscope.dashboard.inputs import check_head
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession, PromptState
from headscope.dashboard.theme import index_string
from headscope.errors import InputError, RecordFormatError
from headscope.figures.heads import importance_heatmap, label_grid, layer_head_heatmap
from headscope.figures.maps import attention_map
from headscope.figures.style import display_token, message_figure
from headscope.models.spec import ModelSpec
from headscope.records.attention import SCHEMA as RECORD_SCHEMA
from headscope.records.attention import AttentionRecord
from headscope.records.io import SIDECAR_FILE
from headscope.records.stats import SCHEMA as STATS_SCHEMA
from headscope.records.stats import HeadStats

#: `headscope report`'s report.json (reports.writers.SCHEMA / SCHEMA_VERSION; the
#: dashboard may not import the reports package, a test checks they agree).
REPORT_SCHEMA = "headscope.report"
REPORT_VERSIONS = (2,)
REPORT_FILE = "report.json"
#: report.json holds a few grids per method: far below this.
MAX_REPORT_BYTES = 64 << 20
MAP_MAX_SIZE = 512


# -- loading -------------------------------------------------------------------------------------


def _directory(path: str | os.PathLike) -> Path:
    """The directory of a saved record or report: `path` itself, or the folder
    of a file inside it (record.json, tensors.safetensors, report.json)."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise InputError(f"{path} does not exist or is not a directory")
    return root


def _read_json(path: Path, limit: int, what: str) -> Any:
    """Parse a JSON file of at most `limit` bytes (RecordFormatError naming it otherwise)."""
    if not path.is_file():
        raise RecordFormatError(f"{path.parent} has no {path.name}; is it a {what}?")
    with path.open("rb") as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise RecordFormatError(f"{path} is larger than {limit >> 20} MiB: not a {what}")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        message = (str(error).splitlines() or [type(error).__name__])[0]
        raise RecordFormatError(f"{path} is not valid JSON: {message}") from None


def load_capture(path: str | os.PathLike) -> AttentionRecord | HeadStats:
    """A saved capture: an AttentionRecord or HeadStats directory (or a file in it),
    told apart by the sidecar's schema; loaded and checked by its own `load`."""
    root = _directory(path)
    sidecar = _read_json(root / SIDECAR_FILE, 256 << 20, "saved headscope record")
    schema = sidecar.get("schema") if isinstance(sidecar, dict) else None
    if schema == RECORD_SCHEMA:
        return AttentionRecord.load(root)
    if schema == STATS_SCHEMA:
        return HeadStats.load(root)
    if schema == REPORT_SCHEMA:
        raise InputError(f"{root} holds a report: open it with --report")
    raise RecordFormatError(
        f"{root / SIDECAR_FILE} holds no attention record or head statistics "
        f"(schema {str(schema)[:60]!r})"
    )


@dataclass(frozen=True)
class SavedReport:
    """The parts of a report.json the dashboard shows (checked on load)."""

    path: Path
    document: dict
    spec: ModelSpec


def load_report(path: str | os.PathLike) -> SavedReport:
    """A `headscope report` directory (or its report.json): the JSON only."""
    root = _directory(path)
    if (root / SIDECAR_FILE).is_file() and not (root / REPORT_FILE).exists():
        raise InputError(f"{root} holds a saved capture, not a report: open it with --record")
    document = _read_json(root / REPORT_FILE, MAX_REPORT_BYTES, "headscope report")
    if not isinstance(document, dict) or document.get("schema") != REPORT_SCHEMA:
        raise RecordFormatError(f"{root / REPORT_FILE} is not a headscope report.json")
    if document.get("schema_version") not in REPORT_VERSIONS:
        raise RecordFormatError(
            f"{root / REPORT_FILE} has schema version {str(document.get('schema_version'))[:20]}; "
            f"this dashboard reads versions {', '.join(map(str, REPORT_VERSIONS))}"
        )
    try:
        spec = ModelSpec.from_dict(document["model"]["spec"])
        aggregates = document["aggregates"]
        if not isinstance(aggregates, dict):
            raise TypeError("aggregates is not an object")
        for block in aggregates.values():
            for row in block["heads"]:
                check_head(spec, row["layer"], row["head"])
    except (KeyError, TypeError, ValueError, InputError) as error:
        raise RecordFormatError(f"{root / REPORT_FILE} is malformed: {error}") from None
    return SavedReport(root, document, spec)


# -- the session ---------------------------------------------------------------------------------


def _prompt_texts(record: AttentionRecord) -> tuple[str, ...]:
    """One text per prompt: the captured text, or its tokens joined when the capture
    was made from token ids; repeated texts are numbered so that each names one prompt."""
    texts = record.provenance.texts
    tokens = [record.tokens] if not record.batched else list(record.tokens)
    out: list[str] = []
    for index in range(record.n_prompts):
        text = texts[index] if texts else " ".join(map(str, tokens[index]))
        text = text if text.strip() else f"prompt {index + 1}"
        out.append(text if text not in out else f"{text} ({index + 1})")
    return tuple(out)


class OfflineSession(ModelSession):
    """A session with no model: a saved capture (`record`, with `stats` for a
    HeadStats save) or a report (`report`). `model` is None; `state(prompt)`
    serves the capture's prompts; `require_model()` says the page needs a model."""

    def __init__(
        self,
        *,
        record: AttentionRecord | None = None,
        stats: HeadStats | None = None,
        report: SavedReport | None = None,
        source: Path,
    ) -> None:
        spec = (
            report.spec
            if report is not None
            else (record.spec if record is not None else stats.spec)  # type: ignore[union-attr]
        )
        if report is not None:
            what = f"the saved report “{source.name}”"
        else:
            kind = "saved capture" if stats is None else "saved statistics"
            what = f"the {kind} “{source.name}”"
        super().__init__(None, name=spec.name, offline=what)
        self._spec = spec
        self.record = record
        self.stats = stats
        self.report = report
        self.source = source
        self.prompt_texts: tuple[str, ...] = _prompt_texts(record) if record is not None else ()
        if record is None and stats is not None:
            texts = stats.provenance.texts
            self.prompt_texts = tuple(texts) if texts else ()

    @property
    def spec(self) -> ModelSpec:  # type: ignore[override]
        return self._spec

    def state(self, prompt: object) -> PromptState:
        """The PromptState of the capture's prompt `prompt` (its first for None)."""
        if self.record is None:
            raise InputError(
                f"{self.offline} holds no attention maps: this view needs a capture with maps "
                "(headscope capture, or HeadStats saved with maps) or a model (--model)"
            )
        texts = self.prompt_texts
        if prompt is None:
            prompt = texts[0]
        if prompt not in texts:
            raise InputError("that prompt is not one of the saved capture's prompts")
        index = texts.index(prompt)
        return self.prompts.get_or_create(
            prompt, lambda: PromptState(str(prompt), self.record.prompt(index))
        )


def needs_model(session: ModelSession, page: routes.Page) -> list:
    """The card shown instead of a page that needs a model."""
    return [
        html.Div(page.title, className="hs-page-title"),
        html.Div(page.description, className="hs-page-sub"),
        card(
            "This page needs a model",
            alert(
                f"This page needs a model: the dashboard shows {session.offline} with no model "
                f"loaded. Start it with --model {session.name} (headscope dashboard --model "
                f"{session.name}) to use the {page.title} page.",
                kind="info",
            ),
            id="needs-model",
        ),
    ]


# -- a saved capture -----------------------------------------------------------------------------


def head_layout() -> list:
    return [
        html.Div("Head", id="rec-head-title", className="hs-page-title"),
        html.Div(
            "Queries down, keys across: one head of the saved capture.", className="hs-page-sub"
        ),
        html.Div(id="rec-head-message"),
        html.Div(
            [
                card(None, graph("rec-head-map", message="Loading…", height=600)),
                html.Div(
                    [
                        card("Heads", html.Div(id="rec-head-picker"), note="Rows are layers."),
                        card("Statistics", html.Div(id="rec-head-stats")),
                        card(
                            "Taxonomy",
                            html.Div(id="rec-head-taxonomy"),
                            note="The head's primary pattern, its score and the number of "
                            "queries that define it.",
                        ),
                    ]
                ),
            ],
            className="hs-grid-main",
        ),
    ]


def head_outputs(session: OfflineSession, pathname: object, store: object) -> tuple:
    """(title, map, statistics, taxonomy, picker, message) of the head in the URL."""
    route = routes.parse_path(pathname)
    layer, head = check_head(session.spec, route.layer, route.head)
    prompt = store.get("prompt") if isinstance(store, dict) else None
    state = session.state(prompt)
    try:
        matrix = state.record.map(layer, head)
    except KeyError as error:
        raise InputError(str(error).strip("'\"")) from None
    title = f"Layer {layer}, head {head}"
    figure = attention_map(
        matrix,
        state.tokens,
        title=f"{title} · {len(state.tokens)} tokens (saved capture)",
        max_size=MAP_MAX_SIZE,
    )
    stats = results.summary(state)
    li, hi = state.record.layer_index.index(layer), state.record.head_index.index(head)
    column = matrix.sum(0)
    top = int(column.argmax())
    rows = [
        ("entropy (nats, mean over queries)", f"{float(stats.entropy[li, hi]):.3f}"),
        ("max weight (mean over queries)", f"{float(stats.max_weight[li, hi]):.3f}"),
        ("first-token mass (mean over queries)", f"{float(stats.first_token[li, hi]):.3f}"),
        ("previous-token mass (mean over queries)", f"{float(stats.previous_token[li, hi]):.3f}"),
        ("most attended key", f"{top}: {display_token(state.tokens[top])}"),
    ]
    try:
        taxonomy = html.Div(label_text(results.taxonomy_labels(state)[li][hi]))
    except Exception as error:
        taxonomy = alert(describe(error, "the head taxonomy"), kind="warning")
    search = routes.search_for(prompt if isinstance(prompt, str) else None)
    links = [
        dcc.Link(
            f"{lj}.{hj}",
            href=routes.head_path(lj, hj) + search,
            className="hs-current" if (lj, hj) == (layer, head) else "",
        )
        for lj in state.record.layer_index
        for hj in state.record.head_index
    ]
    picker = html.Div(
        links,
        className="hs-picker",
        style={"gridTemplateColumns": f"repeat({len(state.record.head_index)}, minmax(0, 1fr))"},
    )
    return title, figure, stats_table(rows), taxonomy, picker, None


def stats_layout() -> list:
    return [
        *page_header(
            "Overview",
            "Statistics of every head from the saved capture (no maps were saved, so no "
            "thumbnails).",
            "rec-stats-message",
        ),
        card("Tokens", html.Div(id="rec-stats-tokens", className="hs-tokens")),
        html.Div(
            [
                card(
                    "Entropy",
                    graph("rec-stats-entropy", height=260),
                    note="Mean over queries of the attention entropy (nats).",
                ),
                card(
                    "Sink score α₀",
                    graph("rec-stats-sink", height=260),
                    note="Mean attention on the first token over the queries that see it.",
                ),
                card(
                    "Previous-token mass",
                    graph("rec-stats-previous", height=260),
                    note="Mean over queries of the weight on key = query − 1.",
                ),
            ],
            className="hs-grid-3",
        ),
    ]


def stats_outputs(session: OfflineSession, store: object) -> tuple:
    """(tokens, entropy, sink, previous-token figures, message) of a HeadStats save
    (its first prompt, or the URL's): per-head means over the real queries."""
    stats = session.stats
    assert stats is not None
    prompt = store.get("prompt") if isinstance(store, dict) else None
    texts = session.prompt_texts
    index = texts.index(prompt) if prompt in texts else 0
    tokens = stats.tokens[index] if stats.batched else stats.tokens
    n = len(tokens)

    def mean(values):
        values = values[index] if stats.batched else values
        return values[..., :n].float().mean(-1)

    sink = stats.sink_scores()
    sink = (sink[index] if stats.batched else sink)[..., 0]
    return (
        token_chips(tokens),
        layer_head_heatmap(mean(stats.entropy), colorbar_title="nats"),
        layer_head_heatmap(sink, colorbar_title="α₀", zmin=0.0, zmax=1.0),
        layer_head_heatmap(mean(stats.previous_token_mass), colorbar_title="mass", zmin=0.0),
        None,
    )


def open_head(spec: ModelSpec, click_data: object) -> str:
    """The head page path for a click on the overview grid or a summary heatmap."""
    return overview.head_path_of_click(spec, click_data)


def _overview_failed(message: str) -> tuple:
    blank = message_figure(message)
    return ([], blank, blank, blank, blank, alert(message))


def register_capture(app: Dash, session: OfflineSession) -> None:
    if session.record is not None:

        @app.callback(
            Output("overview-tokens", "children"),
            Output("overview-grid", "figure"),
            Output("overview-entropy", "figure"),
            Output("overview-sink", "figure"),
            Output("overview-labels", "figure"),
            Output("overview-message", "children"),
            Input("prompt-store", "data"),
        )
        @guarded(_overview_failed, "the overview")
        def _overview(store):
            return overview.overview_outputs(session, store)

        @app.callback(
            Output("url", "pathname"),
            Input("overview-grid", "clickData"),
            *(Input(graph_id, "clickData") for graph_id in overview.SUMMARY_GRAPHS),
            prevent_initial_call=True,
        )
        @guarded(lambda message: no_update, "opening the head")
        def _open(*clicks):
            sources = ("overview-grid", *overview.SUMMARY_GRAPHS)
            if ctx.triggered_id not in sources:
                return no_update
            return open_head(session.spec, clicks[sources.index(ctx.triggered_id)])

        @app.callback(
            Output("rec-head-title", "children"),
            Output("rec-head-map", "figure"),
            Output("rec-head-stats", "children"),
            Output("rec-head-taxonomy", "children"),
            Output("rec-head-picker", "children"),
            Output("rec-head-message", "children"),
            Input("url", "pathname"),
            Input("prompt-store", "data"),
        )
        @guarded(lambda m: ("Head", message_figure(m), None, None, None, alert(m)), "the head page")
        def _head(pathname, store):
            if routes.parse_path(pathname).kind != "head":
                raise PreventUpdate
            return head_outputs(session, pathname, store)

    else:

        @app.callback(
            Output("rec-stats-tokens", "children"),
            Output("rec-stats-entropy", "figure"),
            Output("rec-stats-sink", "figure"),
            Output("rec-stats-previous", "figure"),
            Output("rec-stats-message", "children"),
            Input("prompt-store", "data"),
        )
        @guarded(
            lambda m: ([], message_figure(m), message_figure(m), message_figure(m), alert(m)),
            "the statistics",
        )
        def _stats(store):
            return stats_outputs(session, store)


# -- a saved report ------------------------------------------------------------------------------


def _static_graph(component_id: str, figure, height: int) -> html.Div:
    """A figure known when the page is built (a report's are fixed), with the
    CSV/JSON export every panel has."""
    return graph(component_id, figure=figure, height=height)


def _grid(rows: list[dict], key: str, spec: ModelSpec) -> list[list[float]]:
    grid = [[math.nan] * spec.n_heads for _ in range(spec.n_layers)]
    for row in rows:
        value = row.get(key)
        grid[row["layer"]][row["head"]] = (
            float(value)
            if isinstance(value, int | float) and not isinstance(value, bool)
            else math.nan
        )
    return grid


def _text(value: object, limit: int = 500) -> str:
    return str(value)[:limit] if value is not None else ""


def report_importance(report: SavedReport) -> list:
    """The report's scores: one heatmap per method (mean over units, 95% bootstrap
    interval and n.s. in the hover), its meaning, units and warnings."""
    spec, document = report.spec, report.document
    metric = document.get("metric") if isinstance(document.get("metric"), dict) else {}
    baseline = metric.get("baseline") if isinstance(metric.get("baseline"), dict) else {}
    measured = (
        f"metric: {_text(metric.get('name'))} ({_text(metric.get('better'))}); "
        f"target tokens: {_text(metric.get('target_described') or metric.get('target'))}; "
        f"clean baseline {_number(baseline.get('mean'))} "
        f"[{_number(baseline.get('ci_low'))}, {_number(baseline.get('ci_high'))}] "
        f"over {_text(baseline.get('n'))} prompts"
    )
    cards = []
    for method, block in document["aggregates"].items():
        name = _text(method, 60)
        rows = block.get("heads", [])
        mean = _grid(rows, "mean", spec)
        over = f"{round(100 * float(block.get('confidence') or 0.95))}% bootstrap over " + _text(
            block.get("over"), 80
        )
        figure = importance_heatmap(
            mean,
            title=name,
            colorbar_title=f"{name} score",
            signed=name in ("ablation", "attribution"),
            zmax=1.0 if name == "chg" else None,
            interval=(_grid(rows, "ci_low", spec), _grid(rows, "ci_high", spec)),
            support=over,
        )
        notes = [
            html.P(_text(block.get("meaning")), className="hs-note"),
            html.P(
                f"{_text(block.get('n_units'))} {_text(block.get('unit'))}s · "
                f"{_text(block.get('significance'))}",
                className="hs-note",
            ),
        ]
        warnings = [
            alert(_text(w.get("message") if isinstance(w, dict) else w), kind="warning")
            for w in block.get("warnings") or []
        ]
        if block.get("says_nothing"):
            warnings.insert(
                0, alert(f"{name}: these scores say nothing on these prompts", kind="warning")
            )
        cards.append(
            card(
                f"{name} (from the report)",
                *warnings,
                _static_graph(f"report-{name}", figure, 320),
                *notes,
                id=f"report-method-{name}",
            )
        )
    return [
        *page_header(
            "Head importance (saved report)",
            f"From {report.path.name}/{REPORT_FILE}: {measured}. Hover a cell for its interval.",
            "report-importance-message",
        ),
        html.Div(cards, className="hs-grid-2"),
    ]


def _number(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4g}"
    return "n/a"


def report_overview(report: SavedReport) -> list:
    """What the report measured, its taxonomy labels and the first-token sink scores."""
    spec, document = report.spec, report.document
    prompts = document.get("prompts") if isinstance(document.get("prompts"), dict) else {}
    metric = document.get("metric") if isinstance(document.get("metric"), dict) else {}
    model = document.get("model") if isinstance(document.get("model"), dict) else {}
    rows = [
        ("model", f"{spec.name} ({spec.n_layers} layers × {spec.n_heads} heads)"),
        ("weights hash", _text(model.get("weights_hash"), 80)),
        ("prompts scored", _text(prompts.get("count"))),
        ("metric", f"{_text(metric.get('name'))}: {_text(metric.get('description'))}"),
        ("methods", ", ".join(_text(m, 40) for m in document["aggregates"])),
        ("headscope version", _text(document.get("headscope_version"), 40)),
    ]
    parts = [card("What the report measured", stats_table(rows))]
    taxonomy = document.get("taxonomy") if isinstance(document.get("taxonomy"), dict) else {}
    labels = taxonomy.get("labels")
    if isinstance(labels, list) and len(labels) == spec.n_layers:
        try:
            figure = label_grid(
                [[_text(cell, 40) for cell in row] for row in labels],
                title="Primary taxonomy label per head",
            )
            parts.append(card("Head taxonomy", _static_graph("report-taxonomy", figure, 300)))
        except Exception as error:
            parts.append(alert(describe(error, "the taxonomy"), kind="warning"))
    sinks = document.get("sinks") if isinstance(document.get("sinks"), dict) else {}
    alpha = sinks.get("alpha_first_token")
    if isinstance(alpha, list) and len(alpha) == spec.n_layers:
        try:
            grid = [[math.nan if v is None else float(v) for v in row] for row in alpha]
            figure = layer_head_heatmap(grid, colorbar_title="α₀", zmin=0.0, zmax=1.0)
            parts.append(
                card(
                    "Sink score α₀",
                    _static_graph("report-sinks", figure, 300),
                    note=_text(sinks.get("statistic")),
                )
            )
        except (TypeError, ValueError) as error:
            parts.append(alert(describe(error, "the sink scores"), kind="warning"))
    return [
        *page_header(
            "Overview (saved report)",
            f"{report.path.name}: the scores are on the Importance page.",
            "report-overview-message",
        ),
        *parts,
    ]


# -- the app -------------------------------------------------------------------------------------


def pages_for(session: OfflineSession) -> dict:
    """The page layouts: what the capture or report can show; every other page
    (all of `routes.NAV_PAGES`) says it needs a model."""
    pages = {page.kind: (lambda page=page: needs_model(session, page)) for page in routes.NAV_PAGES}
    if session.report is not None:
        report = session.report
        pages["overview"] = lambda: report_overview(report)
        pages["importance"] = lambda: report_importance(report)
    elif session.record is not None:
        pages["overview"] = overview.layout
        pages["head"] = head_layout
    else:
        pages["overview"] = stats_layout
    return pages


def create_offline_app(
    *,
    record: str | os.PathLike | AttentionRecord | HeadStats | None = None,
    report: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dash:
    """The dashboard of a saved capture (`record`: a directory or file written by
    `AttentionRecord.save` / `HeadStats.save`, or the object) or a saved report
    (`report`: a `headscope report` directory), with no model. Exactly one of the two."""
    from headscope.dashboard.app import _answer_unexpected_errors
    from headscope.dashboard.background import background_manager

    if (record is None) == (report is None):
        raise InputError("give a saved capture (--record) or a saved report (--report), not both")
    if report is not None:
        saved = load_report(report)
        session = OfflineSession(report=saved, source=saved.path)
    else:
        capture = (
            record if isinstance(record, AttentionRecord | HeadStats) else load_capture(record)  # type: ignore[arg-type]
        )
        source = (
            Path(record)  # type: ignore[arg-type]
            if not isinstance(record, AttentionRecord | HeadStats)
            else Path(f"({capture.spec.name} capture)")
        )
        if isinstance(capture, HeadStats):
            session = OfflineSession(record=capture.maps, stats=capture, source=source)
        else:
            session = OfflineSession(record=capture, source=source)
    manager = background_manager(session, cache_dir)
    app = Dash(
        __name__,
        title=f"headscope · {session.offline}",
        serve_locally=True,
        suppress_callback_exceptions=True,
        update_title=None,
        background_callback_manager=manager,
        assets_ignore=".*",
    )
    app.index_string = index_string(shell.ROUTING_SCRIPT)
    pages = pages_for(session)
    app.layout = shell.layout(session)
    app.validation_layout = html.Div(
        [shell.layout(session), *(component for page in pages.values() for component in page())]
    )
    shell.register(app, session, pages)
    if session.report is None:
        register_capture(app, session)
    _answer_unexpected_errors(app)
    app.headscope_session = session
    app.headscope_manager = manager
    app.headscope_stop = threading.Event()
    app.headscope_warm_up = None
    return app


__all__ = [
    "OfflineSession",
    "SavedReport",
    "create_offline_app",
    "load_capture",
    "load_report",
    "needs_model",
]
