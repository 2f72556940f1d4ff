"""Corrupt model directories, pickles, devices, arguments and `pull_model`:
every fault is a one-line HeadscopeError naming the file and what to do, and no
pickle is ever run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import headscope as hs
from headscope.errors import (
    DeviceError,
    HeadscopeError,
    HubUnreachableError,
    InputError,
    ModelFileError,
    ModelNotFoundError,
    OutputError,
)
from headscope.models.loading import parse_device, parse_dtype, pull_model


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_config(directory: Path, change) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _state_dict(directory: Path) -> dict:
    from safetensors.torch import load

    return load((directory / "model.safetensors").read_bytes())  # no mmap: it is overwritten


class Marker:
    """Unpickling this would create `path`: proof that a pickle was run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])


def _cut_header(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:200])


def _garbage(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00not json" + b"\0" * 64)


def _pickle_renamed(d: Path) -> None:
    torch.save(_state_dict(d), d / "model.safetensors")


def _no_model_type(d: Path) -> None:
    _edit_config(d, lambda c: {k: v for k, v in c.items() if k != "model_type"})


def _array_config(d: Path) -> None:
    (d / "config.json").write_text("[1, 2, 3]")


def _bad_json(d: Path) -> None:
    (d / "config.json").write_text('{"model_type": "gpt2",')


def _wider_config(d: Path) -> None:
    _edit_config(d, lambda c: {**c, "n_embd": 64})


def _no_tokenizer(d: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()


def _missing_shard(d: Path) -> None:
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


CORRUPT = {
    "truncated": (_truncate, "model.safetensors is truncated: its tensors need"),
    "cut-in-header": (_cut_header, "model.safetensors is truncated: it ends inside its header"),
    "garbage": (_garbage, "model.safetensors is not safetensors"),
    "pickle-renamed": (_pickle_renamed, "model.safetensors is a pickle"),
    "no-model-type": (_no_model_type, "config.json has no model_type"),
    "array-config": (_array_config, "config.json holds a JSON list"),
    "bad-json": (_bad_json, "config.json is not valid JSON"),
    "shapes": (_wider_config, "do not fit its config.json: 'transformer."),
    "no-tokenizer": (_no_tokenizer, "has no tokenizer"),
    "missing-shard": (_missing_shard, "lists model-00002-of-00002.safetensors, missing"),
}


@pytest.fixture(scope="module")
def corrupt_dirs(tiny_dirs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corrupt")
    dirs = {}
    for name, (damage, _) in CORRUPT.items():
        dirs[name] = _copy(tiny_dirs["gpt2"], root / name)
        damage(dirs[name])
    return dirs


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_directory_is_one_line_naming_the_file(corrupt_dirs, case):
    with pytest.raises(ModelFileError) as info:
        hs.load_model(corrupt_dirs[case])
    message = str(info.value)
    assert CORRUPT[case][1] in message
    assert str(corrupt_dirs[case]) in message
    assert "\n" not in message and len(message) < 400
    assert "save_pretrained" in message or "headscope pull" in message  # what to do
    assert isinstance(info.value, ModelNotFoundError)  # callers catching that still do


def test_shape_mismatch_names_the_tensor(corrupt_dirs):
    with pytest.raises(ModelFileError, match=r"is \[96\] in model.safetensors but the config"):
        hs.load_model(corrupt_dirs["shapes"])


def test_a_refused_pickle_bin_is_reported_and_never_run(tiny_dirs, tmp_path):
    directory = _copy(tiny_dirs["gpt2"], tmp_path / "evil")
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"transformer.wte.weight": Marker(marker)}, directory / "pytorch_model.bin")
    with pytest.raises(ModelFileError) as info:
        hs.load_model(directory)
    message = str(info.value)
    assert (
        "pytorch_model.bin is a pickle that torch's safe loader (weights_only) refuses" in message
    )
    assert "it would call posix.system" in message or "it would call nt.system" in message
    assert "\n" not in message
    assert not marker.exists()
    with pytest.raises(ModelFileError, match="refuses"):
        pull_model(str(directory), tmp_path / "copy")
    assert not marker.exists() and not (tmp_path / "copy").exists()


def test_a_plain_tensor_bin_loads_through_weights_only(tiny_dirs, tmp_path):
    directory = _copy(tiny_dirs["gpt2"], tmp_path / "bin")
    torch.save(_state_dict(directory), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    model = hs.load_model(directory)
    assert model.weights_hash == hs.load_model(tiny_dirs["gpt2"]).weights_hash


def test_devices_are_checked(monkeypatch):
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(" CPU ") == torch.device("cpu")
    assert parse_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("tpu", "cuda:x", "cpu:0", "gpu", ""):
        with pytest.raises(DeviceError, match="unknown device .*; choose cpu, cuda, cuda:N or mps"):
            parse_device(bad)
    with pytest.raises(DeviceError, match="device must be a string"):
        parse_device(0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="'cuda' needs CUDA, which is not available here"):
        parse_device("cuda")
    with pytest.raises(DeviceError, match="'cuda:1' needs CUDA"):
        parse_device("cuda:1")
    with pytest.raises(DeviceError, match="'mps' needs Apple's Metal"):
        parse_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="'cuda:2' does not exist: this machine has 2 CUDA"):
        parse_device("cuda:2")


def test_dtypes_are_checked():
    assert parse_dtype("bfloat16") is torch.bfloat16
    assert parse_dtype("torch.float16") is torch.float16
    assert parse_dtype(torch.float32) is torch.float32
    assert parse_dtype("float64") is torch.float64  # for numerical checks
    for bad in ("int8", "complex64", torch.int64, 16, None):
        with pytest.raises(DeviceError, match="unknown dtype"):
            parse_dtype(bad)


def test_load_model_arguments(tiny_dirs):
    for bad in (None, 12, "", "   "):
        with pytest.raises(InputError, match="name_or_path must name a model"):
            hs.load_model(bad)
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        hs.load_model(tiny_dirs["gpt2"], "gpu")
    with pytest.raises(DeviceError, match="unknown dtype"):
        hs.load_model(tiny_dirs["gpt2"], dtype="half-ish")
    with pytest.raises(InputError, match="max_memory"):
        hs.load_model(tiny_dirs["gpt2"], max_memory="plenty")


def test_tokenize_refuses_what_is_not_a_prompt(tiny_models):
    model = tiny_models["gpt2"]
    for bad in (None, {"t5": 1}, 12, b"t5"):
        with pytest.raises(InputError, match="inputs must be a prompt string"):
            model.tokenize(bad)
    with pytest.raises(InputError, match="integer tensor, got torch.complex64"):
        model.tokenize(torch.tensor([1, 2, 3], dtype=torch.complex64))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="max_length must be a whole number >= 1"):
            model.tokenize("t5", max_length=bad)


