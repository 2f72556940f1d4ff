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
        app, ["capture", "--model", str(tiny_dirs["gpt2"]), "--prompt", "t5 t6 t7", "--out", str(out)]
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
        ["capture", "--model", str(tiny_dirs["gpt2"]), "--prompt", "t5", "--out", str(blocker / "x")],
    )
    assert result.exit_code == 2
    assert "not a directory" in result.stderr
