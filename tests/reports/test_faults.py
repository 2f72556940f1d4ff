"""Fault injection: a resumed report never trusts a checkpoint that does not
verify, a write failure publishes nothing and says so in one line, temporaries
of a concurrent run are left alone, and an unreachable Ray cluster fails fast.

Each case starts from a copy of the uninterrupted local report's folder (its
checkpoints and files), breaks one thing, reruns, and compares the files with
the uninterrupted run's, byte for byte."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from headscope.errors import HeadscopeError
from headscope.reports.job import run_report

FILES = ("csv", "parquet", "json", "html")
NAMES = ("head_scores.csv", "head_scores.parquet", "report.json", "report.html")


def _copy(local_report, tmp_path: Path, name: str = "out", *, outputs: bool = True) -> Path:
    """A copy of the reference run's folder: every checkpoint, and its report files or none."""
    out = tmp_path / name
    shutil.copytree(local_report.out_dir, out)
    if not outputs:
        for file in NAMES:
            (out / file).unlink()
    return out


def _shard(out: Path, index: int) -> Path:
    (path,) = out.glob(f".shards/*/shard-{index:05d}.safetensors")
    return path


def _rewrite(path: Path, change) -> None:
    """Rewrite a checkpoint with `change(name, tensor)` applied, keeping its metadata."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = {name: change(name, tensor) for name, tensor in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata=metadata)


def _assert_same_files(result, local_report) -> None:
    for name in FILES:
        assert result.files[name].read_bytes() == local_report.files[name].read_bytes(), name


def _no_temporaries(out: Path) -> None:
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".tmp-*"))


@pytest.fixture(scope="module")
def other_config_shard(toy_model, fast_config, tmp_path_factory) -> Path:
    """Shard 1 of a job with other methods (so another configuration)."""
    out = tmp_path_factory.mktemp("other-config")
    other = replace(fast_config, methods=("ablation", "gradient"))
    run_report(other, out, model=toy_model, progress=False, stop_after=2)
    return _shard(out, 1)


def _zeros(path, _):
    _rewrite(path, lambda name, tensor: torch.zeros_like(tensor))


def _truncated(path, _):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path, _):
    path.write_bytes(b"")


def _random_bytes(path, _):
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _one_unit_less(path, _):
    _rewrite(path, lambda name, tensor: tensor[:-1] if name.startswith("score/") else tensor)


def _another_shard(path, _):
    shutil.copyfile(path.with_name("shard-00000.safetensors"), path)


def _another_config(path, other_config_shard):
    shutil.copyfile(other_config_shard, path)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_zeros, "contents do not match their sha256"),
        (_truncated, "not a readable safetensors file"),
        (_empty, "an empty file"),
        (_random_bytes, "not a readable safetensors file"),
        (_one_unit_less, "contents do not match their sha256"),
        (_another_shard, "holds shard-0, not shard-1"),
        (_another_config, "computed under another configuration"),
    ],
    ids=lambda value: getattr(value, "__name__", "").strip("_") or None,
)
def test_a_shard_that_does_not_verify_is_named_and_recomputed(
    toy_model, fast_config, local_report, other_config_shard, tmp_path, capsys, corrupt, reason
):
    out = _copy(local_report, tmp_path, outputs=False)
    corrupt(_shard(out, 1), other_config_shard)
    result = run_report(fast_config, out, model=toy_model, progress=False)
    err = capsys.readouterr().err
    assert "shard 1: checkpoint does not verify (" in err and "; recomputing" in err, err
    assert reason in err, err
    assert "shard 0" not in err and "shard 2" not in err
    assert (result.computed_shards, result.reused_shards) == (1, 2)
    assert not result.pruning_computed  # the recomputed shard gives the same scores
    _assert_same_files(result, local_report)
    _no_temporaries(out)
    # and the recomputed checkpoint verifies on the next run: nothing is recomputed
    again = run_report(fast_config, out, model=toy_model, progress=False)
    assert (again.computed_shards, again.reused_shards) == (0, 3)
    assert "does not verify" not in capsys.readouterr().err


@pytest.mark.parametrize("corrupt", [_zeros, _truncated], ids=["zeros", "truncated"])
def test_pruning_curves_that_do_not_verify_are_recomputed(
    toy_model, fast_config, local_report, tmp_path, capsys, corrupt
):
    out = _copy(local_report, tmp_path, outputs=False)
    (pruning,) = out.glob(".shards/*/pruning.safetensors")
    corrupt(pruning, None)
    result = run_report(fast_config, out, model=toy_model, progress=False)
    err = capsys.readouterr().err
    assert "pruning curves: checkpoint does not verify (" in err and "recomputing" in err, err
    assert (result.computed_shards, result.reused_shards, result.pruning_computed) == (0, 3, True)
    _assert_same_files(result, local_report)


# -- write failures ------------------------------------------------------------------------------


class _FileSizeLimit:
    """Writes past `limit` bytes fail with EFBIG (Python ignores SIGXFSZ), as on a full disk."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self):
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def __exit__(self, *exc_info):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)


