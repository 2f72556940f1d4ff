"""The dashboard's view state in the URL and in saved session files.

The page is the URL's path (`routes`); the prompt its `?prompt=`; the rest is
here, as query parameters in a compact form:

- `gates=1.3:0,0.2:0.5`: the playground's head gates that are not 1, as
  `layer.head:gate` (gate in [0, 1], at most 4 decimals), sorted by head;
- `heads=1.3,0.2`: the selected head(s);
- `metric=loss`, `target=auto`: the importance page's metric and target rule;
- `layer=1`, `cluster=hierarchical`: the clusters page's heat-map layer (one of
  the model's layers) and clustering method (`analyses.clustering.CLUSTER_METHODS`);
- `score=induction`, `steps=0,3000`, `delta=importance`, `match=1`: the
  dynamics page's score over steps (a taxonomy category it offers), the two
  checkpoints it diffs (A,B: steps of the built-in series), the delta it shows
  and the layer of its head matching (a layer of the series' model);
- `retrieval=16,16,1,4`: the retrieval page's task settings (prompts, copied
  tokens, sink keys, recent window; `RETRIEVAL_SETTINGS` holds their ranges).

The browser keeps the state as canonical strings (`{"gates": "1.3:0",
"heads": "1.3", "metric": "loss", "target": "auto"}`) in two stores, so that
no callback feeds its own input: `view-state`, what the URL last set (pages
read it, and apply it when they open or the URL changes), and `view-current`,
that plus every edit since (the links, the address bar and session files use
it). A page reports its edits in its own `state_out(page)` store, which the
shell merges into `view-current`. Every value that comes from a URL or a file
is parsed and checked here against the model (`InputError` with a message
that quotes the bad value shortened and as text), never trusted.

A session file (`session_document`, `read_session`) is the same state as
JSON, versioned (`SESSION_SCHEMA`, `SESSION_VERSION`), with the model's name,
the page and the prompt; loading one is navigating to its URL
(`session_href`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

from dash import dcc

from headscope.dashboard import routes
from headscope.dashboard.inputs import shown
from headscope.dashboard.session import MAX_PROMPT_CHARS
from headscope.errors import InputError
from headscope.models.spec import ModelSpec

GATES, HEADS, METRIC, TARGET = "gates", "heads", "metric", "target"
LAYER, CLUSTER = "layer", "cluster"
SCORE, STEPS, DELTA, MATCH = "score", "steps", "delta", "match"
RETRIEVAL = "retrieval"
#: The URL parameters this module owns (the prompt is `routes`').
STATE_KEYS: tuple[str, ...] = (
    *(GATES, HEADS, METRIC, TARGET),
    *(LAYER, CLUSTER),
    *(SCORE, STEPS, DELTA, MATCH),
    RETRIEVAL,
)
#: The retrieval page's task settings, in the URL's order: (session-file key, label,
#: lowest, highest, default). The toy model runs the defaults in about 10 s.
RETRIEVAL_SETTINGS: tuple[tuple[str, str, int, int, int], ...] = (
    ("prompts", "prompts", 2, 64, 16),
    ("source", "copied tokens", 4, 48, 16),
    ("sink", "sink keys", 0, 8, 1),
    ("window", "recent window", 1, 16, 4),
)
#: Longest value of one parameter: 4 096 heads of "ll.hh:0.1234" fit.
MAX_VALUE_CHARS = 64_000
#: Gates are shown and stored with this many decimals.
GATE_DECIMALS = 4

SESSION_SCHEMA = "headscope.dashboard_session"
SESSION_VERSION = 1
#: Largest session file accepted (a prompt of MAX_PROMPT_CHARS and every head's gate fit).
MAX_SESSION_BYTES = 256 * 1024

_PLAIN_NAME = re.compile(r"[\w./:@+-]{1,80}")
_HEAD = re.compile(r"(\d{1,4})\.(\d{1,4})")
_NUMBER = re.compile(r"\d{0,3}(\.\d{0,12})?([eE][+-]?\d{1,3})?")


@dataclass(frozen=True)
class Choices:
    """What the dashboard offers for the state's pickers: the model's metrics and
    target rules, the clustering methods, and the dynamics page's scores, steps
    (of its built-in series) and deltas. An empty tuple offers nothing."""

    metrics: tuple[str, ...]
    targets: tuple[str, ...]
    methods: tuple[str, ...] = ()
    scores: tuple[str, ...] = ()
    steps: tuple[int, ...] = ()
    deltas: tuple[str, ...] = ()
    #: The layers of the dynamics series (for its matching layer) and its name.
    series_layers: int = 0
    series: str = "the series"


def state_out_id(page: str) -> dict:
    """The id of a page's store of state edits (merged by the shell into `view-current`)."""
    return {"type": "state-out", "page": page}


