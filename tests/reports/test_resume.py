"""Resumable report jobs: stopping after a shard, or killing the CLI process,
then rerunning the same command reuses the finished shards (scores and prompt
summaries) and pruning curves and writes byte-identical scores and files, with
no partial files left behind; checkpoints of an older layout are recomputed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from headscope.reports.checkpoints import LAYOUT
from headscope.reports.job import run_report

FILES = ("csv", "parquet", "json", "html")
METHODS = {"ablation", "gradient", "chg", "attribution"}


def _assert_whole_shard(path, n_prompts: int) -> None:
    """A shard file holds its scores and every prompt's summary, in the current layout."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["layout"] == str(LAYOUT)
    assert {k.split("/", 1)[1] for k in tensors if k.startswith("score/")} == METHODS
    for i in range(n_prompts):
        assert {f"prompt/{i}/sinks", f"prompt/{i}/influence"} <= set(tensors), i
        assert any(k.startswith(f"prompt/{i}/taxonomy/") for k in tensors), i
    assert not any(k.startswith(f"prompt/{n_prompts}/") for k in tensors)


def test_stop_after_one_shard_then_resume_is_byte_identical(
    toy_model, fast_config, local_report, tmp_path
):
    out = tmp_path / "resumed"
    first = run_report(fast_config, out, model=toy_model, progress=False, stop_after=1)
    assert (first.computed_shards, first.reused_shards, first.files) == (1, 0, {})
    (shard,) = out.glob(".shards/*/shard-*.safetensors")
    _assert_whole_shard(shard, fast_config.shard_size)
    assert not list(out.glob(".shards/*/pruning.safetensors"))  # needs every shard
    assert not [p for p in out.iterdir() if p.name != ".shards"]  # no report yet

    second = run_report(fast_config, out, model=toy_model, progress=False)
    assert (second.computed_shards, second.reused_shards) == (2, 1)
    assert second.pruning_computed
    assert second.units == local_report.units
    for method, reference in local_report.scores.items():
        assert second.scores[method].dtype == reference.dtype
        assert second.scores[method].tobytes() == reference.tobytes(), method
    for name in FILES:
        assert second.files[name].read_bytes() == local_report.files[name].read_bytes(), name

    (pruning,) = out.glob(".shards/*/pruning.safetensors")
    written = pruning.stat().st_mtime_ns
    for name in FILES:
        second.files[name].unlink()  # killed while writing the report: only checkpoints left
    third = run_report(fast_config, out, model=toy_model, progress=False)
    assert (third.computed_shards, third.reused_shards, third.pruning_computed) == (0, 3, False)
    assert pruning.stat().st_mtime_ns == written
    for name in FILES:
        assert third.files[name].read_bytes() == local_report.files[name].read_bytes(), name
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".tmp-*"))


def test_checkpoints_of_an_older_layout_are_recomputed(
    toy_model, fast_config, local_report, tmp_path
):
    out = tmp_path / "old-layout"
    run_report(fast_config, out, model=toy_model, progress=False, stop_after=1)
    (shard,) = out.glob(".shards/*/shard-*.safetensors")
    # Layout 2 held the scores and summaries, without units, warnings, targets
    # or the clean metric.
    tensors = {k: v for k, v in load_file(str(shard)).items() if k != "clean"}
    with safe_open(str(shard), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "scoring"}
    save_file(tensors, str(shard), metadata={**metadata, "layout": "2"})
    # Layout 1 held the scores only, under the method names, with no metadata.
    scores = {k.split("/", 1)[1]: v for k, v in tensors.items() if "score/" in k}
    pruning = shard.parent / "pruning.safetensors"
    save_file(scores, str(pruning), metadata={"layout": "1"})

    result = run_report(fast_config, out, model=toy_model, progress=False)
    assert (result.computed_shards, result.reused_shards, result.pruning_computed) == (3, 0, True)
    # and a layout change moves the checkpoints to another folder altogether
    assert json.loads((shard.parent / "config.json").read_text())["checkpoint_layout"] == LAYOUT
    _assert_whole_shard(shard, fast_config.shard_size)
    for name in FILES:
        assert result.files[name].read_bytes() == local_report.files[name].read_bytes(), name


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
        _assert_whole_shard(path, 4)

    rerun = subprocess.run(_command(prompts_file, out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = re.match(r"(\d+) shard\(s\) computed, (\d+) reused", rerun.stdout)
    assert summary, rerun.stdout
    computed, reused = int(summary[1]), int(summary[2])
    assert reused == len(done) and computed + reused == 3
    # Another process, the same numbers: scores do not depend on the run.
    for name in FILES:
        assert (out / local_report.files[name].name).read_bytes() == local_report.files[
            name
        ].read_bytes(), name
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".tmp-*"))
