"""The dashboard with no model: a saved capture (`create_app(record=...)`,
`headscope dashboard --record`) or a saved report (`report=...`, `--report`)
serves what it holds, and every page that needs a model says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dash_client import DashClient
from typer.testing import CliRunner

from headscope.cli import app as cli
from headscope.dashboard import offline, routes
from headscope.dashboard.app import create_app, stop_app
from headscope.errors import HeadscopeError, InputError, RecordFormatError
from headscope.experiments.attention import capture

PROMPT = "red cat blue dog sun tree red cat blue dog sun"
MODEL_PAGES = [page for page in routes.NAV_PAGES if page.kind not in ("overview", "head")]


def text_of(response) -> str:
    return response.get_data(as_text=True)


def responses(response) -> dict:
    return json.loads(text_of(response))["response"]


@pytest.fixture(scope="module")
def saved_capture(toy_model, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("capture") / "toy"
    capture(toy_model, toy_model.tokenize(PROMPT)).save(directory)
    return directory


@pytest.fixture(scope="module")
def record_app(saved_capture):
    app = create_app(record=saved_capture)
    yield app
    stop_app(app)


def test_a_saved_capture_is_served_with_no_model(record_app, toy_model, saved_capture):
    session = record_app.headscope_session
    assert session.model is None and record_app.headscope_warm_up is None
    assert session.spec == toy_model.spec and session.prompt_texts == (PROMPT,)
    client = DashClient(record_app)
    store = {"prompt": PROMPT}
    got = responses(client.call("overview-grid", {"prompt-store.data": store}))
    # the grid's thumbnails are the saved maps (each scaled to its own maximum)
    live = capture(toy_model, toy_model.tokenize(PROMPT)).pattern.numpy()
    figure = got["overview-grid"]["figure"]
    pitch, size = figure["layout"]["meta"]["pitch"], figure["layout"]["meta"]["size"]
    z = np.asarray(decode(figure["data"][0]["z"]), dtype=np.float64)
    for layer in range(2):
        for head in range(4):
            cell = z[layer * pitch : layer * pitch + size, head * pitch : head * pitch + size]
            expected = live[layer, head] / live[layer, head].max()
            np.testing.assert_allclose(cell, expected, atol=1e-5)
    assert got["overview-message"]["children"] is None
    # the prompt box shows the capture's text, read-only, and says there is no model
    prompt = responses(client.call("prompt-store", {"url.search": "", "prompt-store.data": None}))
    assert prompt["prompt-store"]["data"]["prompt"] == PROMPT
    assert "no model loaded" in prompt["prompt-info"]["children"]


def decode(value):
    """A plotly array as sent by dash: a list, or a base64 typed array."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(s) for s in shape.split(",")]
        return array.reshape(shape) if shape else array
    return value


def test_the_head_page_of_a_capture_shows_its_map(record_app, toy_model):
    client = DashClient(record_app)
    got = responses(
        client.call("rec-head-title", {"url.pathname": "/head/1/3", "prompt-store.data": None})
    )
    assert got["rec-head-title"]["children"] == "Layer 1, head 3"
    z = np.asarray(decode(got["rec-head-map"]["figure"]["data"][0]["z"]), dtype=np.float64)
    live = capture(toy_model, toy_model.tokenize(PROMPT)).map(1, 3).numpy()
    np.testing.assert_allclose(z, live, atol=1e-6)
    assert "entropy" in json.dumps(got["rec-head-stats"])
    refused = responses(
        client.call("rec-head-title", {"url.pathname": "/head/5/0", "prompt-store.data": None})
    )
    assert "layer 5 does not exist" in json.dumps(refused["rec-head-message"])


@pytest.mark.parametrize("page", MODEL_PAGES, ids=[page.kind for page in MODEL_PAGES])
def test_pages_that_need_a_model_say_so(record_app, page):
    client = DashClient(record_app)
    content = text_of(client.call("page-content", {"page-path.data": page.path}))
    assert "This page needs a model" in content and "--model toy-induction" in content