def state_out(page: str) -> dcc.Store:
    """The store a page writes its state edits to (`{"gates": ..., "heads": ...}`)."""
    return dcc.Store(id=state_out_id(page), storage_type="memory")


def merge_edits(current: object, edits: object) -> dict | None:
    """`current` with the state values of `edits` (canonical strings) replaced;
    None when `edits` holds none."""
    if not isinstance(edits, dict):
        return None
    changed = {k: v for k, v in edits.items() if k in STATE_KEYS and isinstance(v, str)}
    if not changed:
        return None
    base = current if isinstance(current, dict) else {}
    kept = {k: v for k, v in base.items() if k in STATE_KEYS and isinstance(v, str)}
    return {**kept, **changed}


# -- gates and heads -----------------------------------------------------------------------------


def format_gate(value: float) -> str:
    """A gate as the URL writes it: "0", "0.5", "0.05" (at most GATE_DECIMALS decimals)."""
    text = f"{round(float(value), GATE_DECIMALS):.{GATE_DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def encode_gates(grid: Sequence[Sequence[float]]) -> str:
    """The compact form of a `[layer][head]` grid of gates: every gate that is
    not 1 (after rounding to GATE_DECIMALS), e.g. "1.3:0,0.2:0.5"; "" when all are 1."""
    parts = []
    for layer, row in enumerate(grid):
        for head, gate in enumerate(row):
            text = format_gate(gate)
            if text != "1":
                parts.append(f"{layer}.{head}:{text}")
    return ",".join(parts)


def _check_head(spec: ModelSpec | None, text: str, what: str) -> tuple[int, int]:
    match = _HEAD.fullmatch(text)
    if match is None:
        raise InputError(f"{what} {shown(text)} is not a head: write it as layer.head, e.g. 1.3")
    layer, head = int(match.group(1)), int(match.group(2))
    if spec is not None:
        if layer >= spec.n_layers:
            raise InputError(
                f"{what} {layer}.{head}: layer {layer} does not exist "
                f"({spec.name} has layers 0–{spec.n_layers - 1})"
            )
        if head >= spec.n_heads:
            raise InputError(
                f"{what} {layer}.{head}: head {head} does not exist "
                f"({spec.name} has heads 0–{spec.n_heads - 1} per layer)"
            )
    return layer, head


def _items(text: object, name: str) -> list[str]:
    if not isinstance(text, str):
        raise InputError(f"the {name} must be text, got {shown(text)}")
    if len(text) > MAX_VALUE_CHARS:
        raise InputError(
            f"the {name} value has {len(text):,} characters; at most {MAX_VALUE_CHARS:,} are read"
        )
    stripped = text.strip()
    return [] if not stripped else [item.strip() for item in stripped.split(",")]


