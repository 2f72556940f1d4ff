"""Every server callback against crafted requests (Flask's test client posting
to /_dash-update-component): values of the wrong type, out-of-range or
non-integer ids, inf and nan, lone surrogates and huge strings get a message
on the page (200) or no update (204), never a 500 and a server traceback."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from dash_client import DashClient, text_of

from headscope.dashboard.app import create_app, stop_app

INF, NAN = float("inf"), float("nan")
PROMPT = {"prompt": "red cat blue dog red cat blue dog"}
SURROGATE = "red cat \ud800 dog"
HUGE = "red " * 250_000  # a million characters
CELLS = [
    {"type": "gate-cell", "layer": layer, "head": head} for layer in range(2) for head in range(4)
]
TOKENS = '{"index":["ALL"],"type":"flow-token"}'
GATES = '{"head":["ALL"],"layer":["ALL"],"type":"gate-cell"}'


@dataclass(frozen=True)
class Case:
    name: str
    output: str  # names the callback (see DashClient.dependency)
    values: dict[str, Any]
    changed: list[str] = field(default_factory=list)
    cells: list | None = None  # concrete ids of the wildcard outputs
    message: str | None = None  # text the response must carry (None: 204 allowed)


def gate_click() -> dict:
    """The playground's gate inputs after a click (the trigger says which id)."""
    return {f"{GATES}.n_clicks": [(c, 0) for c in CELLS], "play-scale.value": 1}


