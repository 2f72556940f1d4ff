"""Page 8, Long context (`/long`): a text from a file or pasted, up to the
model's context (not the 512-token cap of the other pages), captured in stats
mode in a background job: per head × position strips (entropy, sink mass,
previous-token mass, mean distance), head × distance histograms, sinks over
position, and a zoomable map of a chosen head served tile by tile from a map
store on disk (`records.store.MapStore`: overview at a coarse pyramid level,
finer levels for the visible window on zoom).

The job writes its results to the dashboard's cache folder
(`<cache>/longcontext/<key>/`: `stats/`, a HeadStats record, and
`maps.zarr/`, the store); the server reads them back once and keeps them in
memory, so a head switch only swaps data already cached or on disk. Text from
the browser and files is checked here (UTF-8, size, context length) and shown
as text, never as HTML.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dash import Dash, Input, Output, Patch, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from headscope.dashboard.background import job_options, on_death
from headscope.dashboard.cache import LRUCache
from headscope.dashboard.components import card, graph, page_header, progress_block
from headscope.dashboard.inputs import as_int, check_head, choice, shown
from headscope.dashboard.messages import alert, describe, guarded, safe_text
from headscope.dashboard.session import ModelSession
from headscope.errors import InputError
from headscope.experiments.attention import capture_to_store
from headscope.figures.long import (
    colour_cap,
    detail_note,
    distance_histograms,
    head_labels,
    map_detail,
    map_title,
    position_strip,
    sinks_over_position,
    tiled_map,
    typed_array,
)
from headscope.figures.style import display_token, message_figure
from headscope.models.spec import ModelSpec
from headscope.models.tokens import TokenBatch
from headscope.records.stats import HeadStats
from headscope.records.store import MapStore

#: Largest text file the page takes (bytes) and largest text (characters).
MAX_UPLOAD_BYTES = 16 << 20
MAX_TEXT_CHARS = 4_000_000
#: The map overview: the finest pyramid level with at most this many cells a side.
#: 256 (about two pixels a cell on a 1400 px page) keeps a head switch near 100 ms
#: at 8k tokens; 512 drew in about 150 ms, with a p95 near the 300 ms target on a
#: loaded 2-core machine (docs/benchmarks.md). Zooming in shows the finer levels.
OVERVIEW_CELLS = 256
#: A zoomed window is shown at the finest level with at most this many cells a side.
DETAIL_CELLS = 512
TOPK_CHOICES = (0, 4, 8, 16)
REDUCE_CHOICES = ("max", "mean")
STRIP_REDUCE_CHOICES = ("mean", "max")
#: Captures kept on disk (oldest removed first); each holds its maps' pyramids.
MAX_CAPTURES_ON_DISK = 6
#: (HeadStats field, title, colour-bar title, fixed range or None)
STRIPS: tuple[tuple[str, str, str, tuple[float, float] | None], ...] = (
    ("entropy", "Entropy", "nats", None),
    ("sink_mass", "Sink mass", "mass", (0.0, 1.0)),
    ("previous_token_mass", "Previous-token mass", "mass", (0.0, 1.0)),
    ("mean_distance", "Mean distance", "tokens", None),
)
STRIP_IDS = tuple(f"lc-strip-{name}" for name, *_ in STRIPS)
_KEY = re.compile(r"[0-9a-f]{24}")
_NUL = "\x00"


# -- layout ----------------------------------------------------------------------------------------


def default_head(spec: ModelSpec | None) -> str | None:
    """The head shown first: head 0 of the last layer (induction-like heads sit late)."""
    return None if spec is None else head_value(spec.n_layers - 1, 0)


def head_value(layer: int, head: int) -> str:
    return f"{int(layer)}-{int(head)}"


def parse_head(spec: ModelSpec, value: object) -> tuple[int, int]:
    """(layer, head) from the picker's "layer-head" value, checked against the model."""
    if not isinstance(value, str) or value.count("-") != 1:
        raise InputError(f"pick a head: got {shown(value)}")
    layer, head = value.split("-")
    return check_head(spec, as_int(layer), as_int(head))


