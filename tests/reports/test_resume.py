"""Resumable report jobs: stopping after a shard, or killing the CLI process,
then rerunning the same command reuses the finished shards and writes
byte-identical scores and files, with no partial files left behind."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from headscope.reports.job import run_report

FILES = ("csv", "parquet", "json", "html")


def test_stop_after_one_shard_then_resume_is_byte_identical(
    toy_model, fast_config, local_report, tmp_path
):
    out = tmp_path / "resumed"
    first = run_report(fast_config, out, model=toy_model, progress=False, stop_after=1)
    assert (first.computed_shards, first.reused_shards, first.files) == (1, 0, {})
    assert len(list(out.glob(".shards/*/shard-*.safetensors"))) == 1
    assert not [p for p in out.iterdir() if p.name != ".shards"]  # no report yet

    second = run_report(fast_config, out, model=toy_model, progress=False)
    assert (second.computed_shards, second.reused_shards) == (2, 1)
    assert second.units == local_report.units
    for method, reference in local_report.scores.items():
        assert second.scores[method].dtype == reference.dtype
        assert second.scores[method].tobytes() == reference.tobytes(), method
    for name in FILES:
        assert second.files[name].read_bytes() == local_report.files[name].read_bytes(), name

    third = run_report(fast_config, out, model=toy_model, progress=False)
    assert (third.computed_shards, third.reused_shards) == (0, 3)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".tmp-*"))


def _command(prompts, out):
    return [
        sys.executable,
        "-m",
        "headscope",
        "report",
        "--model",
        "toy-induction",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--shard-size",
        "4",
        "--seeds",
        "2",
        "--chg-steps",
        "20",
        "--no-progress",
    ]


@pytest.mark.slow
def test_a_killed_cli_run_resumes_with_identical_scores(prompts_file, local_report, tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen(
        _command(prompts_file, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    try:
        while not list(out.glob(".shards/*/shard-*.safetensors")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no shard was checkpointed"
            time.sleep(0.02)
    finally:
        process.kill()
        process.communicate()
    assert not (out / "report.json").exists()  # killed before the end
    done = list(out.glob(".shards/*/shard-*.safetensors"))
    assert 1 <= len(done) < 3
    for path in done:  # a shard under its final name is always whole
        assert set(load_file(str(path))) == {"ablation", "gradient", "chg", "attribution"}

    rerun = subprocess.run(_command(prompts_file, out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = re.match(r"(\d+) shard\(s\) computed, (\d+) reused", rerun.stdout)
    assert summary, rerun.stdout
    computed, reused = int(summary[1]), int(summary[2])
    assert reused == len(done) and computed + reused == 3
    # Another process, the same numbers: scores do not depend on the run.
    for name in ("csv", "json"):
        assert (out / local_report.files[name].name).read_bytes() == local_report.files[
            name
        ].read_bytes(), name
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".tmp-*"))
