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


@pytest.mark.parametrize("metric", ["loss", "logit-diff"])
def test_the_report_on_an_encoder_suggests_only_metrics_that_metric_accepts(tmp_path, metric):
    """minilm has no LM head: the one-line error names metrics `--metric` takes."""
    import re

    from headscope.experiments.metrics import ALIASES, METRIC_NAMES
    from headscope.reports.config import METRICS, ReportConfig

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "the cat sat on the mat", "answer": " mat", "wrong": " dog"}\n')
    args = ["report", "--model", "minilm", "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    result = runner.invoke(
        app, [*args, "--methods", "ablation", "--metric", metric, "--no-progress"]
    )
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "o" / ".shards").exists()  # refused before any shard
    (line,) = result.stderr.strip().splitlines()
    assert "needs a trained LM head" in line
    named = {word for word in re.findall(r"[a-z_-]+", line) if word in {*METRIC_NAMES, *ALIASES}}
    suggested = named - {ALIASES.get(metric, metric)}
    assert suggested and suggested <= {*METRICS, *ALIASES}, line
    for name in suggested:  # what `--metric` does with it
        assert ReportConfig(model="minilm", prompts=str(prompts), metric=name).metric in METRICS


# -- devices, dtypes, corrupt model directories, pull, memory (one block) ---------------------


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _table(output: str) -> dict[tuple[int, int], list[float]]:
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "head"])
    rows = [line.split() for line in lines[header + 1 :] if line.split()[:1] != ["record"]]
    return {(int(r[0]), int(r[1])): [float(x) for x in r[2:]] for r in rows if len(r) == 6}


def _tiny_gpt_neox(directory):
    from tiny_models import build_tiny_gpt_neox

    return build_tiny_gpt_neox(directory)


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_capture_stats_in_bfloat16_on_a_saved_tiny_model(tiny_dirs, tmp_path, family):
    """`headscope capture --model DIR --dtype bfloat16 --mode stats` prints the head
    table; its numbers are within bfloat16's error (tests/probes/test_dtypes.py:
    under 0.04 for these means) of the float32 maps table."""
    directory = _tiny_gpt_neox(tmp_path / "neox") if family == "gpt_neox" else tiny_dirs["llama"]
    prompt = ["--prompt", "t5 t6 t7 t8 t5 t6 t7 t8"]
    args = ["capture", "--model", str(directory), *prompt]
    result = runner.invoke(app, [*args, "--dtype", "bfloat16", "--mode", "stats"])
    assert result.exit_code == 0, result.output
    stats = _table(result.stdout)
    reference = runner.invoke(app, args)
    assert reference.exit_code == 0, reference.output
    maps = _table(reference.stdout)
    assert sorted(stats) == sorted(maps) == [(l, h) for l in range(2) for h in range(4)]
    for head, values in stats.items():
        for got, expected in zip(values, maps[head], strict=True):
            assert abs(got - expected) < 0.04, (head, values, maps[head])


def test_capture_stats_table_equals_the_maps_table(tiny_dirs, tmp_path):
    args = ["capture", "--model", str(tiny_dirs["gpt2"]), "--prompt", "t5 t6 t7 t5 t6 t7"]
    maps = runner.invoke(app, args)
    stats = runner.invoke(app, [*args, "--mode", "stats", "--out", str(tmp_path / "s")])
    assert maps.exit_code == stats.exit_code == 0, stats.output
    for head, values in _table(stats.stdout).items():
        assert values == pytest.approx(_table(maps.stdout)[head], abs=1.5e-3)
    from headscope.records.stats import HeadStats

    assert HeadStats.load(tmp_path / "s").entropy.shape == (2, 4, 7)


CLI_FAULTS = {
    "truncated": (
        lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:-32]
        ),
        "model.safetensors is truncated",
    ),
    "pickle-renamed": (
        lambda d: __import__("torch").save({"w": 1}, d / "model.safetensors"),
        "model.safetensors is a pickle",
    ),
    "no-model-type": (
        lambda d: (d / "config.json").write_text('{"n_layer": 2}'),
        "config.json has no model_type",
    ),
    "array-config": (lambda d: (d / "config.json").write_text("[]"), "config.json holds a JSON"),
    "shapes": (
        lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"n_embd": 32', '"n_embd": 64')
        ),
        "do not fit its config.json",
    ),
}


