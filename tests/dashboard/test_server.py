"""The dashboard's server side without a browser: routes, input checks, the
prompt cache, the app factory and run_dashboard."""

from __future__ import annotations

import threading
import time

import pytest
from dash import no_update

from headscope.dashboard import routes, shell
from headscope.dashboard.app import create_app, run_dashboard
from headscope.dashboard.background import job_options
from headscope.dashboard.cache import LRUCache
from headscope.dashboard.components import progress_block
from headscope.dashboard.inputs import (
    check_gates,
    check_head,
    check_index,
    choice,
    clicked_head,
    clicked_index,
    prompt_lines,
)
from headscope.dashboard.session import ModelSession, check_prompt_text
from headscope.errors import HeadscopeError, InputError

XSS = "<img src=x onerror=alert(1)>"


# -- routes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "layer", "head"),
    [
        ("/", "overview", None, None),
        (None, "overview", None, None),
        ("/head/1/3", "head", 1, 3),
        ("/head/1/3/", "head", 1, 3),
        ("/head", "head", 0, 0),
        ("/flow", "flow", None, None),
        ("/playground/", "playground", None, None),
        ("/head/x/3", "missing", None, None),
        ("/../etc/passwd", "missing", None, None),
    ],
)
def test_parse_path(path, kind, layer, head):
    assert routes.parse_path(path) == routes.Route(kind, layer, head)


def test_prompt_round_trips_through_the_url():
    for prompt in ("red cat", "a&b=c?d#e", XSS, "naïve ✓"):
        assert routes.prompt_from_search(routes.search_for(prompt)) == prompt
    assert routes.prompt_from_search("") is None
    assert routes.href("/head/1/3", "red cat") == "/head/1/3?prompt=red+cat"


# -- input checks --------------------------------------------------------------------------------


def test_check_head_refuses_out_of_range(toy_model):
    spec = toy_model.spec
    assert check_head(spec, "1", 3) == (1, 3)
    for layer, head in ((2, 0), (0, 4), (-1, 0), ("a", 0), (None, 0)):
        with pytest.raises(InputError):
            check_head(spec, layer, head)


def test_clicked_head_reads_customdata_or_axes_and_validates(toy_model):
    spec = toy_model.spec
    assert clicked_head({"points": [{"customdata": [1, 2], "x": 9, "y": 9}]}, spec) == (1, 2)
    assert clicked_head({"points": [{"x": 3, "y": 0, "z": 0.4}]}, spec) == (0, 3)
    assert clicked_head({"points": [{"x": 30, "y": 0}]}, spec) is None
    assert clicked_head({"points": []}, spec) is None
    assert clicked_head("junk", spec) is None


def test_clicked_index_takes_only_a_shown_chip():
    assert clicked_index({"type": "flow-token", "index": 3}, [0, 0, 0, 1], 10) == 3
    assert clicked_index({"type": "flow-token", "index": 3}, [0, 0, 0, 0], 10) is None  # no click
    assert clicked_index({"type": "flow-token", "index": 12}, [1], 10) is None  # not shown
    assert clicked_index({"type": "flow-token", "index": -1}, [1], 10) is None
    assert clicked_index({"type": "flow-token", "index": "2"}, [1], 10) == 2
    assert clicked_index({"type": "flow-token", "index": True}, [1], 10) is None
    assert clicked_index("flow-token", [1], 10) is None
    assert clicked_index({"type": "flow-token", "index": 1}, None, 10) is None


def test_background_jobs_name_their_progress_block():
    options = job_options("imp", manager=None)
    ids = [output.component_id for output in options["progress"]]
    assert ids == ["imp-progress", "imp-progress", "imp-progress-label"]
    running = [entry[0].component_id for entry in options["running"]]
    assert running == ["imp-progress-block", "imp-run", "imp-cancel"]
    block = progress_block("imp")  # the ids the options name exist in the block
    shown = {block.id, *(child.id for child in block.children)}
    assert set(ids) | {"imp-progress-block", "imp-cancel"} <= shown
    quiet = job_options("flow", manager=None, run_button=False, prevent_initial_call=False)
    assert [e[0].component_id for e in quiet["running"]] == ["flow-progress-block", "flow-cancel"]
    assert quiet["prevent_initial_call"] is False and quiet["background"] is True


