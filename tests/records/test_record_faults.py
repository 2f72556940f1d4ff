"""Fault injection: a good record, corrupted in one way at a time, fails to load with a
one-line RecordFormatError naming the file and the problem.

Where the sidecar's hashes would catch an edit, the edit is re-hashed (as someone who
rewrites a record on purpose would do), so that the content checks are what is tested.
Also: records are written like any new file (0666 less the umask), never over another
record unless asked, and a file that links out of the record directory is not read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import headscope as hs
from headscope.errors import InputError, RecordExistsError, RecordFormatError
from headscope.models.spec import ModelSpec
from headscope.records import io as record_io
from headscope.records.attention import AttentionRecord
from headscope.records.io import SIDECAR_FILE, TENSOR_FILE, _content_hash
from headscope.records.stats import HeadStats

PROMPTS = ["t5 t6 t7 t8", "t9"]  # gpt2 prepends BOS: lengths (5, 2), N = 5


@pytest.fixture(scope="module")
def records(tiny_models):
    gpt2, llama = tiny_models["gpt2"], tiny_models["llama"]
    return {
        "single": hs.capture(gpt2, "t5 t6 t7 t8"),
        "batch": hs.capture(gpt2, PROMPTS),
        "pairs": hs.capture(llama, "t5 t6", heads=[(0, 1), (1, 2)]),
        "stats": hs.capture(gpt2, PROMPTS, mode="stats", heads=[(0, 1), (1, 2)], top_k=2),
        "other_maps": hs.capture(gpt2, ["t9 t8 t7 t6", "t5"], heads=[(0, 1), (1, 2)]),
    }


def _loader(kind: str):
    return HeadStats.load if kind == "stats" else AttentionRecord.load


def _saved(records, kind: str, directory: Path) -> Path:
    records[kind].save(directory)
    return directory


def _rehash(directory: Path) -> None:
    """Make the sidecar agree with the tensor file and with itself again."""
    sidecar = directory / SIDECAR_FILE
    meta = json.loads(sidecar.read_text())
    data = (directory / TENSOR_FILE).read_bytes()
    meta["tensor_sha256"] = hashlib.sha256(data).hexdigest()
    with contextlib.suppress(Exception):  # a file that is no longer safetensors keeps them
        meta["tensor_shapes"] = {
            k: list(v.shape) for k, v in load_file(str(directory / TENSOR_FILE)).items()
        }
    meta["sidecar_sha256"] = _content_hash(meta)
    sidecar.write_text(json.dumps(meta))


def _edit_tensors(directory: Path, change: Callable[[dict], None]) -> None:
    tensors = load_file(str(directory / TENSOR_FILE))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / TENSOR_FILE))
    _rehash(directory)


def _edit_meta(directory: Path, change: Callable[[dict], None]) -> None:
    sidecar = directory / SIDECAR_FILE
    meta = json.loads(sidecar.read_text())
    change(meta)
    sidecar.write_text(json.dumps(meta))
    _rehash(directory)


def _rejects(load, directory: Path, file: str, pattern: str) -> str:
    with pytest.raises(RecordFormatError) as caught:
        load(directory)
    message = str(caught.value)
    assert "\n" not in message, message
    assert file in message, message
    assert re.search(pattern, message), message
    return message


# -- malformed files ------------------------------------------------------------------------


def _torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"pattern": torch.ones(2)}, buffer)
    return buffer.getvalue()


TENSOR_FILES = {
    "truncated": (lambda good: good[:-7], "not a valid safetensors|truncated"),
    "truncated-header": (lambda good: good[:5], r"truncated \(5 bytes\)"),
    "empty": (lambda good: b"", "is empty"),
    "pickle": (lambda good: pickle.dumps({"pattern": [[1.0]]}, protocol=4), "pickle"),
    "torch-save": (lambda good: _torch_zip(), "zip archive"),
    "oversized-header": (
        lambda good: struct.pack("<Q", 1 << 40) + good[8:],
        "header claims 1099511627776 bytes",
    ),
    "header-past-the-end": (
        lambda good: struct.pack("<Q", len(good)) + good[8:],
        "truncated or not a safetensors",
    ),
    "header-not-json": (lambda good: struct.pack("<Q", 4) + b"{{{{", "not a valid safetensors"),
}


@pytest.mark.parametrize("kind", ["single", "stats"])
@pytest.mark.parametrize("fault", sorted(TENSOR_FILES))
def test_malformed_tensor_file_is_a_record_format_error(records, tmp_path, kind, fault):
    directory = _saved(records, kind, tmp_path / "r")
    tensor_file = directory / TENSOR_FILE
    corrupt, pattern = TENSOR_FILES[fault]
    tensor_file.write_bytes(corrupt(tensor_file.read_bytes()))
    _rehash(directory)
    _rejects(_loader(kind), directory, str(tensor_file), pattern)


def _nest(depth: int, inner: object = 0) -> object:
    for _ in range(depth):
        inner = [inner]
    return inner


def test_deeply_nested_sidecar_is_refused_without_recursion_error(records, tmp_path):
    load = AttentionRecord.load
    for depth, text in [
        (100_000, "[" * 100_000 + "]" * 100_000),
        (50_000, '{"a":' * 50_000 + "0" + "}" * 50_000),
    ]:
        directory = _saved(records, "single", tmp_path / str(depth))
        (directory / SIDECAR_FILE).write_text(text)
        _rejects(load, directory, str(directory / SIDECAR_FILE), "nested more than")
    # Not deep enough to break json, but deeper than any record: refused before use.
    directory = _saved(records, "single", tmp_path / "moderate")
    _edit_meta(directory, lambda m: m.update(notes=_nest(200)))
    _rejects(load, directory, str(directory / SIDECAR_FILE), "nested more than 16 levels")


def test_oversized_sidecar_is_refused_before_parsing(records, tmp_path, monkeypatch):
    directory = _saved(records, "single", tmp_path / "r")
    size = (directory / SIDECAR_FILE).stat().st_size
    monkeypatch.setattr(record_io, "MAX_SIDECAR_BYTES", size - 1)
    _rejects(AttentionRecord.load, directory, str(directory / SIDECAR_FILE), "larger than")


# -- content of an AttentionRecord ----------------------------------------------------------


def _set(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        tensors[name] = fn(tensors[name].clone())

    return change


def _poke(index: tuple, value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(t: torch.Tensor) -> torch.Tensor:
        t[index] = value
        return t

    return fn


def _negative_row(t: torch.Tensor) -> torch.Tensor:
    t[0, 0, 1, :2] = torch.tensor([1.5, -0.5])  # still sums to 1
    return t


PATTERN_FAULTS = {
    "nan": ("single", _set("pattern", _poke((0, 0, 2, 1), float("nan"))), "NaN or infinite"),
    "inf": ("single", _set("pattern", _poke((1, 3, 4, 0), float("inf"))), "NaN or infinite"),
    "not-stochastic": ("single", _set("pattern", lambda t: t * 2), "not row-stochastic"),
    "negative": ("single", _set("pattern", _negative_row), "negative entries"),
    "integer": ("single", _set("pattern", lambda t: t.round().to(torch.int32)), "floating"),
    "boolean": ("single", _set("pattern", lambda t: t > 0.3), "floating"),
    "padding-row": ("batch", _set("pattern", _poke((1, 0, 0, 4, 0), 1.0)), "padding"),
    "padding-column": ("batch", _set("pattern", _poke((1, 1, 2, 0, 3), 0.5)), "padding"),
    "requested-nan": ("pairs", _set("pattern", _poke((0, 0, 1, 0), float("nan"))), "NaN"),
    "id-past-vocab": ("single", _set("token_ids", _poke((2,), 100)), r"100, outside the voc"),
    "negative-id": ("batch", _set("token_ids", _poke((1, 0), -1)), r"-1, outside the voc"),
    "float-ids": ("single", _set("token_ids", lambda t: t.float()), "must be integers"),
}


@pytest.mark.parametrize("fault", sorted(PATTERN_FAULTS))
def test_bad_tensor_content_is_refused(records, tmp_path, fault):
    kind, change, pattern = PATTERN_FAULTS[fault]
    directory = _saved(records, kind, tmp_path / "r")
    _edit_tensors(directory, change)
    _rejects(AttentionRecord.load, directory, str(directory / TENSOR_FILE), pattern)


def _update(*path, value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


SIDECAR_FAULTS = {
    "negative-layer": ("single", _update("layer_index", value=[-1, 1]), "negative index -1"),
    "duplicate-layer": ("single", _update("layer_index", value=[1, 1]), "repeats the index 1"),
    "unsorted-layers": ("single", _update("layer_index", value=[1, 0]), "increasing order"),
    "float-layer": ("single", _update("layer_index", value=[0, 1.5]), "list of ints"),
    "bool-layer": ("single", _update("layer_index", value=[False, True]), "list of ints"),
    "negative-head": ("single", _update("head_index", value=[-1, 0, 1, 2]), "negative"),
    "duplicate-head": ("single", _update("head_index", value=[0, 1, 1, 2]), "repeats"),
    "head-past-spec": ("single", _update("head_index", value=[1, 2, 3, 4]), "exceed the model"),
    "fewer-tokens": ("single", lambda m: m["tokens"].pop(), "4 token strings for 5 positions"),
    "more-tokens": ("batch", lambda m: m["tokens"][1].append("x"), "3 token strings for 2"),
    "int-tokens": ("single", _update("tokens", value=[1, 2, 3, 4, 5]), "list of strings"),
    "string-row": ("batch", _update("tokens", 1, value="t9"), "list of strings"),
    "null-token": ("batch", _update("tokens", 0, 2, value=None), "list of strings"),
    "causal-string": ("single", _update("spec", "causal", value="no"), "causal must be true"),
    "positional": ("single", _update("spec", "positional", value="<script>"), "one of learned"),
    "n-layers-str": ("single", _update("spec", "n_layers", value="2"), "positive int"),
    "lm-head-int": ("single", _update("spec", "has_lm_head", value=1), "has_lm_head must be"),
    "bos-string": ("single", _update("spec", "bos_token_id", value="1"), "bos_token_id must"),
    "bos-negative": ("single", _update("spec", "pad_token_id", value=-1), "pad_token_id must"),
    "spec-name": ("single", _update("spec", "name", value=7), "name must be a non-empty"),
    "spec-list": ("single", _update("spec", value=[1, 2]), "'spec' must be dict"),
    "requested-out": ("pairs", _update("requested", value=[[0, 3]]), "outside the captured"),
    "requested-layer": ("pairs", _update("requested", value=[[2, 1]]), "outside the captured"),
    "requested-twice": ("pairs", _update("requested", value=[[0, 1], [0, 1]]), "repeats"),
    "requested-triple": ("pairs", _update("requested", value=[[0, 1, 2]]), "not a .layer"),
    "requested-empty": ("pairs", _update("requested", value=[]), "non-empty list of pairs"),
    "length-zero": ("batch", _update("lengths", value=[5, 0]), "between 1 and 5"),
    "length-past-n": ("batch", _update("lengths", value=[6, 2]), "between 1 and 5"),
    "length-negative": ("batch", _update("lengths", value=[5, -2]), "between 1 and 5"),
    "length-float": ("batch", _update("lengths", value=[5, 2.0]), "list of ints"),
    "length-bool": ("batch", _update("lengths", value=[5, True]), "list of ints"),
    "lengths-string": ("batch", _update("lengths", value="5,2"), "'lengths' must be list"),
    "version-bool": ("single", _update("schema_version", value=True), "schema version True"),
    "provenance-bos": ("single", _update("provenance", "prepended_bos", value="yes"), "bos"),
    "provenance-name": ("single", _update("provenance", "model_name", value=3), "model_name"),
    "texts-count": ("batch", _update("provenance", "texts", value=["t9"]), "1 texts for 2"),
}


@pytest.mark.parametrize("fault", sorted(SIDECAR_FAULTS))
def test_bad_sidecar_content_is_refused(records, tmp_path, fault):
    kind, change, pattern = SIDECAR_FAULTS[fault]
    directory = _saved(records, kind, tmp_path / "r")
    _edit_meta(directory, change)
    _rejects(AttentionRecord.load, directory, str(directory / SIDECAR_FILE), pattern)


def test_construction_checks_the_structure(records):
    single, batch, pairs = records["single"], records["batch"], records["pairs"]
    bad = [
        (single, {"layer_index": (1, 0)}, "increasing order"),
        (single, {"head_index": (0, 1, 2, 2)}, "repeats"),
        (single, {"tokens": single.tokens[:-1]}, "token strings for 5"),
        (single, {"tokens": (*single.tokens[:-1], 5)}, "list of strings"),
        (single, {"token_ids": single.token_ids + 1000}, "outside the vocabulary"),
        (single, {"pattern": single.pattern.to(torch.int64)}, "floating point"),
        (batch, {"lengths": (0, 2)}, "between 1 and 5"),
        (pairs, {"requested": ((5, 1),)}, "outside the captured grid"),
    ]
    for record, change, pattern in bad:
        with pytest.raises(InputError, match=pattern):
            dataclasses.replace(record, **change)
    spec = single.spec.to_dict()
    for field, value, pattern in [
        ("causal", "no", "causal must be true or false"),
        ("positional", "<script>", "positional must be one of"),
        ("prepends_bos", None, "prepends_bos"),
        ("eos_token_id", True, "eos_token_id"),
    ]:
        with pytest.raises(InputError, match=pattern):
            ModelSpec(**{**spec, field: value})


# -- HeadStats -------------------------------------------------------------------------------


def _drop(name: str) -> Callable[[dict], None]:
    return lambda tensors: tensors.pop(name)


def _add_evil(tensors: dict) -> None:
    tensors["evil"] = torch.zeros(1)


STATS_TENSOR_FAULTS = {
    "short-entropy": (_set("entropy", lambda t: t[..., :-1]), "entropy has shape"),
    "float-argmax": (_set("argmax_key", lambda t: t.float()), "argmax_key must hold integers"),
    "bool-argmax": (_set("argmax_key", lambda t: t > 0), "argmax_key must hold integers"),
    "int-entropy": (_set("entropy", lambda t: t.long()), "entropy must be floating"),
    "nan-entropy": (_set("entropy", _poke((0, 0, 0, 1), float("nan"))), "entropy contains NaN"),
    "big-weight": (_set("max_weight", _poke((0, 1, 1, 2), 1.5)), "max_weight has values"),
    "argmax-past-n": (_set("argmax_key", _poke((0, 1, 1, 2), 5)), "argmax_key has values"),
    "negative-seen": (_set("key_visibility", _poke((0, 0, 0, 0), -1.0)), "key_visibility"),
    "padding-entropy": (_set("entropy", _poke((1, 0, 0, 4), 0.5)), "padded positions"),
    "padding-argmax": (_set("argmax_key", _poke((1, 0, 0, 3), 0)), "padded positions"),
    "topk-alone": (_drop("topk_weights"), "come together"),
    "topk-key-past-n": (_set("topk_keys", _poke((0, 0, 0, 4, 0), 9)), "topk_keys has values"),
    "histogram-bins": (_set("distance_histogram", lambda t: t[..., 1:]), "distance_histogram"),
    "unknown-tensor": (_add_evil, "unknown tensors"),
    "id-past-vocab": (_set("token_ids", _poke((0, 1), 1000)), "outside the vocabulary"),
}


@pytest.mark.parametrize("fault", sorted(STATS_TENSOR_FAULTS))
def test_bad_stats_tensors_are_refused(records, tmp_path, fault):
    change, pattern = STATS_TENSOR_FAULTS[fault]
    directory = _saved(records, "stats", tmp_path / "r")
    _edit_tensors(directory, change)
    _rejects(HeadStats.load, directory, str(directory / TENSOR_FILE), pattern)


STATS_SIDECAR_FAULTS = {
    "edges-unsorted": (_update("distance_bin_edges", value=[0, 2, 1, 4, 8]), "increasing"),
    "sink-negative": (_update("sink_keys", value=-1), "sink_keys must be a non-negative"),
    "sink-bool": (_update("sink_keys", value=True), "'sink_keys' must be int"),
    "has-maps-string": (_update("has_maps", value="yes"), "'has_maps' must be bool"),
    "length-past-n": (_update("lengths", value=[9, 2]), "between 1 and 5"),
    "fewer-tokens": (lambda m: m["tokens"][0].pop(), "4 token strings for 5"),
    "spec-causal": (_update("spec", "causal", value="no"), "causal must be true"),
    # more edges than the histogram has bins: the tensor file is named, with the edges
    "edges-extra": (_update("distance_bin_edges", value=[0, 1, 2, 4, 8, 16]), "6 distance_bin_e"),
}


@pytest.mark.parametrize("fault", sorted(STATS_SIDECAR_FAULTS))
def test_bad_stats_sidecar_is_refused(records, tmp_path, fault):
    change, pattern = STATS_SIDECAR_FAULTS[fault]
    directory = _saved(records, "stats", tmp_path / "r")
    _edit_meta(directory, change)
    file = TENSOR_FILE if fault == "edges-extra" else SIDECAR_FILE
    _rejects(HeadStats.load, directory, str(directory / file), pattern)


def test_stats_and_maps_of_different_captures_are_refused(records, tmp_path):
    # maps of other prompts (same shapes), as a whole valid record in maps/
    directory = _saved(records, "stats", tmp_path / "other")
    records["other_maps"].save(directory / "maps", overwrite=True)
    _rejects(HeadStats.load, directory, str(directory / SIDECAR_FILE), "other prompts")
    # the right prompts, but two heads' maps swapped: still row-stochastic
    directory = _saved(records, "stats", tmp_path / "swapped")

    def swap(tensors: dict) -> None:
        pattern = tensors["pattern"].clone()
        pattern[:, 0, 0], pattern[:, 1, 1] = (
            tensors["pattern"][:, 1, 1],
            tensors["pattern"][:, 0, 0],
        )
        tensors["pattern"] = pattern

    _edit_tensors(directory / "maps", swap)
    _rejects(HeadStats.load, directory, str(directory / SIDECAR_FILE), "different captures")


# -- links, permissions, overwriting ---------------------------------------------------------


@pytest.mark.parametrize("name", [TENSOR_FILE, SIDECAR_FILE])
def test_a_link_out_of_the_record_directory_is_not_followed(records, tmp_path, name):
    directory = _saved(records, "single", tmp_path / "r")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(directory / name, outside / name)  # the same bytes: every hash still matches
    (directory / name).symlink_to(outside / name)
    _rejects(AttentionRecord.load, directory, str(directory / name), "outside the record dir")
    # A link that stays inside the directory is fine.
    shutil.move(outside / name, directory / f"real-{name}")
    (directory / name).unlink()
    (directory / name).symlink_to(f"real-{name}")
    assert AttentionRecord.load(directory).equals(records["single"])


def test_a_maps_link_out_of_a_stats_record_is_not_followed(records, tmp_path):
    directory = _saved(records, "stats", tmp_path / "r")
    shutil.move(directory / "maps", tmp_path / "maps-elsewhere")
    (directory / "maps").symlink_to(tmp_path / "maps-elsewhere")
    _rejects(HeadStats.load, directory, str(directory / "maps"), "outside the record dir")


def test_records_are_written_with_the_permissions_of_any_new_file(records, tmp_path):
    for umask, mode in [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)]:
        directory = tmp_path / f"{umask:o}"
        previous = os.umask(umask)
        try:
            records["stats"].save(directory)
        finally:
            os.umask(previous)
        for path in [directory, directory / "maps"]:
            for name in (TENSOR_FILE, SIDECAR_FILE):
                assert (path / name).stat().st_mode & 0o777 == mode, (umask, path / name)
        assert sorted(p.name for p in directory.iterdir()) == ["maps", SIDECAR_FILE, TENSOR_FILE]


def test_an_existing_record_is_not_overwritten_unless_asked(records, tmp_path):
    first, second = records["single"], records["pairs"]
    first.save(tmp_path / "r")
    with pytest.raises(RecordExistsError) as caught:
        second.save(tmp_path / "r")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "r") in message and "overwrite" in message
    assert AttentionRecord.load(tmp_path / "r").equals(first)
    second.save(tmp_path / "r", overwrite=True)
    assert AttentionRecord.load(tmp_path / "r").equals(second)
    # HeadStats: its own files, or only a record in its maps/ directory
    records["stats"].save(tmp_path / "s")
    with pytest.raises(RecordExistsError, match="already holds a record"):
        records["stats"].save(tmp_path / "s")
    (tmp_path / "s2").mkdir()
    first.save(tmp_path / "s2" / "maps")
    with pytest.raises(RecordExistsError, match="maps"):
        records["stats"].save(tmp_path / "s2")
    assert not (tmp_path / "s2" / SIDECAR_FILE).exists()
    records["stats"].save(tmp_path / "s2", overwrite=True)
    assert HeadStats.load(tmp_path / "s2").equals(records["stats"])


def test_cli_capture_refuses_an_existing_record_unless_overwrite(tiny_dirs, tmp_path):
    from headscope.cli import app

    runner = CliRunner()
    out = tmp_path / "rec"
    args = ["capture", "--model", str(tiny_dirs["gpt2"]), "--prompt", "t5 t6", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = (out / TENSOR_FILE).read_bytes()
    refused = runner.invoke(app, [*args[:4], "t7 t8 t9", *args[5:]])
    assert refused.exit_code == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "already holds a record" in line and str(out) in line and "--overwrite" in line
    assert (out / TENSOR_FILE).read_bytes() == before
    replaced = runner.invoke(app, [*args[:4], "t7 t8 t9", *args[5:], "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert AttentionRecord.load(out).tokens[1:] == ("t7", "t8", "t9")