def decode_gates(text: object, spec: ModelSpec | None) -> dict[tuple[int, int], float]:
    """The gates of a compact string ("1.3:0,0.2:0.5"), checked: each entry is
    `layer.head:gate` naming a head of `spec` once, with a gate in [0, 1].
    Gates of 1 are dropped (they change nothing). InputError otherwise."""
    gates: dict[tuple[int, int], float] = {}
    for index, item in enumerate(_items(text, "gates"), 1):
        head_text, colon, value = item.partition(":")
        if not colon:
            raise InputError(
                f"gate {index} {shown(item)} has no value: write layer.head:gate, e.g. 1.3:0"
            )
        head = _check_head(spec, head_text.strip(), f"gate {index}")
        value = value.strip()
        number = float(value) if _NUMBER.fullmatch(value) and value not in ("", ".") else None
        if number is None or not math.isfinite(number) or not 0.0 <= number <= 1.0:
            raise InputError(
                f"gate {index} ({head[0]}.{head[1]}) is {shown(value)}: a gate is a number "
                "from 0 (head off) to 1 (head on)"
            )
        if head in gates:
            raise InputError(f"head {head[0]}.{head[1]} is gated twice")
        gates[head] = round(number, GATE_DECIMALS)
    return {head: gate for head, gate in gates.items() if gate != 1.0}


def gate_grid(gates: Mapping[tuple[int, int], float], spec: ModelSpec) -> list[list[float]]:
    """A `[layer][head]` grid of gates: 1 except where `gates` says otherwise."""
    grid = [[1.0] * spec.n_heads for _ in range(spec.n_layers)]
    for (layer, head), gate in gates.items():
        grid[layer][head] = float(gate)
    return grid


def encode_heads(heads: Sequence[Sequence[int]]) -> str:
    """Selected heads in the URL's form, e.g. "1.3,0.2"."""
    return ",".join(f"{int(layer)}.{int(head)}" for layer, head in heads)


def decode_heads(text: object, spec: ModelSpec | None) -> list[tuple[int, int]]:
    """The heads of "1.3,0.2", each checked against `spec` (duplicates dropped)."""
    heads: list[tuple[int, int]] = []
    for index, item in enumerate(_items(text, "heads"), 1):
        head = _check_head(spec, item, f"head {index}")
        if head not in heads:
            heads.append(head)
    return heads


def check_choice(value: object, allowed: Sequence[str], name: str) -> str:
    """`value` when it is one of `allowed`; InputError naming the choices otherwise."""
    if isinstance(value, str) and value in allowed:
        return value
    return _refuse(value, allowed, name)


def _refuse(value: object, allowed: Sequence[str], name: str) -> str:
    offered = ", ".join(allowed) if allowed else "none without a model"
    raise InputError(f"{name} {shown(value)} is not offered here (choose from: {offered})")


def decode_layer(
    text: object, spec: ModelSpec | None, n_layers: int | None = None, name: str = ""
) -> int:
    """The layer of "1", checked against `spec` (any layer without one), or
    against `n_layers` layers of the model called `name` when given."""
    if not isinstance(text, str) or re.fullmatch(r"\d{1,4}", text.strip()) is None:
        raise InputError(f"the layer {shown(text)} is not a layer number, e.g. 1")
    layer = int(text.strip())
    if n_layers is None and spec is not None:
        n_layers, name = spec.n_layers, spec.name
    if n_layers is not None and layer >= n_layers:
        raise InputError(
            f"the layer {layer} does not exist ({name} has layers 0–{n_layers - 1})"
            if n_layers
            else f"the layer {layer} does not exist (no layers are offered here)"
        )
    return layer


def decode_steps(text: object, offered: Sequence[int]) -> tuple[int, int]:
    """The two checkpoint steps (A, B) of "0,3000", each one of `offered`."""
    items = _items(text, "steps")
    steps = ", ".join(str(s) for s in offered) if offered else "none"
    if len(items) != 2 or not all(re.fullmatch(r"\d{1,12}", item) for item in items):
        raise InputError(
            f"the steps {shown(text)} are not two checkpoint steps A,B, e.g. 0,3000 "
            f"(steps: {steps})"
        )
    pair = (int(items[0]), int(items[1]))
    for step in pair:
        if step not in offered:
            raise InputError(f"the series has no checkpoint at step {step} (steps: {steps})")
    return pair