def head_options(spec: ModelSpec | None, stored: set[tuple[int, int]] = frozenset()) -> list:
    """The head picker's options: `l.h`, with ▣ for heads whose full map is on disk."""
    if spec is None:
        return []
    return [
        {
            "label": f"{layer}.{head}" + (" ▣" if (layer, head) in stored else ""),
            "value": head_value(layer, head),
        }
        for layer in range(spec.n_layers)
        for head in range(spec.n_heads)
    ]


def layout(session: ModelSession) -> list:
    spec = session.spec
    context = f"{spec.n_ctx:,}" if spec is not None else "?"
    first = default_head(spec)
    return [
        dcc.Store(id="lc-capture"),
        *page_header(
            "Long context",
            f"A text of up to the model's context ({context} tokens), from a file or pasted: "
            "statistics of every head per position, and a zoomable map of chosen heads "
            "streamed to disk and served tile by tile.",
            "lc-message",
        ),
        card(
            None,
            html.Div(
                [
                    html.Div(
                        [
                            dcc.Upload(
                                html.Div(
                                    [
                                        "Drop a UTF-8 text file here or ",
                                        html.U("choose one"),
                                        f" (up to {MAX_UPLOAD_BYTES >> 20} MiB)",
                                    ]
                                ),
                                id="lc-upload",
                                max_size=MAX_UPLOAD_BYTES,
                                multiple=False,
                                className="hs-upload",
                                style={
                                    "border": "1px dashed var(--hs-line)",
                                    "borderRadius": "6px",
                                    "padding": "8px 10px",
                                    "marginBottom": "6px",
                                    "cursor": "pointer",
                                    "fontSize": "13px",
                                },
                            ),
                            dcc.Textarea(
                                id="lc-text",
                                placeholder="…or paste the text here",
                                spellCheck=False,
                                value="",
                                style={
                                    "width": "560px",
                                    "height": "96px",
                                    "fontFamily": "var(--hs-mono)",
                                    "fontSize": "12px",
                                },
                            ),
                            html.Div(id="lc-text-info", className="hs-muted"),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("full maps to store", htmlFor="lc-map-heads"),
                            dcc.Dropdown(
                                id="lc-map-heads",
                                multi=True,
                                value=[first] if first else [],
                                options=head_options(spec),
                                placeholder="the picked head's map is always stored",
                                style={"width": "260px"},
                            ),
                            html.Label("top-k keys per query", htmlFor="lc-topk"),
                            dcc.Dropdown(
                                id="lc-topk",
                                value=8,
                                clearable=False,
                                options=[
                                    {"label": "off" if k == 0 else str(k), "value": k}
                                    for k in TOPK_CHOICES
                                ],
                                style={"width": "120px"},
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Button("Capture", id="lc-run", className="hs-button", n_clicks=0),
                ],
                className="hs-controls",
            ),
            progress_block("lc"),
        ),
        card(
            "Head",
            dcc.RadioItems(
                id="lc-head",
                options=head_options(spec),
                value=first,
                inline=True,
                inputStyle={"marginRight": "3px"},
                labelStyle={"marginRight": "10px", "fontFamily": "var(--hs-mono)"},
            ),
            html.Div(id="lc-head-info", className="hs-muted", style={"marginTop": "6px"}),
            note="Statistics cover every head; ▣ marks heads whose full map is on disk.",
        ),
        html.Div(
            [
                card(
                    "Map",
                    dcc.RadioItems(
                        id="lc-map-reduce",
                        options=[{"label": f" block {r} ", "value": r} for r in REDUCE_CHOICES],
                        value="max",
                        inline=True,
                    ),
                    graph("lc-map", message="Run a capture", height=640),
                    html.Pre(id="lc-exact", className="hs-exact"),
                    note="Queries down, keys across. The overview is a coarse level of the map "
                    "on disk; zoom in (drag a box) for finer levels of the visible window, "
                    "down to exact weights; double-click to zoom out. Click a cell for its "
                    "tokens and weight.",
                ),
                card(
                    "Sinks over position",
                    graph("lc-sinks", message="Run a capture", height=330),
                    card(
                        "Attention by distance",
                        graph("lc-hist", message="Run a capture", height=300),
                    ),
                    note="α_k: key mass / the queries that see key k (Xiao et al. 2023).",
                ),
            ],
            className="hs-grid-main",
        ),
        card(
            "Per head × position",
            dcc.RadioItems(
                id="lc-strip-reduce",
                options=[{"label": f" block {r} ", "value": r} for r in STRIP_REDUCE_CHOICES],
                value="mean",
                inline=True,
            ),
            html.Div(
                [graph(key, message="Run a capture", height=260) for key in STRIP_IDS],
                className="hs-grid-2",
            ),
            note="One row per head; long prompts are reduced in blocks of positions for "
            "display (each title says by how much).",
        ),
    ]


# -- text in -------------------------------------------------------------------------------------


def decode_upload(contents: object, filename: object) -> str:
    """The text of an uploaded file (dcc.Upload's data URL), decoded strictly as
    UTF-8 (a leading byte-order mark dropped); InputError, one line, otherwise."""
    name = safe_text(filename, 120) if isinstance(filename, str) and filename else "the file"
    if not isinstance(contents, str) or "," not in contents:
        raise InputError(f"{name} could not be read: no file contents arrived")
    header, _, payload = contents.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise InputError(f"{name} could not be read: unexpected upload encoding")
    if len(payload) > (MAX_UPLOAD_BYTES * 4) // 3 + 8:
        raise InputError(f"{name} is larger than {MAX_UPLOAD_BYTES >> 20} MiB")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name} could not be read: the upload is not valid base64") from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise InputError(f"{name} is larger than {MAX_UPLOAD_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{name} is not UTF-8 text: byte 0x{data[error.start]:02x} at offset "
            f"{error.start} cannot be decoded; save the file as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")
    if _NUL in text:
        raise InputError(f"{name} holds NUL bytes: it is not a text file")
    if not text.strip():
        raise InputError(f"{name} is empty")
    return text


def check_text(session: ModelSession, text: object) -> TokenBatch:
    """The text as one prompt of at most the model's context (not the dashboard's
    512-token cap); InputError when missing, empty, huge, not text, or too long."""
    model = session.require_model()
    if not isinstance(text, str) or not text.strip():
        raise InputError("no text yet: drop a text file or paste text, then press Capture")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(
            f"the text has {len(text):,} characters; the page takes at most {MAX_TEXT_CHARS:,}"
        )
    if _NUL in text:
        raise InputError("the text holds NUL characters: paste text, not binary data")
    n_ctx = model.spec.n_ctx
    batch = model.tokenize(text, max_length=n_ctx)
    return batch


def text_info(session: ModelSession, text: str, source: str | None = None) -> str:
    """`name: 12,345 characters · 8,192 tokens · context 8,192` (or why it does not fit)."""
    model = session.require_model()
    n_tokens = len(model.tokenize(text, max_length=MAX_TEXT_CHARS).ids[0])
    limit = model.spec.n_ctx
    where = f"{safe_text(source, 120)}: " if source else ""
    line = f"{where}{len(text):,} characters · {n_tokens:,} tokens · context {limit:,}"
    if n_tokens > limit:
        line += f" — {n_tokens - limit:,} tokens too many: shorten the text"
    return line


def upload_outputs(session: ModelSession, contents: object, filename: object) -> tuple:
    """(text box value, info line, message) for an upload."""
    if contents is None:
        raise PreventUpdate
    text = decode_upload(contents, filename)
    return text, text_info(session, text, filename if isinstance(filename, str) else None), None


# -- the capture job -----------------------------------------------------------------------------


def captures_folder(cache: str | os.PathLike) -> Path:
    return Path(cache) / "longcontext"


def capture_key(session: ModelSession, text: str, heads: list[tuple[int, int]], top_k: int) -> str:
    model = session.require_model()
    identity = [model.spec.name, model.weights_hash, text, sorted(heads), top_k]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


def chosen_map_heads(spec: ModelSpec, values: object, head: object) -> list[tuple[int, int]]:
    """The heads whose full maps go to disk: the dropdown's plus the picked head."""
    chosen: set[tuple[int, int]] = set()
    for value in [*(values if isinstance(values, list) else []), head]:
        try:
            chosen.add(parse_head(spec, value))
        except InputError:
            continue
    return sorted(chosen)


def run_capture(
    session: ModelSession,
    folder: str | os.PathLike,
    text: object,
    map_heads: object,
    top_k: object,
    head: object,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[dict, Any]:
    """Capture `text` (stats of every head, the chosen heads' maps and top-k to a
    store) into `folder/<key>/`, unless that capture is already there. Returns
    (the page's capture data, a message)."""
    report = progress or (lambda done, total, label: None)
    spec = session.require_model().spec
    batch = check_text(session, text)
    assert isinstance(text, str)
    heads = chosen_map_heads(spec, map_heads, head)
    k = choice(top_k, TOPK_CHOICES, 8)
    key = capture_key(session, text, heads, k)
    base = Path(folder)
    target = base / key
    n = int(batch.ids.shape[1])
    data = {"key": key, "tokens": n, "heads": [list(h) for h in heads], "top_k": k}
    if _complete(target):
        os.utime(target)  # recently used: pruned last
        return data, alert(f"{n:,} tokens · captured before (from the cache)", kind="info")
    base.mkdir(parents=True, exist_ok=True)
    _prune(base, keep=MAX_CAPTURES_ON_DISK - 1)
    work = base / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        report(0, spec.n_layers + 1, f"capturing {n:,} tokens…")

        def layer_done(done: int, total: int) -> None:
            report(done, total + 1, f"layer {done} of {total} captured")

        with session.lock:
            stats, _ = capture_to_store(
                session.require_model(),
                batch,
                work / "maps.zarr",
                heads=heads,
                top_k=k or None,
                progress=layer_done,
                store_meta={"text_sha256": hashlib.sha256(text.encode()).hexdigest()},
            )
        report(spec.n_layers, spec.n_layers + 1, "saving the statistics…")
        stats.save(work / "stats")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    maps = ", ".join(f"{a}.{b}" for a, b in heads) or "none"
    topk = f" · top-{k} keys of every head" if k else ""
    return data, alert(f"{n:,} tokens captured · full maps on disk: {maps}{topk}", kind="info")


def _complete(target: Path) -> bool:
    return (target / "stats" / "record.json").is_file() and (target / "maps.zarr").is_dir()


def _prune(base: Path, keep: int) -> None:
    """Remove the least recently used captures beyond `keep`, and the work
    folders of jobs whose process is gone (killed before it could clean up)."""
    entries = sorted(
        (p for p in base.iterdir() if p.is_dir() and _KEY.fullmatch(p.name)),
        key=lambda p: p.stat().st_mtime,
    )
    for old in entries[: max(0, len(entries) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    for work in base.glob(".*.tmp"):
        parts = work.name.split(".")
        pid = as_int(parts[2]) if len(parts) == 5 else None
        if pid is not None and not _alive(pid):
            shutil.rmtree(work, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# -- reading a capture back (server process) -----------------------------------------------------


@dataclass(eq=False)
class LoadedCapture:
    """One capture, read back once: the statistics, the map store and what the
    figures derive from them."""

    key: str
    stats: HeadStats
    store: MapStore
    alpha: np.ndarray  # [layer, head, key] sink scores α_k
    labels: list[str]
    memo: dict

    @property
    def n(self) -> int:
        return int(self.stats.token_ids.shape[-1])

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(self.stats.tokens)


_LOADED: LRUCache[LoadedCapture] = LRUCache(4)
#: Map tiles (chunk × chunk float32 cells) read from the stores, shared by every page.
_TILES: LRUCache[np.ndarray] = LRUCache(4096, max_bytes=256 << 20, size_of=lambda a: a.nbytes)


def load_capture(folder: str | os.PathLike, data: object) -> LoadedCapture:
    """The capture the page's `lc-capture` data names (read once per server process)."""
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        raise InputError("no capture yet: drop a text file or paste text, then press Capture")
    key = data["key"]
    if not _KEY.fullmatch(key):
        raise InputError("the capture key from the page is malformed; press Capture again")
    target = Path(folder) / key

    if not _complete(target):  # pruned since (a reader must not see missing chunks as 0)
        raise InputError("this capture is no longer on disk; press Capture again")

    def create() -> LoadedCapture:
        stats = HeadStats.load(target / "stats")
        store = MapStore.open(target / "maps.zarr")
        spec = stats.spec
        return LoadedCapture(
            key=key,
            stats=stats,
            store=store,
            alpha=stats.sink_scores().numpy(),
            labels=head_labels(range(spec.n_layers), range(spec.n_heads)),
            memo={},
        )

    return _LOADED.get_or_create(str(target), create)


def read_window(
    capture: LoadedCapture,
    layer: int,
    head: int,
    level: int,
    rows: tuple[int, int],
    cols: tuple[int, int],
    reduce: str,
) -> np.ndarray:
    """Cells [rows) × [cols) of a pyramid level, assembled from cached store tiles
    (one zarr chunk each)."""
    store = capture.store
    size = store.chunk
    side = store.side(level)
    r0, r1 = max(0, rows[0]), min(side, rows[1])
    c0, c1 = max(0, cols[0]), min(side, cols[1])
    out = np.empty((r1 - r0, c1 - c0), dtype=np.float32)
    for ti in range(r0 // size, (r1 - 1) // size + 1):
        for tj in range(c0 // size, (c1 - 1) // size + 1):
            tile_key = (str(store.path), layer, head, level, reduce, ti, tj)
            tile = _TILES.get(tile_key)
            if tile is None:
                tile = store.tile(layer, head, level, ti * size, tj * size, size, reduce)
                _TILES.put(tile_key, tile)
            tr0, tc0 = ti * size, tj * size
            a0, a1 = max(r0, tr0), min(r1, tr0 + tile.shape[0])
            b0, b1 = max(c0, tc0), min(c1, tc0 + tile.shape[1])
            out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = tile[
                a0 - tr0 : a1 - tr0, b0 - tc0 : b1 - tc0
            ]
    return out


def overview_level(store: MapStore) -> int:
    return store.level_for(store.n_tokens, OVERVIEW_CELLS)


# -- figures -------------------------------------------------------------------------------------


def capture_outputs(
    session: ModelSession, folder: str | os.PathLike, data: object, strip_reduce: object
) -> tuple:
    """(the four strips, the distance histograms, the head picker's options):
    every head at once, built once per capture and reduction."""
    capture = load_capture(folder, data)
    reduce = choice(strip_reduce, STRIP_REDUCE_CHOICES, "mean")

    def build() -> tuple:
        stats = capture.stats
        spec = stats.spec
        rows = spec.n_layers * spec.n_heads
        strips = []
        for name, title, unit, bounds in STRIPS:
            values = getattr(stats, name).reshape(rows, -1)
            low, high = bounds if bounds is not None else (None, None)
            strips.append(
                position_strip(
                    values,
                    capture.labels,
                    title=title,
                    colorbar_title=unit,
                    reduce=reduce,
                    zmin=low,
                    zmax=high,
                )
            )
        histogram = distance_histograms(
            stats.distance_histogram.reshape(rows, -1),
            stats.distance_bin_edges,
            capture.labels,
        )
        options = head_options(spec, set(capture.store.heads))
        return (*strips, histogram, options)

    return _memo(capture, ("strips", reduce), build)


def _memo(capture: LoadedCapture, key: object, compute: Callable[[], Any]) -> Any:
    if key not in capture.memo:
        capture.memo[key] = compute()
    return capture.memo[key]


def head_outputs(
    session: ModelSession,
    folder: str | os.PathLike,
    data: object,
    head_value_: object,
    reduce: object,
) -> tuple:
    """(map figure, sinks figure, head info line) of the picked head: the map's
    overview level from the store (cached tiles), the sinks from the cached
    statistics. Nothing is computed from the model."""
    capture = load_capture(folder, data)
    spec = capture.stats.spec
    layer, head = parse_head(spec, head_value_)
    how = choice(reduce, REDUCE_CHOICES, "max")
    stats = capture.stats
    name = f"{layer}.{head}"
    sinks = sinks_over_position(
        capture.alpha[layer, head],
        stats.sink_mass[layer, head].numpy(),
        capture.tokens,
        head=name,
        sink_keys=stats.sink_keys,
    )
    store = capture.store
    if (layer, head) in store.heads:
        level = overview_level(store)
        side = store.side(level)
        overview = read_window(capture, layer, head, level, (0, side), (0, side), how)
        figure = tiled_map(
            overview,
            n_tokens=capture.n,
            factor=store.factor(level),
            reduce=how,
            head=name,
            revision=f"{capture.key}|{name}",
        )
        on_disk = (
            f"full map on disk ({store.levels} levels, ×1 to ×{store.factor(store.levels - 1)})"
        )
    else:
        stored = ", ".join(f"{a}.{b}" for a, b in store.heads) or "none"
        figure = message_figure(
            f"No map of head {name} on disk (stored: {stored}). Add it to 'full maps to "
            "store' and press Capture; the statistics cover every head."
        )
        on_disk = "no map on disk"
    info = (
        f"head {name} · {on_disk} · mean entropy {float(stats.entropy[layer, head].mean()):.3f} "
        f"nats · mean sink mass {float(stats.sink_mass[layer, head].mean()):.3f} · mean "
        f"previous-token mass {float(stats.previous_token_mass[layer, head].mean()):.3f} · "
        f"mean distance {float(stats.mean_distance[layer, head].mean()):.1f} tokens"
    )
    return figure, sinks, info


def visible_window(relayout: object, n: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The (query rows, key columns) a zoom shows, in tokens, from plotly's
    relayoutData; None for a reset (autorange, or a view of the whole map);
    PreventUpdate for events that are not about the axes."""
    if not isinstance(relayout, dict):
        raise PreventUpdate
    if relayout.get("xaxis.autorange") or relayout.get("yaxis.autorange"):
        return None

    def axis(name: str) -> tuple[float, float] | None:
        pair = relayout.get(f"{name}.range")
        if isinstance(pair, list) and len(pair) == 2:
            low, high = pair
        elif f"{name}.range[0]" in relayout and f"{name}.range[1]" in relayout:
            low, high = relayout[f"{name}.range[0]"], relayout[f"{name}.range[1]"]
        else:
            return None
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (low, high)):
            return None
        return min(low, high), max(low, high)

    x, y = axis("xaxis"), axis("yaxis")
    if x is None and y is None:
        raise PreventUpdate
    full = (-0.5, n - 0.5)
    x, y = x or full, y or full

    def cells(span: tuple[float, float]) -> tuple[int, int]:
        start = int(min(max(math.floor(span[0] + 0.5), 0), n - 1))
        stop = int(min(max(math.ceil(span[1] + 0.5), start + 1), n))
        return start, stop

    rows, cols = cells(y), cells(x)
    if rows == (0, n) and cols == (0, n):
        return None
    return rows, cols


def zoom_patch(
    session: ModelSession,
    folder: str | os.PathLike,
    data: object,
    head_value_: object,
    reduce: object,
    relayout: object,
) -> Patch:
    """A Patch of the map figure for a zoom: the detail trace (trace 1) filled
    with the finest level at which the visible window fits DETAIL_CELLS cells a
    side, read tile by tile from the store; hidden again on a reset."""
    capture = load_capture(folder, data)
    layer, head = parse_head(capture.stats.spec, head_value_)
    store = capture.store
    if (layer, head) not in store.heads:
        raise PreventUpdate
    how = choice(reduce, REDUCE_CHOICES, "max")
    window = visible_window(relayout, capture.n)
    name = f"{layer}.{head}"
    coarse = overview_level(store)
    base_title = map_title(capture.n, name, store.factor(coarse), how)
    patch = Patch()
    if window is None:
        patch["data"][1]["visible"] = False
        patch["layout"]["title"]["text"] = base_title
        return patch
    rows, cols = window
    level = store.level_for(max(rows[1] - rows[0], cols[1] - cols[0]), DETAIL_CELLS)
    if level >= coarse:
        patch["data"][1]["visible"] = False
        patch["layout"]["title"]["text"] = base_title
        return patch
    factor = store.factor(level)
    cell_rows = (rows[0] // factor, -(-rows[1] // factor))
    cell_cols = (cols[0] // factor, -(-cols[1] // factor))
    detail = read_window(capture, layer, head, level, cell_rows, cell_cols, how)
    for prop, value in map_detail(
        detail, row0=cell_rows[0], col0=cell_cols[0], factor=factor, reduce=how
    ).items():
        patch["data"][1][prop] = typed_array(value) if isinstance(value, np.ndarray) else value
    covered_rows = (cell_rows[0] * factor, min(capture.n, cell_rows[1] * factor))
    covered_cols = (cell_cols[0] * factor, min(capture.n, cell_cols[1] * factor))
    patch["layout"]["title"]["text"] = base_title + detail_note(
        factor, how, covered_rows, covered_cols
    )
    if how == "mean":
        side = store.side(coarse)
        overview = read_window(capture, layer, head, coarse, (0, side), (0, side), how)
        patch["layout"]["coloraxis"]["cmax"] = colour_cap(overview, detail)
    return patch


def exact_cell(
    session: ModelSession,
    folder: str | os.PathLike,
    data: object,
    head_value_: object,
    click: object,
) -> str:
    """The tokens and exact weight of a clicked map cell (plain text), and the
    query's top-k keys when they were stored."""
    if not isinstance(click, dict):
        return ""
    try:
        point = click["points"][0]
        query, key = round(float(point["y"])), round(float(point["x"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return ""
    capture = load_capture(folder, data)
    layer, head = parse_head(capture.stats.spec, head_value_)
    n = capture.n
    if not (0 <= query < n and 0 <= key < n) or (layer, head) not in capture.store.heads:
        return ""
    tokens = capture.tokens
    weight = float(capture.store.read(layer, head, 0, (query, query + 1), (key, key + 1))[0, 0])
    lines = [
        f"query {query} {display_token(tokens[query])} → key {key} "
        f"{display_token(tokens[key])}: weight {weight:.6f}"
    ]
    store = capture.store
    if store.top_k:
        keys, weights = store.topk(layer, head, (query, query + 1))
        top = [
            f"{int(k)} {display_token(tokens[int(k)])} ({float(w):.4f})"
            for k, w in zip(keys[0], weights[0], strict=True)
            if k >= 0
        ]
        lines.append(f"top-{store.top_k} keys of query {query}: " + ", ".join(top))
    return "\n".join(lines)


# -- callbacks -----------------------------------------------------------------------------------


def _failed_job(message: str) -> tuple:
    return no_update, alert(message)


def register(app: Dash, session: ModelSession, manager) -> None:
    folder = captures_folder(manager.handle.directory)
    blank = message_figure

    @app.callback(
        Output("lc-text", "value"),
        Output("lc-text-info", "children"),
        Output("lc-message", "children", allow_duplicate=True),
        Input("lc-upload", "contents"),
        State("lc-upload", "filename"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: (no_update, "", alert(m)), "the upload")
    def _upload(contents, filename):
        return upload_outputs(session, contents, filename)

    @app.callback(
        Output("lc-capture", "data"),
        Output("lc-message", "children"),
        Input("lc-run", "n_clicks"),
        State("lc-text", "value"),
        State("lc-map-heads", "value"),
        State("lc-topk", "value"),
        State("lc-head", "value"),
        **job_options("lc", manager),
    )
    @on_death(_failed_job, "the long-context capture")
    def _run(set_progress, _clicks, text, map_heads, top_k, head):
        def report(done, total, label):
            set_progress((str(done), str(total), label))

        try:
            return run_capture(session, folder, text, map_heads, top_k, head, report)
        except Exception as error:
            return no_update, alert(describe(error, "the long-context capture"))

    @app.callback(
        *(Output(key, "figure") for key in STRIP_IDS),
        Output("lc-hist", "figure"),
        Output("lc-head", "options"),
        Input("lc-capture", "data"),
        Input("lc-strip-reduce", "value"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: (*(blank(m) for _ in STRIP_IDS), blank(m), no_update), "the statistics")
    def _strips(data, reduce):
        return capture_outputs(session, folder, data, reduce)

    @app.callback(
        Output("lc-map", "figure"),
        Output("lc-sinks", "figure"),
        Output("lc-head-info", "children"),
        Input("lc-head", "value"),
        Input("lc-capture", "data"),
        Input("lc-map-reduce", "value"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: (blank(m), blank(m), m), "the head")
    def _head(head, data, reduce):
        return head_outputs(session, folder, data, head, reduce)

    @app.callback(
        Output("lc-map", "figure", allow_duplicate=True),
        Input("lc-map", "relayoutData"),
        State("lc-capture", "data"),
        State("lc-head", "value"),
        State("lc-map-reduce", "value"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: no_update, "the zoom")
    def _zoom(relayout, data, head, reduce):
        return zoom_patch(session, folder, data, head, reduce, relayout)

    @app.callback(
        Output("lc-exact", "children"),
        Input("lc-map", "clickData"),
        State("lc-capture", "data"),
        State("lc-head", "value"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: m, "the exact values")
    def _exact(click, data, head):
        return exact_cell(session, folder, data, head, click)
