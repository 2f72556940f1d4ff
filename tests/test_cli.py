"""The CLI: head table, record output, and one-line errors with non-zero exits."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from headscope.cli import app
from headscope.records.attention import AttentionRecord

runner = CliRunner()


def test_models_lists_builtins():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "toy-induction" in result.output and "minilm" in result.output
    assert "save_pretrained" in result.output


def test_capture_prints_the_head_table_and_writes_the_record(tiny_dirs, tmp_path):
    out = tmp_path / "rec"
    result = runner.invoke(
        app,
        ["capture", "--model", str(tiny_dirs["gpt2"]), "--prompt", "t5 t6 t7", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "head"])
    rows = [line.split() for line in lines[header + 1 : header + 9]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(l, h) for l in range(2) for h in range(4)]
    record = AttentionRecord.load(out)
    assert record.pattern.shape == (2, 4, 4, 4)
    # the printed previous-token column matches the record
    prev = record.pattern[1, 2].diagonal(offset=-1).mean().item()
    assert abs(float(rows[6][5]) - prev) < 1e-3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model", "--prompt", "hi"], "not a built-in model"),
        (["--model", "TINY", "--prompt", "  "], "the prompt is empty"),
        (["--model", "TINY", "--prompt", " ".join(["t5"] * 70)], "context is 64 tokens"),
        (["--model", "/no/such/dir", "--prompt", "hi"], "no model directory"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(tiny_dirs, args, message):
    args = [str(tiny_dirs["gpt2"]) if a == "TINY" else a for a in args]
    result = runner.invoke(app, ["capture", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_unwritable_output_directory(tiny_dirs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(
        app,
        [
            "capture",
            "--model",
            str(tiny_dirs["gpt2"]),
            "--prompt",
            "t5",
            "--out",
            str(blocker / "x"),
        ],
    )
    assert result.exit_code == 2
    assert "not a directory" in result.stderr


def test_dashboard_unknown_model_is_a_one_line_error():
    result = runner.invoke(app, ["dashboard", "--model", "no-such-model"])
    assert result.exit_code == 2
    assert "not a built-in model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dashboard_serves_on_loopback_and_prints_its_url(tmp_path):
    """`headscope dashboard` in a real process: prints the URL, serves the app on
    127.0.0.1 with debug off, and stops cleanly."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headscope",
            "dashboard",
            "--model",
            "toy-induction",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "http://" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line or process.poll() is None, "the dashboard exited before serving"
        assert f"http://127.0.0.1:{port}/" in line
        for _ in range(100):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        assert b"headscope" in page
        assert b"_dash-debug-menu" not in page and b'"debug": true' not in page.lower()
        assert b"cdn" not in page.lower()
    finally:
        process.terminate()
        process.wait(timeout=30)