def decode_retrieval(text: object) -> tuple[int, ...]:
    """The retrieval page's settings of "16,16,1,4" (prompts, copied tokens, sink
    keys, recent window), each a whole number in its `RETRIEVAL_SETTINGS` range."""
    items = _items(text, "retrieval settings")
    names = ", ".join(label for _, label, *_ in RETRIEVAL_SETTINGS)
    if len(items) != len(RETRIEVAL_SETTINGS) or not all(
        re.fullmatch(r"\d{1,4}", item) for item in items
    ):
        raise InputError(
            f"the retrieval settings {shown(text)} are not {len(RETRIEVAL_SETTINGS)} whole "
            f"numbers ({names}), e.g. 16,16,1,4"
        )
    values = tuple(int(item) for item in items)
    for value, (_, label, low, high, _) in zip(values, RETRIEVAL_SETTINGS, strict=True):
        if not low <= value <= high:
            raise InputError(f"the retrieval page's {label} is {value}: from {low} to {high}")
    return values


def encode_retrieval(values: Sequence[int]) -> str:
    """The retrieval page's settings in the URL's form, e.g. "16,16,1,4"."""
    return ",".join(str(int(value)) for value in values)


# -- the URL -------------------------------------------------------------------------------------


def canonical(key: str, value: object, spec: ModelSpec | None, choices: Choices) -> str:
    """One state value checked and written in its canonical form."""
    if key == GATES:
        gates = decode_gates(value, spec)
        return ",".join(f"{li}.{hi}:{format_gate(g)}" for (li, hi), g in sorted(gates.items()))
    if key == HEADS:
        return encode_heads(decode_heads(value, spec))
    if key == METRIC:
        return check_choice(value, choices.metrics, "the metric")
    if key == TARGET:
        return check_choice(value, choices.targets, "the target rule")
    if key == LAYER:
        return str(decode_layer(value, spec))
    if key == CLUSTER:
        return check_choice(value, choices.methods, "the clustering method")
    if key == SCORE:
        return check_choice(value, choices.scores, "the score")
    if key == STEPS:
        return ",".join(str(step) for step in decode_steps(value, choices.steps))
    if key == DELTA:
        return check_choice(value, choices.deltas, "the delta")
    if key == MATCH:
        return str(decode_layer(value, None, choices.series_layers, choices.series))
    if key == RETRIEVAL:
        return encode_retrieval(decode_retrieval(value))
    raise InputError(f"unknown state {shown(key)}")


def state_from_search(
    search: object, spec: ModelSpec | None, choices: Choices
) -> tuple[dict[str, str], list[str]]:
    """The state values the URL's search string sets (canonical, only the keys
    it has), and one message per value that was refused. A key given twice
    counts once (its first value); anything but a string is no state at all."""
    if not isinstance(search, str) or not search or len(search) > 4 * MAX_VALUE_CHARS:
        return {}, []
    try:
        query = parse_qs(search.lstrip("?"), keep_blank_values=True, max_num_fields=64)
    except ValueError:
        return {}, ["the URL has too many parameters; its state was not read"]
    state, problems = {}, []
    for key in STATE_KEYS:
        if key not in query:
            continue
        try:
            state[key] = canonical(key, query[key][0], spec, choices)
        except InputError as error:
            problems.append(f"the URL's {key}= value was not applied: {error}")
    return state, problems


def search_with_state(prompt: str | None, state: Mapping[str, object]) -> str:
    """The search string of a view: the prompt, then every state value (empty ones too,
    so that a link clears what it does not set)."""
    params = {"prompt": prompt} if prompt else {}
    for key in STATE_KEYS:
        value = state.get(key)
        if isinstance(value, str):
            params[key] = value
    return f"?{urlencode(params)}" if params else ""


# -- session files -------------------------------------------------------------------------------