CASES = [
    # the prompt box (url.search, typed text, stored prompt)
    Case("search is a number", "prompt-store", {"url.search": 12345}, ["url.search"]),
    Case("search is a dict", "prompt-store", {"url.search": {"prompt": ["x"]}}, ["url.search"]),
    Case(
        "typed prompt with a lone surrogate",
        "prompt-store",
        {"prompt-run.n_clicks": 1, "prompt-input.value": SURROGATE},
        ["prompt-run.n_clicks"],
        message="lone surrogate",
    ),
    Case(
        "URL prompt with a lone surrogate",
        "prompt-store",
        {"url.search": "?prompt=" + SURROGATE},
        ["url.search"],
        message="lone surrogate",
    ),
    Case(
        "typed prompt of a million characters",
        "prompt-store",
        {"prompt-run.n_clicks": 1, "prompt-input.value": HUGE},
        ["prompt-run.n_clicks"],
        message="1,000,000 characters",
    ),
    Case(
        "stored prompt is a number",
        "prompt-store",
        {"prompt-store.data": {"prompt": 7, "search": 8}, "url.search": ""},
        ["url.search"],
    ),
    # the router
    Case("page path is a number", "page-content", {"page-path.data": 42}, message="not a path"),
    Case("page path is a list", "page-content", {"page-path.data": ["/"]}, message="not a path"),
    Case(
        "page path with a lone surrogate",
        "page-content",
        {"page-path.data": "/\ud800"},
        message="Page not found",
    ),
    Case(
        "page path of a million characters",
        "page-content",
        {"page-path.data": "/" + "x" * 1_000_000},
        message="Page not found",
    ),
    # overview: clicks that open a head
    Case(
        "click on a head out of range",
        "url",
        {"overview-grid.clickData": {"points": [{"customdata": [99, 99]}]}},
        ["overview-grid.clickData"],
    ),
    Case(
        "click at inf and nan",
        "url",
        {"overview-grid.clickData": {"points": [{"x": INF, "y": NAN}]}},
        ["overview-grid.clickData"],
    ),
    Case(
        "click payload is a string",
        "url",
        {"overview-grid.clickData": "junk"},
        ["overview-grid.clickData"],
    ),
    Case(
        "trigger names another component",
        "url",
        {"overview-grid.clickData": {"points": [{"customdata": [0, 1]}]}},
        ["nowhere.clickData"],
    ),
    # head page
    Case(
        "head path is a number",
        "head-title",
        {"url.pathname": 5, "prompt-store.data": PROMPT},
        message="must be integers",
    ),
    Case(
        "head out of range",
        "head-title",
        {"url.pathname": "/head/9999/0", "prompt-store.data": PROMPT},
        message="layer 9999 does not exist",
    ),
    Case(
        "head page prompt with a lone surrogate",
        "head-title",
        {"url.pathname": "/head/0/0", "prompt-store.data": {"prompt": SURROGATE}},
        message="lone surrogate",
    ),
    Case(
        "head picker search with a lone surrogate",
        "head-picker",
        {"prompt-store.data": {"prompt": "red cat", "search": "?\ud800"}},
        message="prompt=red+cat",
    ),
    Case(
        "head picker search is a number",
        "head-picker",
        {"prompt-store.data": {"prompt": "red cat", "search": 5}},
        message="prompt=red+cat",
    ),
    Case(
        "exact value of a click at inf",
        "head-exact",
        {
            "head-map.clickData": {"points": [{"x": INF, "y": "1e999"}]},
            "url.pathname": "/head/0/0",
            "prompt-store.data": PROMPT,
        },
    ),
    Case(
        "head statistics for a path that is a dict",
        "head-stats",
        {"head-drawn.data": "x", "url.pathname": {"a": 1}, "prompt-store.data": PROMPT},
        message="must be integers",
    ),
    Case(
        "head spectra for a huge head number",
        "head-spectra",
        {"head-drawn.data": "x", "url.pathname": "/head/0/99999999999"},
    ),
    # flow page
    Case(
        "flow options for junk",
        "flow-query",
        {"prompt-store.data": {"prompt": [1]}, "flow-layer.value": INF},
    ),
    Case(
        "token id not an integer",
        "flow-query.value@",
        {f"{TOKENS}.n_clicks": [({"index": "abc", "type": "flow-token"}, 1)]},
        ['{"index":"abc","type":"flow-token"}.n_clicks'],
    ),
    Case(
        "token id inf",
        "flow-query.value@",
        {f"{TOKENS}.n_clicks": [({"index": INF, "type": "flow-token"}, 1)]},
        ['{"index":Infinity,"type":"flow-token"}.n_clicks'],
    ),
    Case(
        "flow job: prompt with a lone surrogate, query inf",
        "flow-figure",
        {"prompt-store.data": {"prompt": SURROGATE}, "flow-query.value": INF},
        ["prompt-store.data"],
        message="lone surrogate",
    ),
    Case(
        "flow job: query inf, residual nan, layer not an integer",
        "flow-figure",
        {
            "prompt-store.data": PROMPT,
            "flow-query.value": INF,
            "flow-residual.value": NAN,
            "flow-layer.value": "x",
            "flow-head.value": 0,
        },
        ["flow-query.value"],
        message="must be integers",
    ),
    # importance, position, spectral
    Case(
        "importance job: a prompt with a lone surrogate",
        "imp-ablation",
        {"imp-run.n_clicks": 1, "imp-prompts.value": SURROGATE, "imp-methods.value": ["ablation"]},
        ["imp-run.n_clicks"],
        message="lone surrogate",
    ),
    Case(
        "importance job: a prompt set of a million characters",
        "imp-ablation",
        {"imp-run.n_clicks": 1, "imp-prompts.value": HUGE, "imp-methods.value": ["ablation"]},
        ["imp-run.n_clicks"],
        message="1,000,000 characters",
    ),
    Case(
        "sink ratio too big for a float",
        "pos-sinks",
        {"prompt-store.data": PROMPT, "pos-threshold.value": 10**400, "pos-mask.value": {"x": 1}},
        ["pos-threshold.value"],
        message="sink",
    ),
    Case(
        "sink ratio inf",
        "pos-sinks",
        {"prompt-store.data": PROMPT, "pos-threshold.value": INF, "pos-mask.value": "causal"},
        ["pos-threshold.value"],
        message="sink",
    ),
    Case(
        "spectral layer inf, head not an integer",
        "spec-spectra",
        {"spec-layer.value": INF, "spec-head.value": "x"},
        message="must be integers",
    ),
    Case("composition kind is a list", "spec-composition", {"spec-kind.value": [1]}),
    # playground: pattern-matching gate ids
    Case(
        "gate id out of range",
        "gate-cell",
        gate_click(),
        ['{"head":0,"layer":99,"type":"gate-cell"}.n_clicks'],
        cells=CELLS,
        message="layer 99 does not exist",
    ),
    Case(
        "gate id not an integer",
        "gate-cell",
        gate_click(),
        ['{"head":0,"layer":"x","type":"gate-cell"}.n_clicks'],
        cells=CELLS,
        message="must be integers",
    ),
    Case(
        "gate id inf",
        "gate-cell",
        gate_click(),
        ['{"head":Infinity,"layer":0,"type":"gate-cell"}.n_clicks'],
        cells=CELLS,
        message="must be integers",
    ),
    Case(
        "fewer gate outputs than heads",
        "gate-cell",
        gate_click(),
        ['{"head":1,"layer":0,"type":"gate-cell"}.n_clicks'],
        cells=CELLS[:3],
        message="selected head 0.1",
    ),
    Case(
        "gate outputs naming heads that do not exist",
        "gate-cell",
        gate_click(),
        ['{"head":1,"layer":0,"type":"gate-cell"}.n_clicks'],
        cells=[{"type": "gate-cell", "layer": 7, "head": "x"}, *CELLS],
        message="selected head 0.1",
    ),
    Case(
        "gate scale inf",
        "gate-cell",
        {"play-scale.value": INF, "gates-selected.data": [0, 1]},
        ["play-scale.value"],
        cells=CELLS,
        message="gate 1",
    ),
    Case(
        "gates of inf and nan",
        "play-output",
        {"prompt-store.data": PROMPT, "gates-store.data": [[INF, NAN, -INF, "x"], [1, 1, 1, 1]]},
        ["gates-store.data"],
        message="all heads on",
    ),
]


@pytest.fixture(scope="module")
def client(toy_model):
    app = create_app(model=toy_model, warm_up=False)
    yield DashClient(app)
    stop_app(app)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_crafted_payload_gets_a_message_or_no_update(client, case: Case):
    response = client.call(
        case.output, case.values, changed=case.changed, wildcard_outputs=case.cells
    )
    assert response.status_code in (200, 204), text_of(response)[:500]
    if case.message is not None:
        assert response.status_code == 200
        assert case.message in text_of(response)
    assert "Traceback" not in text_of(response)
    assert len(response.data) < 200_000  # nothing huge is echoed back


def test_a_malformed_request_is_answered_without_a_500(client):
    for body in ("{not json", json.dumps({"output": "nowhere.children"}), json.dumps([1, 2])):
        response = client.post(body)
        assert response.status_code != 500
    assert client.client.get("/_dash-layout").status_code == 200