@pytest.mark.parametrize("previous", [False, True], ids=["no-previous", "previous-files"])
def test_a_full_disk_publishes_no_file_and_keeps_the_previous_ones(
    toy_model, fast_config, local_report, tmp_path, previous
):
    out = _copy(local_report, tmp_path, outputs=False)
    if previous:
        for name in NAMES:
            (out / name).write_text(f"previous {name}")
    # The parquet, CSV and JSON files fit under 1 MiB; the HTML page (plotly inlined) does not.
    assert local_report.files["json"].stat().st_size < 2**20
    assert local_report.files["html"].stat().st_size > 2**20
    with _FileSizeLimit(2**20), pytest.raises(HeadscopeError) as caught:
        run_report(fast_config, out, model=toy_model, progress=False)
    message = str(caught.value)
    assert f"cannot write {out / 'report.html'}: File too large" in message
    assert "\n" not in message
    for name in NAMES:
        if previous:
            assert (out / name).read_text() == f"previous {name}", name
        else:
            assert not (out / name).exists(), name
    _no_temporaries(out)
    # once there is room again the same command completes
    _assert_same_files(run_report(fast_config, out, model=toy_model, progress=False), local_report)


def test_a_checkpoint_write_failure_is_one_line(toy_model, fast_config, local_report, tmp_path):
    out = _copy(local_report, tmp_path, outputs=False)
    _shard(out, 2).unlink()
    with _FileSizeLimit(4096), pytest.raises(HeadscopeError) as caught:
        run_report(fast_config, out, model=toy_model, progress=False)
    assert f"cannot write {_shard(out, 0).with_name('shard-00002.safetensors')}" in str(
        caught.value
    )
    assert "File too large" in str(caught.value)
    _no_temporaries(out)
    assert not any((out / name).exists() for name in NAMES)


# -- temporaries --------------------------------------------------------------------------------


def _tag(pid: int) -> str:
    """This host's temporary tag for `pid` (`.<name>.<host>-<pid>-<random>.tmp`)."""
    return f"{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]}-{pid}-0123abcd"


def test_only_temporaries_of_ended_or_stale_runs_are_removed(
    toy_model, fast_config, local_report, tmp_path
):
    out = _copy(local_report, tmp_path)
    shards = _shard(out, 0).parent
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    try:
        kept, removed = [], []
        for folder, name in ((out, "report.json"), (shards, "shard-00001.safetensors")):
            kept.append(folder / f".{name}.{_tag(live.pid)}.tmp")  # a concurrent run's
            kept.append(folder / f".{name}.someone-else.tmp")  # unknown owner, recent
            removed.append(folder / f".{name}.{_tag(ended.pid)}.tmp")  # its run has ended
            removed.append(folder / f".{name}.an-old-one.tmp")  # unknown owner, 2 days old
        for path in kept + removed:
            path.write_bytes(b"partial")
        for path in removed[1::2]:
            os.utime(path, (time.time() - 2 * 86400,) * 2)
        result = run_report(fast_config, out, model=toy_model, progress=False)
        assert (result.computed_shards, result.reused_shards) == (0, 3)
        assert [p.name for p in kept if not p.exists()] == []
        assert [p.name for p in removed if p.exists()] == []
    finally:
        live.kill()
        live.wait()


# -- an unreachable Ray cluster ------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_ray_address_fails_within_the_timeout(toy_model, fast_config, tmp_path):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()  # else the job would use that cluster
    address = f"127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(HeadscopeError) as caught:
        run_report(
            fast_config,
            tmp_path / "out",
            backend="ray",
            address=address,
            connect_timeout=5,
            model=toy_model,
            progress=False,
        )
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert f"cannot reach the Ray cluster at {address}" in message and "\n" not in message
    assert not ray.is_initialized()