def session_document(
    model_name: str,
    page: str,
    prompt: str | None,
    state: Mapping[str, object] | None,
    spec: ModelSpec | None,
) -> dict:
    """A session file's contents: what the URL holds, readable. Values of the
    wrong type (the browser sends JSON) are left out."""
    from headscope import __version__

    state = state if isinstance(state, Mapping) else {}
    route = routes.parse_path(page)
    if route.kind == "missing":
        page = "/"
    gates: list[dict] = []
    heads: list[dict] = []
    try:
        decoded = decode_gates(state.get(GATES) or "", spec)
        gates = [{"layer": li, "head": hi, "gate": g} for (li, hi), g in sorted(decoded.items())]
        heads = [{"layer": li, "head": hi} for li, hi in decode_heads(state.get(HEADS) or "", spec)]
    except InputError:
        pass
    layer = _or_none(lambda: decode_layer(state.get(LAYER), spec))
    steps = _or_none(lambda: list(decode_steps(state.get(STEPS), _state_steps(state))))
    match = _or_none(lambda: decode_layer(state.get(MATCH), None))
    retrieval = _or_none(
        lambda: dict(
            zip(
                (key for key, *_ in RETRIEVAL_SETTINGS),
                decode_retrieval(state.get(RETRIEVAL)),
                strict=True,
            )
        )
    )
    return {
        "schema": SESSION_SCHEMA,
        "schema_version": SESSION_VERSION,
        "headscope_version": __version__,
        "model": model_name,
        "layers": spec.n_layers if spec is not None else None,
        "heads_per_layer": spec.n_heads if spec is not None else None,
        "page": page,
        "prompt": prompt if isinstance(prompt, str) else None,
        "gates": gates,
        "heads": heads,
        "metric": state.get(METRIC) if isinstance(state.get(METRIC), str) else None,
        "target": state.get(TARGET) if isinstance(state.get(TARGET), str) else None,
        "layer": layer,
        "cluster": state.get(CLUSTER) if isinstance(state.get(CLUSTER), str) else None,
        "score": state.get(SCORE) if isinstance(state.get(SCORE), str) else None,
        "steps": steps,
        "delta": state.get(DELTA) if isinstance(state.get(DELTA), str) else None,
        "match": match,
        "retrieval": retrieval,
    }


def _or_none(read: Callable[[], object]) -> object:
    """What `read` returns; None when it refuses its value (InputError)."""
    try:
        return read()
    except InputError:
        return None


def _state_steps(state: Mapping[str, object]) -> tuple[int, ...]:
    """The steps a state's `steps` value names (its own check; read_session checks
    them against the series)."""
    value = state.get(STEPS)
    items = value.split(",") if isinstance(value, str) else []
    return tuple(int(item) for item in items if re.fullmatch(r"\s*\d{1,12}\s*", item))


def session_json(document: Mapping) -> str:
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def upload_bytes(contents: object) -> bytes:
    """The bytes of a dcc.Upload `contents` (a base64 data URL), at most
    MAX_SESSION_BYTES; InputError for anything else."""
    if not isinstance(contents, str) or "," not in contents:
        raise InputError("the upload is not a file")
    header, _, body = contents.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise InputError("the upload is not a file")
    if len(body) > (MAX_SESSION_BYTES + 2) // 3 * 4 + 4:
        raise InputError(
            f"the session file is larger than {MAX_SESSION_BYTES // 1024} KiB: "
            "not a headscope session"
        )
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the upload could not be read (invalid base64)") from None
    if len(data) > MAX_SESSION_BYTES:
        raise InputError(
            f"the session file is larger than {MAX_SESSION_BYTES // 1024} KiB: "
            "not a headscope session"
        )
    return data


def _field(document: Mapping, key: str, kinds: type | tuple, what: str):
    value = document.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise InputError(f"the session file's {key!r} must be {what}")
    return value


def _pairs(items: object, key: str, with_gate: bool) -> list:
    if not isinstance(items, list) or len(items) > 65_536:
        raise InputError(f"the session file's {key!r} must be a list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise InputError(f"the session file's {key!r} must hold objects with layer and head")
        layer, head = item.get("layer"), item.get("head")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (layer, head)):
            raise InputError(f"the session file's {key!r}: layer and head must be integers")
        if with_gate:
            gate = item.get("gate")
            if not isinstance(gate, int | float) or isinstance(gate, bool):
                raise InputError(f"the session file's gate of {layer}.{head} must be a number")
            out.append(f"{layer}.{head}:{gate!r}")
        else:
            out.append(f"{layer}.{head}")
    return out