def test_head_stats_without_maps_give_the_summaries(toy_model, tmp_path):
    from headscope.records.stats import HeadStats

    record = capture(toy_model, toy_model.tokenize(PROMPT))
    stats = capture(toy_model, toy_model.tokenize(PROMPT), mode="stats")
    assert isinstance(stats, HeadStats) and stats.maps is None
    stats.save(tmp_path / "stats")
    app = create_app(record=tmp_path / "stats")
    try:
        session = app.headscope_session
        assert session.model is None and session.record is None
        client = DashClient(app)
        got = responses(client.call("rec-stats-entropy", {"prompt-store.data": None}))
        entropy = np.asarray(
            decode(got["rec-stats-entropy"]["figure"]["data"][0]["z"]), dtype=np.float64
        )
        # the mean entropy of each head, from the maps of an independent capture
        pattern = record.pattern.double()
        expected = -(pattern * pattern.clamp_min(1e-30).log()).sum(-1).mean(-1).numpy()
        np.testing.assert_allclose(entropy, expected, atol=1e-4)
        content = text_of(client.call("page-content", {"page-path.data": "/"}))
        assert "no maps were saved" in content
    finally:
        stop_app(app)


def test_head_stats_with_maps_give_the_grid(toy_model, tmp_path):
    stats = capture(toy_model, toy_model.tokenize(PROMPT), mode="stats", layers=[0, 1])
    assert stats.maps is not None
    stats.save(tmp_path / "stats")
    app = create_app(record=tmp_path / "stats")
    try:
        session = app.headscope_session
        assert session.model is None and session.record is not None
        client = DashClient(app)
        got = responses(client.call("overview-grid", {"prompt-store.data": None}))
        assert got["overview-message"]["children"] is None
        assert got["overview-grid"]["figure"]["data"]
    finally:
        stop_app(app)


def test_capture_loading_refuses_what_is_not_a_capture(tmp_path, saved_capture):
    with pytest.raises(InputError, match="does not exist"):
        offline.load_capture(tmp_path / "nowhere")
    (tmp_path / "record.json").write_text("{not json")
    with pytest.raises(RecordFormatError, match="not valid JSON"):
        offline.load_capture(tmp_path)
    (tmp_path / "record.json").write_text(json.dumps({"schema": "something.else"}))
    with pytest.raises(RecordFormatError, match="no attention record"):
        offline.load_capture(tmp_path)
    # a file inside the capture names its directory
    assert offline.load_capture(saved_capture / "record.json").spec.name == "toy-induction"
    with pytest.raises(InputError, match="not both"):
        create_app(record=saved_capture, report=saved_capture)


def test_the_report_schema_is_the_writers_schema():
    from headscope.reports import writers

    assert offline.REPORT_SCHEMA == writers.SCHEMA
    assert writers.SCHEMA_VERSION in offline.REPORT_VERSIONS


@pytest.fixture(scope="module")
def saved_report(toy_model, tmp_path_factory) -> Path:
    from headscope.reports.config import ReportConfig
    from headscope.reports.job import run_report

    root = tmp_path_factory.mktemp("report")
    prompts = root / "prompts.jsonl"
    lines = Path("examples/induction.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = ReportConfig(
        model="toy-induction",
        prompts=str(prompts),
        methods=("ablation", "gradient"),
        shard_size=4,
        seeds=1,
        chg_steps=1,
    )
    out = root / "out"
    run_report(config, out, model=toy_model, progress=False)
    return out