@pytest.fixture(scope="module")
def cli_corrupt_dirs(tiny_dirs, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("cli-corrupt")
    dirs = {}
    for name, (damage, _) in CLI_FAULTS.items():
        dirs[name] = root / name
        shutil.copytree(tiny_dirs["gpt2"], dirs[name])
        damage(dirs[name])
    return dirs


@pytest.mark.parametrize("fault", list(CLI_FAULTS))
@pytest.mark.parametrize("command", ["capture", "dashboard", "report"])
def test_corrupt_model_directories_are_one_line_errors(cli_corrupt_dirs, tmp_path, fault, command):
    directory = cli_corrupt_dirs[fault]
    args = [command, "--model", str(directory)]
    if command == "capture":
        args += ["--prompt", "t5 t6"]
    elif command == "dashboard":
        args += ["--port", "1"]
    else:
        prompts = tmp_path / "p.txt"
        prompts.write_text("t5 t6 t7 t8\n")
        args += ["--prompts", str(prompts), "--out", str(tmp_path / "r"), "--no-progress"]
        args += ["--methods", "ablation"]
    _one_line_error(runner.invoke(app, args), CLI_FAULTS[fault][1], str(directory))


@pytest.mark.parametrize("command", ["capture", "dashboard", "report"])
@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--dtype", "int8"], "unknown dtype 'int8'; choose float32, bfloat16, float16 or float64"),
        (["--device", "tpu"], "unknown device 'tpu'; choose cpu, cuda, cuda:N or mps"),
        (["--device", "cuda"], "'cuda' needs CUDA, which is not available here"),
        (["--device", "cuda:1"], "'cuda:1' needs CUDA"),
        (["--device", "mps"], "'mps' needs Apple's Metal"),
    ],
)
def test_devices_and_dtypes_are_checked_on_every_command(
    tiny_dirs, tmp_path, monkeypatch, command, option, message
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    args = [command, "--model", str(tiny_dirs["gpt2"]), *option]
    if command == "capture":
        args += ["--prompt", "t5 t6"]
    elif command == "report":
        prompts = tmp_path / "p.txt"
        prompts.write_text("t5 t6 t7 t8\n")
        args += ["--prompts", str(prompts), "--out", str(tmp_path / "r"), "--no-progress"]
    _one_line_error(runner.invoke(app, args), message)


def test_report_passes_device_and_dtype_to_the_model(tiny_dirs, tmp_path, monkeypatch):
    import torch

    from headscope.errors import InputError
    from headscope.models import loading
    from headscope.reports import job

    seen = {}

    def stop_at_run(config, out_dir, **kwargs):
        seen["config"] = config
        raise InputError("stopped by the test")

    prompts = tmp_path / "p.txt"
    prompts.write_text("t5 t6 t7 t8\n")
    base = ["report", "--model", str(tiny_dirs["gpt2"]), "--prompts", str(prompts)]
    base += ["--out", str(tmp_path / "r"), "--no-progress", "--methods", "ablation"]
    monkeypatch.setattr(job, "run_report", stop_at_run)
    _one_line_error(runner.invoke(app, [*base, "--dtype", "bf16"]), "stopped by the test")
    assert (seen["config"].device, seen["config"].dtype) == ("cpu", "bfloat16")
    # The Ray actors load the model with the job's device and dtype too.
    _one_line_error(
        runner.invoke(app, [*base, "--backend", "ray", "--dtype", "float16"]), "stopped by the test"
    )
    assert (seen["config"].device, seen["config"].dtype) == ("cpu", "float16")
    monkeypatch.undo()

    def stop_at_load(name, device="cpu", *, dtype=torch.float32, max_memory=None):
        seen["load"] = (name, device, dtype)
        raise InputError("stopped at load")

    monkeypatch.setattr(loading, "load_model", stop_at_load)
    _one_line_error(runner.invoke(app, [*base, "--dtype", "float16"]), "stopped at load")
    assert seen["load"] == (str(tiny_dirs["gpt2"]), "cpu", "float16")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_dashboard_max_tokens_must_be_positive(value):
    result = runner.invoke(app, ["dashboard", "--model", "toy-induction", "--max-tokens", value])
    _one_line_error(result, f"--max-tokens must be at least 1, got {value}")


def test_capture_refuses_what_does_not_fit_in_max_memory(tiny_dirs):
    prompt = " ".join(f"t{i}" for i in range(5, 60))
    args = ["capture", "--model", str(tiny_dirs["gpt2"]), "--prompt", prompt]
    line = _one_line_error(
        runner.invoke(app, [*args, "--max-memory", "380KB"]),
        "capturing the maps of 8 heads",
        "is allowed (max_memory)",
        "stats mode without maps",
    )
    assert "a shorter prompt (at most" in line
    assert runner.invoke(app, [*args, "--max-memory", "380KB", "--mode", "stats"]).exit_code == 0
    _one_line_error(runner.invoke(app, [*args, "--max-memory", "lots"]), "--max-memory 'lots'")
    _one_line_error(runner.invoke(app, [*args, "--mode", "all"]), "unknown --mode 'all'")


def test_pull_without_the_hub_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(
        app, ["pull", "EleutherAI/pythia-70m", str(tmp_path / "p"), "--revision", "step3000"]
    )
    _one_line_error(result, "cannot pull 'EleutherAI/pythia-70m'", "hub cannot be reached")
    assert not (tmp_path / "p").exists()


def test_pull_a_local_model_then_capture_it_offline(tiny_dirs, tmp_path):
    target = tmp_path / "saved"
    result = runner.invoke(app, ["pull", str(tiny_dirs["llama"]), str(target)])
    assert result.exit_code == 0, result.output
    assert f"use it offline with --model {target}" in result.stdout
    assert result.stderr.strip() == ""
    captured = runner.invoke(app, ["capture", "--model", str(target), "--prompt", "t5 t6 t7"])
    original = runner.invoke(
        app, ["capture", "--model", str(tiny_dirs["llama"]), "--prompt", "t5 t6 t7"]
    )
    assert captured.exit_code == 0, captured.output
    assert _table(captured.stdout) == _table(original.stdout)
    again = runner.invoke(app, ["pull", str(tiny_dirs["llama"]), str(target)])
    _one_line_error(again, "already exists and is not an empty directory")