def test_whitelists_and_gates(toy_model):
    assert choice("evil", ("zero", "mean"), "zero") == "zero"
    assert check_index(-1, 5) == 4
    assert check_index("x", 5, default=2) == 2
    with pytest.raises(InputError):
        check_index(7, 5)
    spec = toy_model.spec
    assert check_gates("nope", spec) == [[1.0] * 4, [1.0] * 4]
    assert check_gates([[0, 2, "x", 0.5], [1, 1, 1, 1]], spec)[0] == [0.0, 1.0, 1.0, 0.5]
    with pytest.raises(InputError):
        prompt_lines("\n  \n")
    assert prompt_lines("a\n\n b \n") == ["a", "b"]


def test_prompt_text_checks():
    with pytest.raises(InputError, match="empty"):
        check_prompt_text("   ")
    with pytest.raises(InputError):
        check_prompt_text(None)
    with pytest.raises(InputError, match="characters"):
        check_prompt_text("a" * 20_001)


# -- the prompt cache ---------------------------------------------------------------------------


def test_lru_evicts_by_count_and_bytes():
    cache = LRUCache(2)
    for key in "abc":
        cache.put(key, key)
    assert "a" not in cache and len(cache) == 2
    cache.get("b")
    cache.put("d", "d")
    assert "c" not in cache and "b" in cache
    sized = LRUCache(10, max_bytes=10, size_of=len)
    sized.put("x", "123456")
    sized.put("y", "123456")
    assert "x" not in sized and "y" in sized
    sized.put("z", "0123456789abc")  # alone over budget: kept, everything else goes
    assert list(sized._items) == ["z"]


