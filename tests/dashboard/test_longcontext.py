"""The long-context page: its callbacks as plain functions on a tiny random
GPT-2 with a 2048-token context (texts past the dashboard's 512-token cap),
and one browser run that captures, switches heads and zooms the tiled map
(screenshot: artifacts/dashboard/long.png)."""

from __future__ import annotations

import base64
import random
import time

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from browser_wait import until
from dash import Patch
from dash.exceptions import PreventUpdate

import headscope as hs
from headscope.dashboard import longcontext as lc
from headscope.dashboard import routes
from headscope.dashboard.app import create_app
from headscope.dashboard.session import ModelSession
from headscope.errors import InputError
from headscope.records.store import MapStore

XSS = "<img src=x onerror=alert(1)>"
N_CONTEXT = 2048


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    from tiny_models import VOCAB, tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=32,
        vocab_size=VOCAB,
        n_positions=N_CONTEXT,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=1,
    )
    directory = tmp_path_factory.mktemp("long-gpt2")
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return hs.load_model(directory)


@pytest.fixture(scope="module")
def session(long_model):
    return ModelSession(long_model)


def words(n: int, seed: int = 0) -> str:
    """A text of n words of the tiny vocabulary (n + 1 tokens with <bos>)."""
    rng = random.Random(seed)
    return " ".join(f"t{rng.randrange(3, 100)}" for _ in range(n))


def data_url(payload: bytes) -> str:
    return "data:text/plain;base64," + base64.b64encode(payload).decode()


@pytest.fixture(scope="module")
def captured(session, tmp_path_factory):
    """A 1,500-token capture with the maps of heads 1.0 and 1.2 on disk."""
    folder = tmp_path_factory.mktemp("captures")
    steps = []
    data, message = lc.run_capture(
        session,
        folder,
        words(1499),
        ["1-0"],
        8,
        "1-2",
        lambda done, total, label: steps.append((done, total, label)),
    )
    return folder, data, message, steps


# -- text in -------------------------------------------------------------------------------------


def test_uploads_decode_strictly_as_utf8():
    assert lc.decode_upload(data_url("héllo t3".encode()), "a.txt") == "héllo t3"
    assert lc.decode_upload(data_url("\ufefft3 t4".encode()), "bom.txt") == "t3 t4"
    with pytest.raises(InputError) as error:
        lc.decode_upload(data_url(b"t3 \xff\xfe t4"), "latin.txt")
    assert str(error.value) == (
        "latin.txt is not UTF-8 text: byte 0xff at offset 3 cannot be decoded; "
        "save the file as UTF-8"
    )
    for payload, message in [
        (data_url(b"t3\x00t4"), "NUL bytes"),
        (data_url(b"   \n"), "is empty"),
        ("data:text/plain;base64,@@@", "not valid base64"),
        ("data:text/plain,t3", "unexpected upload encoding"),
        (None, "no file contents"),
    ]:
        with pytest.raises(InputError, match=message) as error:
            lc.decode_upload(payload, "f.txt")
        assert "\n" not in str(error.value)


def test_upload_fills_the_box_and_counts_tokens_as_text(session):
    text, info, message = lc.upload_outputs(session, data_url(words(999).encode()), XSS + ".txt")
    assert text.startswith("t") and message is None
    assert isinstance(info, str)  # rendered as text by React, never as HTML
    assert info.startswith(XSS) and "1,000 tokens · context 2,048" in info
    too_long = lc.upload_outputs(session, data_url(words(2100).encode()), "big.txt")[1]
    assert "2,101 tokens" in too_long and "53 tokens too many" in too_long
    with pytest.raises(PreventUpdate):
        lc.upload_outputs(session, None, None)


def test_texts_past_the_512_cap_up_to_the_context(session):
    assert session.token_limit == 512  # the other pages' cap
    assert lc.check_text(session, words(1999)).ids.shape == (1, 2000)
    with pytest.raises(InputError, match="context"):
        lc.check_text(session, words(2100))
    for text, message in [(None, "no text yet"), ("  ", "no text yet"), ("t3\x00", "NUL")]:
        with pytest.raises(InputError, match=message):
            lc.check_text(session, text)


# -- the capture job and its figures --------------------------------------------------------------


def test_the_job_writes_statistics_and_a_store_then_reuses_them(session, captured):
    folder, data, message, steps = captured
    assert data["tokens"] == 1500 and data["heads"] == [[1, 0], [1, 2]] and data["top_k"] == 8
    assert "1,500 tokens captured" in message.children and "1.0, 1.2" in message.children
    assert [s[:2] for s in steps] == [(0, 3), (1, 3), (2, 3), (2, 3)]
    store = MapStore.open(folder / data["key"] / "maps.zarr")
    assert store.heads == ((1, 0), (1, 2)) and store.n_tokens == 1500
    again, message = lc.run_capture(session, folder, words(1499), ["1-0"], 8, "1-2")
    assert again == data and "from the cache" in message.children
    with pytest.raises(InputError, match="context"):
        lc.run_capture(session, folder, words(3000), [], 8, "1-2")