def read_session(
    data: bytes, model_name: str, spec: ModelSpec | None, choices: Choices
) -> tuple[str, str | None, dict[str, str]]:
    """(page path, prompt, state) of a session file, checked: JSON of this
    schema and version, saved for `model_name` (another model is refused with
    its name), a known page, a prompt that is text, gates, heads, metric,
    target, layer, clustering method, score, steps, delta, matching layer and
    retrieval settings valid here (the last seven are optional: files saved
    before they existed still load).
    InputError with a clear message otherwise."""
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError("the session file is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise InputError(
            f"the session file is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg})"
        ) from None
    except RecursionError:
        raise InputError("the session file is nested too deeply: not a headscope session") from None
    if not isinstance(document, dict) or document.get("schema") != SESSION_SCHEMA:
        raise InputError(f'not a headscope session file (no "schema": {SESSION_SCHEMA!r})')
    version = document.get("schema_version")
    if version != SESSION_VERSION or isinstance(version, bool):
        raise InputError(
            f"the session file has schema version {shown(version)}; this headscope reads "
            f"version {SESSION_VERSION}"
        )
    saved_for = _field(document, "model", str, "the model's name")
    if saved_for != model_name:
        plain = _PLAIN_NAME.fullmatch(saved_for) is not None
        option = f"--model {saved_for}" if plain else "--model with that model"
        raise InputError(
            f"this session was saved with the model {shown(saved_for, 80)}; this dashboard "
            f"serves {model_name!r}: start it with {option} to open it"
        )
    page = _field(document, "page", str, "a page path")
    if len(page) > routes.MAX_PATH_CHARS or routes.parse_path(page).kind == "missing":
        raise InputError(f"the session's page {shown(page)} is not a page of the dashboard")
    prompt = document.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise InputError(
            f"the session's prompt must be text of at most {MAX_PROMPT_CHARS:,} characters"
        )
    state: dict[str, str] = {
        GATES: canonical(
            GATES, ",".join(_pairs(document.get("gates", []), "gates", True)), spec, choices
        ),
        HEADS: canonical(
            HEADS, ",".join(_pairs(document.get("heads", []), "heads", False)), spec, choices
        ),
    }
    for key, name in ((METRIC, "the metric"), (TARGET, "the target rule")):
        value = document.get(key)
        if value is not None:
            state[key] = check_choice(value, getattr(choices, key + "s"), name)
    # Fields added after version 1's first files: absent or null in older ones.
    for key, name, allowed in (
        (CLUSTER, "the clustering method", choices.methods),
        (SCORE, "the score", choices.scores),
        (DELTA, "the delta", choices.deltas),
    ):
        value = document.get(key)
        if value is not None:
            state[key] = check_choice(value, allowed, name)
    for key in (LAYER, MATCH):
        layer = document.get(key)
        if layer is not None:
            if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
                raise InputError(f"the session file's {key!r} must be a layer number")
            state[key] = canonical(key, str(layer), spec, choices)
    steps = document.get(STEPS)
    if steps is not None:
        if not isinstance(steps, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps
        ):
            raise InputError("the session file's 'steps' must be a list of two steps [A, B]")
        state[STEPS] = canonical(STEPS, ",".join(str(s) for s in steps), spec, choices)
    settings = document.get(RETRIEVAL)
    if settings is not None:
        keys = [key for key, *_ in RETRIEVAL_SETTINGS]
        if (
            not isinstance(settings, dict)
            or set(settings) != set(keys)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in settings.values())
        ):
            raise InputError(
                "the session file's 'retrieval' must hold whole numbers for "
                + ", ".join(repr(key) for key in keys)
            )
        state[RETRIEVAL] = canonical(
            RETRIEVAL, encode_retrieval([settings[key] for key in keys]), spec, choices
        )
    return page, prompt, state


def session_href(page: str, prompt: str | None, state: Mapping[str, str]) -> str:
    return page + search_with_state(prompt, state)