def test_lru_computes_a_missing_value_once_for_concurrent_callers():
    cache = LRUCache(4)
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.05)
        return "value"

    threads = [threading.Thread(target=cache.get_or_create, args=("k", slow)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and cache.get("k") == "value"


def test_session_caches_per_prompt(toy_session):
    first = toy_session.state("red cat blue dog red cat blue dog")
    assert toy_session.state("red cat blue dog red cat blue dog") is first
    assert first.record.pattern.shape[:2] == (2, 4)


# -- the prompt box ------------------------------------------------------------------------------


def test_first_visit_uses_the_default_prompt(toy_session):
    store, search, value, info, message = shell.resolve_prompt(toy_session, None, "", None, None)
    assert store == {"prompt": value, "search": search} and search == routes.search_for(value)
    assert "21 tokens" in info and message is None


def test_url_prompt_wins_and_run_stores_typed_text(toy_session):
    store, search, value, _, _ = shell.resolve_prompt(
        toy_session, None, "?prompt=red+cat", None, {"prompt": "sun moon"}
    )
    assert store == {"prompt": "red cat", "search": "?prompt=red+cat"}
    assert search is no_update and value == "red cat"
    store, search, value, _, _ = shell.resolve_prompt(
        toy_session, "prompt-run", "?prompt=red+cat", "tea cup", {"prompt": "red cat"}
    )
    assert store["prompt"] == "tea cup" and search == "?prompt=tea+cup"


def test_bad_prompts_are_refused_with_a_visible_message(toy_session):
    for typed, text in (("   ", "empty"), ("red " * 200, "context is 128 tokens")):
        store, search, _value, _info, message = shell.resolve_prompt(
            toy_session, "prompt-run", "", typed, {"prompt": "red cat"}
        )
        assert store is no_update and search is no_update
        assert text in message.children[0].children and "hs-alert" in message.className


def test_markup_prompts_are_kept_as_text(toy_session):
    store, *_ = shell.resolve_prompt(toy_session, "prompt-run", "", XSS, None)
    assert store["prompt"] == XSS


def test_router_renders_pages_and_a_not_found_card():
    pages = {kind: (lambda kind=kind: [kind]) for kind in routes.PAGE_KINDS}
    assert shell.render_page(pages, "/head/0/1") == ["head"]
    assert shell.render_page(pages, "/flow") == ["flow"]
    assert "Page not found" in str(shell.render_page(pages, "/nope"))
    assert '"flow", "importance"' in shell.ROUTING_SCRIPT


# -- the app -------------------------------------------------------------------------------------


def test_create_app_serves_locally_with_every_page(toy_model):
    app = create_app(model=toy_model)
    assert app.config.serve_locally is True
    assert "http" not in app.index_string
    client = app.server.test_client()
    page = client.get("/head/1/3?prompt=red")
    assert page.status_code == 200
    assert b"cdn" not in page.data.lower()
    scripts = [line for line in page.data.decode().split('"') if line.endswith(".js")]
    assert scripts and all(not s.startswith("http") for s in scripts)
    assert app.headscope_session.model is toy_model


def test_unknown_model_gives_an_app_that_says_why():
    app = create_app("no-such-model-anywhere")
    session = app.headscope_session
    assert session.model is None and "no-such-model-anywhere" in session.load_error
    assert "could not be loaded" in str(app.layout)
    with pytest.raises(HeadscopeError, match="not loaded"):  # each page says so
        session.state("red cat")


def test_run_dashboard_binds_loopback_without_debug(monkeypatch, toy_model):
    """Defaults: 127.0.0.1:8050, debug off; the socket is bound before anything
    else (the warnings and the URL are checked in test_lifecycle.py)."""
    import inspect

    from headscope.dashboard import app as app_module
    from headscope.errors import ServeError

    calls = []

    def fake_listen(host, port):
        calls.append((host, port))
        raise ServeError("stop here")

    monkeypatch.setattr(app_module, "listen", fake_listen)
    with pytest.raises(ServeError, match="stop here"):
        run_dashboard(toy_model)
    assert calls == [("127.0.0.1", 8050)]
    assert inspect.signature(run_dashboard).parameters["debug"].default is False


def test_session_load_failure_is_captured():
    session = ModelSession.load("/no/such/dir")
    assert session.model is None and session.spec is None
    assert "not loaded" in shell.model_line(session)


def test_browser_values_of_the_wrong_kind_are_refused_or_defaulted(toy_model):
    from headscope.dashboard.inputs import as_int, check_fraction
    from headscope.dashboard.messages import alert, safe_text
    from headscope.dashboard.position import check_ratio

    assert [as_int(v) for v in (3, "4", 5.0, " 6 ")] == [3, 4, 5, 6]
    for junk in (True, 1.5, float("inf"), float("nan"), "1e3", "9" * 5000, None, [1], {"a": 1}):
        assert as_int(junk) is None
    for junk in (10**400, float("inf"), "nan", [0.5], True):
        assert check_fraction(junk, 0.7) == 0.7 and check_ratio(junk, 3.0) == 3.0
    with pytest.raises(InputError, match="must be integers"):
        check_head(toy_model.spec, float("inf"), 0)
    assert check_index(float("inf"), 5, default=4) == 4
    assert (
        routes.parse_path(42).kind == "missing" and routes.parse_path("/" * 3000).kind == "missing"
    )
    assert routes.prompt_from_search(12345) is None
    with pytest.raises(InputError, match="lone surrogate"):
        check_prompt_text("red \ud800 cat")
    assert safe_text("a\udc00b") == "a\ufffdb" and safe_text(7) == ""
    assert len(safe_text("x" * 50, limit=10)) == 11
    assert alert("bad \ud800").children == "bad \ufffd"