def test_strips_and_histograms_cover_every_head(session, captured):
    folder, data, *_ = captured
    *strips, histogram, options = lc.capture_outputs(session, folder, data, "mean")
    assert len(strips) == 4
    for figure in strips:
        assert isinstance(figure, go.Figure)
        assert np.asarray(figure.data[0].z).shape == (8, 750)  # 1,500 positions by 2
        assert "block mean over 2 positions" in figure.layout.title.text
    assert list(strips[0].data[0].y)[:2] == ["L0.H0", "L0.H1"]
    assert np.asarray(histogram.data[0].z).shape[0] == 8
    labels = {o["value"]: o["label"] for o in options}
    assert labels["1-2"] == "1.2 ▣" and labels["0-0"] == "0.0"
    maxed = lc.capture_outputs(session, folder, data, "max")[0]
    assert "block max" in maxed.layout.title.text
    assert lc.capture_outputs(session, folder, data, "mean")[0] is strips[0]  # cached


def test_head_switch_reads_the_store_not_the_model(long_model, captured, monkeypatch):
    folder, data, *_ = captured
    lc.load_capture(folder, data)  # read back once, as after the job

    def no_model(*args, **kwargs):
        raise AssertionError("a head switch must not run the model")

    monkeypatch.setattr(long_model, "forward", no_model, raising=False)
    monkeypatch.setattr(hs, "capture", no_model)
    figure, sinks, info = lc.head_outputs(None, folder, data, "1-2", "max")
    assert isinstance(figure, go.Figure) and len(figure.data) == 2
    store = MapStore.open(folder / data["key"] / "maps.zarr")
    level = lc.overview_level(store)
    assert store.factor(level) == 8 and store.side(level) == 188  # 1,500 tokens
    np.testing.assert_array_equal(
        figure.data[0].z, store.read(1, 2, level, (0, 188), (0, 188), "max")
    )
    assert "Head 1.2 · 1500 tokens · overview: block max over 8×8" in figure.layout.title.text
    assert "full map on disk" in info and "mean entropy" in info
    assert len(sinks.data) == 2 and "head 1.2" in sinks.layout.title.text
    other, _, _ = lc.head_outputs(None, folder, data, "1-0", "mean")
    assert other.layout.meta["head"] == "1.0" and other.layout.meta["reduce"] == "mean"
    missing, sinks, info = lc.head_outputs(None, folder, data, "0-3", "max")
    assert "No map of head 0.3 on disk" in str(missing.layout.annotations[0].text)
    assert "no map on disk" in info and len(sinks.data) == 2
    with pytest.raises(InputError):
        lc.head_outputs(None, folder, data, "9-9", "max")
    with pytest.raises(InputError, match="malformed"):
        lc.head_outputs(None, folder, {"key": "../../etc"}, "1-2", "max")
    with pytest.raises(InputError, match="no capture yet"):
        lc.head_outputs(None, folder, None, "1-2", "max")


def decoded(spec: dict) -> np.ndarray:
    """A plotly typed-array spec back as an array (the Patch sends z this way)."""
    assert spec["dtype"] == "f4"
    shape = tuple(int(s) for s in spec["shape"].split(","))
    return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.float32).reshape(shape)