# -- pull ------------------------------------------------------------------------------------


def test_pull_without_the_hub_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError) as info:
        pull_model("EleutherAI/pythia-70m", tmp_path / "pythia", revision="step3000")
    message = str(info.value)
    assert "cannot pull 'EleutherAI/pythia-70m'" in message and "\n" not in message
    assert "hub cannot be reached" in message and "HF_HUB_OFFLINE" in message
    assert not (tmp_path / "pythia").exists()


def test_pull_saves_a_directory_that_loads_offline(tiny_dirs, tmp_path):
    target = pull_model(str(tiny_dirs["llama"]), tmp_path / "saved")
    assert target == tmp_path / "saved"
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".saved.partial")]
    model = hs.load_model(target)
    original = hs.load_model(tiny_dirs["llama"])
    assert model.weights_hash == original.weights_hash
    assert model.tokenize("t5 t6").ids.tolist() == original.tokenize("t5 t6").ids.tolist()


def test_pull_refuses_what_it_cannot_do(tiny_dirs, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    with pytest.raises(OutputError, match="already exists and is not an empty directory"):
        pull_model(str(tiny_dirs["gpt2"]), taken)
    with pytest.raises(InputError, match="--revision applies to hub names"):
        pull_model(str(tiny_dirs["gpt2"]), tmp_path / "x", revision="step3000")
    with pytest.raises(ModelNotFoundError, match="no model directory"):
        pull_model("./no/such/dir", tmp_path / "y")
    for bad in ("", None):
        with pytest.raises(InputError, match="name a model to pull"):
            pull_model(bad, tmp_path / "z")
    with pytest.raises(HeadscopeError, match="model.safetensors is truncated"):
        broken = _copy(tiny_dirs["gpt2"], tmp_path / "broken")
        _truncate(broken)
        pull_model(str(broken), tmp_path / "w")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pull_model(str(tiny_dirs["gpt2"]), empty) == empty  # an empty folder is fine
