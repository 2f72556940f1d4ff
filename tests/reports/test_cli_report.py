"""`headscope report` on bad input: one-line errors (exit 2) naming the problem
and its lines, skip / truncate modes with messages on stderr, and stdout that
holds only the final summary (progress goes to stderr)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from headscope.cli import app

runner = CliRunner()

GOOD = '{"prompt": "red cat blue dog red cat blue dog"}'
LONG = " ".join(["red cat blue dog sun tree"] * 30)  # 180 words: over the 128-token context


def _report(prompts, out, *extra):
    args = ["report", "--model", "toy-induction", "--prompts", str(prompts), "--out", str(out)]
    return runner.invoke(app, [*args, *extra])


def _error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headscope: error: "), result.stderr
    return lines[0]


@pytest.fixture
def write(tmp_path):
    def write(name: str, *lines: str):
        path = tmp_path / name
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return write


def test_an_empty_file_is_a_clear_error(write, tmp_path):
    assert "holds no prompts" in _error(_report(write("empty.jsonl", "", "  "), tmp_path / "o"))
    assert "no prompt file" in _error(_report(tmp_path / "missing.txt", tmp_path / "o"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "ablation,saliency"], "unknown method(s) ['saliency']"),
        (["--methods", ","], "no methods given"),
        (["--metric", "accuracy"], "unknown metric 'accuracy'"),
        (["--backend", "spark"], "unknown backend 'spark'"),
        (["--on-bad-line", "ignore"], "on_bad_line must be 'fail' or 'skip'"),
        (["--on-long", "wrap"], "on_long must be 'reject' or 'truncate'"),
    ],
)
def test_unknown_choices_are_clear_errors(write, tmp_path, extra, message):
    assert message in _error(_report(write("p.jsonl", GOOD), tmp_path / "o", *extra))
    assert not (tmp_path / "o" / "report.html").exists()


def test_malformed_jsonl_lines_fail_with_their_line_numbers(write, tmp_path):
    path = write("bad.jsonl", GOOD, "{not json", GOOD, '{"prompt": "a", "answer": 3}')
    assert "line 2: not valid JSON" in _error(_report(path, tmp_path / "o"))


def test_missing_fields_name_the_method_and_the_field(write, tmp_path):
    txt = write("p.txt", "red cat blue dog red cat blue dog", "sun tree sun tree")
    message = _error(_report(txt, tmp_path / "o"))
    assert "method 'attribution' needs a 'corrupted' prompt" in message
    assert "(line 1, line 2)" in message and "--methods ablation,gradient,chg" in message
    message = _error(_report(write("p.jsonl", GOOD), tmp_path / "o", "--metric", "logit-diff"))
    assert "metric 'logit_diff'" in message and "needs an 'answer'" in message
    assert "(line 1)" in message


def test_too_long_prompts_are_rejected_with_their_lines(write, tmp_path, toy_model):
    path = write("long.jsonl", GOOD, GOOD, json.dumps({"prompt": LONG}))
    message = _error(_report(path, tmp_path / "o", "--methods", "ablation"))
    assert "exceed the model's context of 128 tokens (lines 3)" in message
    assert "--on-long truncate" in message


def test_skip_and_truncate_warn_on_stderr_and_keep_stdout_clean(write, tmp_path, toy_model):
    path = write("mixed.jsonl", GOOD, "{not json", json.dumps({"prompt": LONG}), GOOD)
    out = tmp_path / "o"
    result = _report(
        path,
        out,
        "--methods",
        "ablation,gradient",
        "--on-bad-line",
        "skip",
        "--on-long",
        "truncate",
        "--shard-size",
        "2",
    )
    assert result.exit_code == 0, result.stderr
    assert "headscope: skipped line 2: not valid JSON" in result.stderr
    assert "headscope: warning: 1 prompt(s) exceed the context of 128 tokens" in result.stderr
    assert "truncated to their last 128 tokens (lines 3)" in result.stderr
    # progress with an ETA on stderr, never on stdout
    assert "shards:" in result.stderr and "<" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"2 shard(s) computed, 0 reused; report written to {out}"
    assert [line.split()[:4] for line in lines[1:]] == [
        ["top", "heads", "by", "ablation"],
        ["top", "heads", "by", "gradient"],
    ]
    # ranked by magnitude, each score printed with its sign
    for line in lines[1:]:
        printed = re.findall(r"(\d+)\.(\d+) \(([+-][^ )]+)", line)
        assert len(printed) == 5, line
        magnitudes = [abs(float(score)) for _, _, score in printed]
        assert magnitudes == sorted(magnitudes, reverse=True), line
    document = json.loads((out / "report.json").read_text())
    assert document["prompts"]["count"] == 3
    (skipped,) = document["prompts"]["skipped"]
    assert skipped.startswith("line 2: not valid JSON")
    assert document["config"]["on_long"] == "truncate"