def test_a_saved_report_shows_its_scores_with_intervals(saved_report):
    document = json.loads((saved_report / "report.json").read_text())
    app = create_app(report=saved_report)
    try:
        assert app.headscope_session.model is None
        client = DashClient(app)
        content = responses(client.call("page-content", {"page-path.data": "/importance"}))
        page = json.dumps(content)
        for method, block in document["aggregates"].items():
            assert f"report-method-{method}" in page
            # the heatmap holds the report's means, the hover its intervals
            figure = _find_figure(content, f"report-{method}")
            z = np.asarray(decode(figure["data"][0]["z"]), dtype=np.float64)
            for row in block["heads"]:
                if row["mean"] is not None:
                    assert z[row["layer"], row["head"]] == pytest.approx(row["mean"], abs=1e-6)
            assert "95% bootstrap over 4 prompts" in json.dumps(figure)
        playground = text_of(client.call("page-content", {"page-path.data": "/playground"}))
        assert "This page needs a model" in playground
        head = text_of(client.call("page-content", {"page-path.data": "/head/0/0"}))
        assert "This page needs a model" in head
    finally:
        stop_app(app)


def _find_figure(tree, graph_id: str) -> dict:
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            props = item.get("props")
            if isinstance(props, dict) and props.get("id") == graph_id and "figure" in props:
                return props["figure"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise KeyError(graph_id)


def test_report_loading_refuses_other_files(tmp_path, saved_capture):
    with pytest.raises(HeadscopeError, match="no report.json|holds a saved capture"):
        offline.load_report(saved_capture)
    (tmp_path / "report.json").write_text(json.dumps({"schema": "headscope.report"}))
    with pytest.raises(RecordFormatError, match="schema version"):
        offline.load_report(tmp_path)
    (tmp_path / "report.json").write_text(
        json.dumps({"schema": "headscope.report", "schema_version": 2, "model": {}})
    )
    with pytest.raises(RecordFormatError, match="malformed"):
        offline.load_report(tmp_path)


def test_cli_flags_are_mutually_exclusive(saved_capture):
    runner = CliRunner()
    result = runner.invoke(
        cli, ["dashboard", "--record", str(saved_capture), "--model", "toy-induction"]
    )
    assert result.exit_code == 2
    assert "--model and --record cannot be combined" in result.output
    result = runner.invoke(
        cli, ["dashboard", "--record", str(saved_capture), "--report", str(saved_capture)]
    )
    assert result.exit_code == 2 and "--record and --report cannot be combined" in result.output
    result = runner.invoke(cli, ["dashboard", "--record", "/no/such/capture"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_the_cli_serves_a_saved_capture(saved_capture, tmp_path):
    """`headscope dashboard --record DIR` in a real process: serves the capture
    (its title names it) and stops cleanly on SIGTERM."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "headscope", "dashboard"),
            *("--record", str(saved_capture), "--port", str(port)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "http://" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line or process.poll() is None, "the dashboard exited before serving"
        assert f"http://127.0.0.1:{port}/" in line
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert "the saved capture “toy”" in page
    finally:
        process.terminate()
        assert process.wait(timeout=30) in (0, 143, -15)


def test_a_capture_of_several_prompts_serves_each(toy_model, tmp_path):
    prompts = ["red cat red cat", "sun moon star fish sun moon star fish"]
    capture(toy_model, prompts).save(tmp_path / "batch")
    app = create_app(record=tmp_path / "batch")
    try:
        session = app.headscope_session
        assert session.prompt_texts == tuple(prompts)
        client = DashClient(app)
        search = routes.search_for(prompts[1])
        box = responses(client.call("prompt-store", {"url.search": search}))
        assert box["prompt-store"]["data"]["prompt"] == prompts[1]
        assert "prompt 2 of 2" in box["prompt-info"]["children"]
        got = responses(client.call("overview-grid", {"prompt-store.data": {"prompt": prompts[1]}}))
        assert "moon" in json.dumps(got["overview-tokens"])
        # each prompt's maps are its own, trimmed to its length
        state = session.state(prompts[1])
        assert state.record.pattern.shape[-1] == len(toy_model.tokenize(prompts[1]).tokens[0])
        unknown = responses(client.call("prompt-store", {"url.search": "?prompt=other"}))
        assert "not one of the saved capture's prompts" in json.dumps(unknown["model-message"])
    finally:
        stop_app(app)
