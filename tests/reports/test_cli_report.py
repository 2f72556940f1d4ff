"""`headscope report` on bad input: one-line errors (exit 2) naming the problem
and its lines, skip / truncate modes with messages on stderr, and stdout that
holds only the final summary (progress goes to stderr). Faults too: prompt
files that are not UTF-8 text, Ray options without the Ray backend, an
unreachable Ray cluster, a full disk, a directory where a report file goes, a
file where the checkpoints go, no permission: one line each, nothing published."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pandas as pd
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


# -- one-line answers to bad input and faults ----------------------------------------------------

FAST_ARGS = ("--shard-size", "4", "--seeds", "2", "--chg-steps", "20", "--no-progress")
OUTPUTS = ("head_scores.csv", "head_scores.parquet", "report.json", "report.html")


def _finished(local_report, tmp_path) -> Path:
    """A copy of the reference run's checkpoints, without its report files."""
    out = tmp_path / "finished"
    shutil.copytree(local_report.out_dir, out)
    for name in OUTPUTS:
        (out / name).unlink()
    return out


def _nothing_published(out: Path) -> None:
    assert [name for name in OUTPUTS if (out / name).exists()] == []
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("utf16.jsonl", (GOOD + "\n").encode("utf-16"), "is UTF-16 text (byte order mark)"),
        ("utf16.txt", "red cat\nblue dog\n".encode("utf-16"), "is UTF-16 text (byte order mark)"),
        (
            "binary.txt",
            b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
            "line 1: not UTF-8 text (byte 0x89)",
        ),
        (
            "latin1.txt",
            "red cat\ncafé au lait\n".encode("latin-1"),
            "line 2: not UTF-8 text (byte 0xe9)",
        ),
        ("nul.txt", b"red cat\n" + "blue dog".encode("utf-16-le"), "line 2: a NUL byte"),
    ],
)
def test_a_file_that_is_not_utf8_text_is_one_line_naming_the_line(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    line = _error(_report(path, tmp_path / "o", "--methods", "ablation"))
    assert f"{path}" in line and message in line and "save it as UTF-8 text" in line
    assert not (tmp_path / "o").exists()


def test_a_lone_surrogate_is_a_malformed_line(write, tmp_path):
    path = write("s.jsonl", GOOD, '{"prompt": "red cat \\ud800 blue dog"}', GOOD)
    line = _error(_report(path, tmp_path / "o", "--methods", "ablation"))
    assert "line 2: 'prompt' holds a lone surrogate (\\ud800)" in line


def test_an_empty_out_is_refused(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write("p.jsonl", GOOD)
    assert "--out is empty" in _error(_report(path, "", "--methods", "ablation"))
    assert "--out is empty" in _error(_report(path, "  ", "--methods", "ablation"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--address", "127.0.0.1:6379"], "--address only apply to the ray backend"),
        (["--workers", "3"], "--workers only apply to the ray backend"),
        (["--workers", "2", "--address", "a:1"], "--address and --workers only apply"),
        (["--backend", "ray", "--workers", "0"], "--workers must be at least 1, got 0"),
        (["--connect-timeout", "0"], "--connect-timeout must be positive"),
    ],
)
def test_ray_options_without_the_ray_backend_are_refused(write, tmp_path, extra, message):
    line = _error(_report(write("p.jsonl", GOOD), tmp_path / "o", "--methods", "ablation", *extra))
    assert message in line
    assert not (tmp_path / "o").exists()


def test_a_malformed_ray_address_is_one_line(write, tmp_path, toy_model):
    line = _error(
        _report(
            write("p.jsonl", GOOD),
            tmp_path / "o",
            "--methods",
            "ablation",
            "--backend",
            "ray",
            "--address",
            "no-port-here",
        )
    )
    assert "the Ray address 'no-port-here' is not host:port" in line


def test_an_unreachable_ray_address_is_one_line_within_the_timeout(write, tmp_path, toy_model):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"  # closed once the probe is
    start = time.monotonic()
    result = _report(
        write("p.jsonl", GOOD),
        tmp_path / "o",
        "--methods",
        "ablation",
        "--no-progress",
        "--backend",
        "ray",
        "--address",
        address,
        "--connect-timeout",
        "5",
    )
    assert time.monotonic() - start < 60  # model, ray import and the 5 s bound
    line = _error(result)
    assert f"cannot reach the Ray cluster at {address}" in line and "ray start --head" in line


def test_a_full_disk_is_one_line_and_publishes_nothing(
    local_report, prompts_file, tmp_path, monkeypatch
):
    out = _finished(local_report, tmp_path)

    def full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    line = _error(_report(prompts_file, out, *FAST_ARGS))
    assert f"cannot write {out / 'head_scores.csv'}: No space left on device" in line
    assert "free some space" in line
    _nothing_published(out)


def test_a_directory_where_report_json_goes_is_one_line(local_report, prompts_file, tmp_path):
    out = _finished(local_report, tmp_path)
    (out / "report.json").mkdir()
    (out / "report.json" / "keep.txt").write_text("mine")
    line = _error(_report(prompts_file, out, *FAST_ARGS))
    assert f"cannot write {out / 'report.json'}: it is a directory; remove it" in line
    assert (out / "report.json" / "keep.txt").read_text() == "mine"
    (out / "report.json" / "keep.txt").unlink()
    (out / "report.json").rmdir()
    _nothing_published(out)


def test_a_file_where_the_checkpoints_go_is_one_line(prompts_file, tmp_path, toy_model):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".shards").write_text("not a folder")
    line = _error(_report(prompts_file, out, *FAST_ARGS))
    assert "cannot create the checkpoint folder" in line
    assert f"{out / '.shards'} is a file, not a directory; remove it" in line
    assert (out / ".shards").read_text() == "not a folder"


def test_an_unwritable_output_directory_is_one_line(
    local_report, prompts_file, tmp_path, monkeypatch
):
    out = _finished(local_report, tmp_path)
    real_open = os.open

    def denied(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(os.fsdecode(path)).parent == out:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    line = _error(_report(prompts_file, out, *FAST_ARGS))
    assert f"cannot write {out / 'head_scores.parquet'}: Permission denied" in line
    _nothing_published(out)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_output_directory_is_one_line(local_report, prompts_file, tmp_path):
    out = _finished(local_report, tmp_path)
    (out / "report.json").write_text("previous")
    out.chmod(0o555)
    try:
        line = _error(_report(prompts_file, out, *FAST_ARGS))
    finally:
        out.chmod(0o755)
    assert "cannot write the report" in line and "not writable" in line
    assert (out / "report.json").read_text() == "previous"