def test_zoom_fills_the_detail_trace_from_finer_levels(captured):
    folder, data, *_ = captured
    capture = lc.load_capture(folder, data)
    store = capture.store
    full = store.read(1, 2, 0, (0, 1500), (0, 1500))
    # a 200-token window fits 512 cells at level 0: exact weights
    relayout = {
        "xaxis.range[0]": 99.6,
        "xaxis.range[1]": 299.4,
        "yaxis.range[0]": 400.5,
        "yaxis.range[1]": 199.5,
    }
    assert lc.visible_window(relayout, 1500) == ((200, 401), (100, 300))
    patch = lc.zoom_patch(None, folder, data, "1-2", "max", relayout)
    assert isinstance(patch, Patch)
    ops = {tuple(op["location"]): op["params"]["value"] for op in patch._operations}
    np.testing.assert_array_equal(decoded(ops[("data", 1, "z")]), full[200:401, 100:300])
    assert ops[("data", 1, "x0")] == 100 and ops[("data", 1, "dx")] == 1
    assert "detail: exact weights, queries 200–400" in ops[("layout", "title", "text")]
    # a 1,000-token window needs level 1 (500 cells a side), here by block mean
    wide = {"xaxis.range": [0, 1000], "yaxis.range": [1000, 0]}
    ops = {
        tuple(op["location"]): op["params"]["value"]
        for op in lc.zoom_patch(None, folder, data, "1-2", "mean", wide)._operations
    }
    blocks = full[:1002, :1002].reshape(501, 2, 501, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(decoded(ops[("data", 1, "z")]), blocks, atol=1e-7)
    assert ops[("data", 1, "dx")] == 2 and ("layout", "coloraxis", "cmax") in ops
    # a reset hides the detail again
    ops = {
        tuple(op["location"]): op["params"]["value"]
        for op in lc.zoom_patch(
            None, folder, data, "1-2", "max", {"xaxis.autorange": True}
        )._operations
    }
    assert ops[("data", 1, "visible")] is False
    with pytest.raises(PreventUpdate):
        lc.visible_window({"autosize": True}, 1500)
    with pytest.raises(PreventUpdate):
        lc.zoom_patch(None, folder, data, "0-1", "max", relayout)  # no map of 0.1


def test_a_click_gives_tokens_weight_and_top_k(captured):
    folder, data, *_ = captured
    capture = lc.load_capture(folder, data)
    text = lc.exact_cell(None, folder, data, "1-2", {"points": [{"x": 3, "y": 10.2}]})
    weight = float(capture.store.read(1, 2, 0, (10, 11), (3, 4))[0, 0])
    assert text.startswith(f"query 10 {capture.tokens[10]} → key 3 {capture.tokens[3]}")
    assert f"{weight:.6f}" in text and "top-8 keys of query 10" in text
    assert lc.exact_cell(None, folder, data, "1-2", {"points": [{"x": 3000, "y": 1}]}) == ""
    assert lc.exact_cell(None, folder, data, "1-2", "junk") == ""


def test_the_page_is_routed_and_its_layout_renders(session, toy_model):
    assert routes.parse_path("/long").kind == "long"
    assert "long" in routes.PAGE_KINDS and routes.LONG in routes.NAV_PAGES
    assert routes.LONG not in routes.PAGES  # the prompt-box pages are unchanged
    layout = lc.layout(session)
    assert any(getattr(c, "id", None) == "lc-capture" for c in layout)
    unloaded = ModelSession(None, name="gone", load_error="missing")
    assert lc.layout(unloaded)  # renders without a model
    app = create_app(model=toy_model, warm_up=False)
    page = app.server.test_client().get("/long")
    assert page.status_code == 200


# -- in a browser --------------------------------------------------------------------------------


def _map_title(dash_duo) -> str:
    return dash_duo.driver.execute_script(
        "const gd = document.querySelector('#lc-map .js-plotly-plot');"
        "return gd && gd.layout && gd.layout.title ? gd.layout.title.text : '';"
    )


@pytest.mark.browser
def test_browser_capture_head_switch_and_zoom(dash_duo, long_model, artifacts):
    app = create_app(model=long_model, warm_up=False)
    dash_duo.start_server(app)
    dash_duo.wait_for_page(dash_duo.server_url + "/long")
    dash_duo.wait_for_contains_text(".hs-page-title", "Long context", timeout=20)
    dash_duo.driver.execute_script(
        "const el = arguments[0];"
        "const set = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(el), 'value').set;"
        "set.call(el, arguments[1]);"
        "el.dispatchEvent(new Event('input', {bubbles: true}));",
        dash_duo.find_element("#lc-text"),
        words(1499, seed=5),
    )
    dash_duo.find_element("#lc-head input[value='1-2']").click()
    dash_duo.find_element("#lc-run").click()
    dash_duo.wait_for_contains_text("#lc-message", "1,500 tokens captured", timeout=120)
    until(lambda: _map_title(dash_duo).startswith("Head 1.2 · 1500 tokens"), timeout=30)
    # switch heads: the map of 1.0 (stored by default) replaces 1.2's
    dash_duo.find_element("#lc-head input[value='1-0']").click()
    until(lambda: _map_title(dash_duo).startswith("Head 1.0"), timeout=20)
    dash_duo.wait_for_contains_text("#lc-head-info", "head 1.0 · full map on disk", timeout=10)
    # zoom to a window: the detail trace arrives from the finer levels
    dash_duo.driver.execute_script(
        "const gd = document.querySelector('#lc-map .js-plotly-plot');"
        "Plotly.relayout(gd, {'xaxis.range': [0, 300], 'yaxis.range': [420, 120]});"
    )
    until(lambda: "detail: exact weights" in _map_title(dash_duo), timeout=20)
    time.sleep(0.5)
    strips = dash_duo.find_elements("#lc-strip-entropy .heatmaplayer")
    assert strips, "the entropy strip was not drawn"
    height = dash_duo.driver.execute_script("return document.body.scrollHeight")
    dash_duo.driver.set_window_size(1400, max(900, min(int(height) + 40, 4000)))
    dash_duo.driver.save_screenshot(str(artifacts / "long.png"))
    dash_duo.driver.set_window_size(1400, 1000)
    assert dash_duo.get_logs() == []


def test_old_captures_are_pruned_and_then_refused(session, tmp_path, monkeypatch):
    monkeypatch.setattr(lc, "MAX_CAPTURES_ON_DISK", 2)
    stale = tmp_path / f".{'a' * 24}.999999999.1.tmp"  # a job killed before cleaning up
    stale.mkdir()
    first, _ = lc.run_capture(session, tmp_path, words(50, seed=1), [], 0, "0-0")
    lc.load_capture(tmp_path, first)
    assert not stale.exists()
    lc.run_capture(session, tmp_path, words(50, seed=2), [], 0, "0-0")
    lc.run_capture(session, tmp_path, words(50, seed=3), [], 0, "0-0")
    assert not (tmp_path / first["key"]).exists()
    with pytest.raises(InputError, match="no longer on disk"):
        lc.head_outputs(None, tmp_path, first, "0-0", "max")
