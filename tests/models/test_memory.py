"""The memory guard: pure estimates against known sizes, safetensors headers read
without loading, sizes parsed, and refusals triggered through `max_memory` (no
allocation) whose one-line messages name the estimate, the limit and the options."""

from __future__ import annotations

import struct

import pytest
import torch

import headscope as hs
from headscope.errors import InputError, MemoryLimitError
from headscope.models import memory
from headscope.models.memory import (
    MemoryEstimate,
    Part,
    SafetensorsFormatError,
    capture_estimate,
    check_fits,
    checkpoint_size,
    format_bytes,
    largest_fitting,
    parse_size,
    safetensors_header,
    weights_estimate,
)

GPT2_SMALL = {"n_layers": 12, "n_heads": 12, "n_kv_heads": 12, "d_model": 768, "d_head": 64}


def test_weights_estimate_of_gpt2_small():
    # GPT-2 small has 124,439,808 parameters (tied embedding counted once).
    assert weights_estimate(124_439_808, torch.float32).total == 497_759_232
    assert weights_estimate(124_439_808, torch.bfloat16).total == 248_879_616
    assert weights_estimate(124_439_808, torch.float16, other_bytes=8).total == 248_879_624
    assert weights_estimate(10, torch.float32).on("device") == 40


def test_capture_estimate_of_gpt2_small_maps_at_1024_tokens():
    estimate = capture_estimate(
        **GPT2_SMALL, batch=1, n_tokens=1024, n_maps=144, map_layers=12, query_tile=128
    )
    parts = {part.label: part.bytes for part in estimate.parts}
    assert parts["maps"] == 144 * 1024 * 1024 * 4 == 603_979_776  # every head's map
    assert parts["tile buffers"] == 3 * 12 * 128 * 1024 * 4
    assert parts["one layer's maps in the kernel"] == 12 * 1024 * 1024 * 4
    assert parts["activations"] == 16 * 1024 * 768 * 4 + 1024 * 48 * 64 * 4
    assert estimate.total == sum(parts.values())
    assert estimate.on("host") == parts["maps"]
    assert "statistics" not in parts


def test_capture_estimate_of_statistics_and_eager_attention():
    stats = capture_estimate(
        **GPT2_SMALL, batch=2, n_tokens=1024, n_maps=0, mode="stats", top_k=1000000
    )
    parts = {part.label: part.bytes for part in stats.parts}
    assert parts["maps"] == 0
    assert parts["statistics"] == 2 * 12 * 2 * 12 * 1024 * 36
    assert parts["top-k keys"] == 2 * 12 * 2 * 12 * 1024 * 1024 * 12  # k capped at N
    eager = capture_estimate(
        **GPT2_SMALL,
        batch=1,
        n_tokens=512,
        n_maps=24,
        map_layers=2,
        kernel="eager",
        dtype=torch.bfloat16,
    )
    parts = {part.label: part.bytes for part in eager.parts}
    assert parts["eager attention scores"] == 3 * 12 * 512 * 512 * 2
    assert parts["eager patterns read"] == 2 * 12 * 512 * 512 * 2
    assert "tile buffers" not in parts
    # maps grow with the square of the prompt, statistics linearly
    long = capture_estimate(**GPT2_SMALL, batch=1, n_tokens=2048, n_maps=144, map_layers=12)
    short = capture_estimate(**GPT2_SMALL, batch=1, n_tokens=1024, n_maps=144, map_layers=12)
    assert dict((p.label, p.bytes) for p in long.parts)["maps"] == 4 * 603_979_776
    assert long.total > 3.9 * short.total * 0.9


def test_checkpoint_size_reads_headers_only(tiny_dirs):
    import math

    from safetensors import safe_open

    with safe_open(tiny_dirs["llama"] / "model.safetensors", "pt") as handle:
        floats = sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())  # noqa: SIM118
    assert checkpoint_size(tiny_dirs["llama"]) == (floats, 0)
    model = hs.load_model(tiny_dirs["llama"])
    n_params = sum(p.numel() for p in model.bridge.original_model.parameters())
    assert floats == n_params


def test_safetensors_header_is_checked_against_the_file(tiny_dirs, tmp_path):
    good = tiny_dirs["gpt2"] / "model.safetensors"
    data = good.read_bytes()
    assert "transformer.wte.weight" in safetensors_header(good)
    cases = {
        "truncated": (data[:-10], "is truncated: its tensors need"),
        "inside-header": (data[:100], "ends inside its header"),
        "short": (data[:5], "too short for a header"),
        "trailing": (data + b"\0" * 7, "7 bytes follow the last tensor"),
        "not-json": (struct.pack("<Q", 4) + b"{{{{", "header is not JSON"),
        "array": (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        "huge": (struct.pack("<Q", 10**12) + b"x" * 16, "impossible"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(SafetensorsFormatError, match=message) as info:
            safetensors_header(path)
        assert not info.value.pickle, name
    pickled = tmp_path / "pickle.safetensors"
    torch.save({"w": torch.zeros(2)}, pickled)
    with pytest.raises(SafetensorsFormatError, match="is a pickle") as info:
        safetensors_header(pickled)
    assert info.value.pickle
    assert checkpoint_size(tmp_path) is None  # unreadable headers: no estimate


def test_a_header_length_starting_like_a_pickle_is_still_safetensors(tmp_path):
    """A header of 0x..80 bytes starts with the pickle opcode 0x80: not a pickle."""
    from safetensors.torch import save_file

    for width in range(1, 300):
        path = tmp_path / "w.safetensors"
        save_file({"w" * width: torch.zeros(1)}, path)
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no header of length 0x..80 found")
    assert list(safetensors_header(path)) == ["w" * width]


def test_parse_and_format_sizes():
    assert parse_size(1000) == 1000
    assert parse_size("8GB") == 8 * 10**9
    assert parse_size("512 MiB") == 512 * 2**20
    assert parse_size("1.5g") == 1_500_000_000
    assert parse_size("2e3") == 2000
    for bad in ("lots", "8 parsecs", "", "-5MB", 0, -1, True, 2.5):
        with pytest.raises(InputError, match="max_memory"):
            parse_size(bad)
    assert format_bytes(300) == "300 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(603_979_776) == "576 MiB"
    assert format_bytes(3 * 2**30) == "3 GiB"


def test_largest_fitting():
    assert largest_fitting(lambda n: n * n <= 50, 100) == 7
    assert largest_fitting(lambda n: True, 9) == 9
    assert largest_fitting(lambda n: False, 9) == 0


def test_check_fits_uses_available_memory_or_max_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)
    small = MemoryEstimate((Part("maps", 600), Part("tile buffers", 300, "device")))
    check_fits(small, device="cpu", what="x")
    big = MemoryEstimate((Part("maps", 900), Part("tile buffers", 300, "device")))
    with pytest.raises(MemoryLimitError) as info:
        check_fits(
            big,
            device="cpu",
            what="capturing the maps of 2 heads",
            options=lambda fits: ["half the maps"] if fits(small) else [],
        )
    message = str(info.value)
    assert message == (
        "capturing the maps of 2 heads needs about 1.17 KiB (maps 900 B, tile buffers 300 B) "
        "but only 1000 B is available on cpu; options that fit: half the maps"
    )
    with pytest.raises(MemoryLimitError, match="only 500 B is allowed \\(max_memory\\)"):
        check_fits(small, device="cpu", what="x", max_memory=500)
    check_fits(small, device="cpu", what="x", max_memory=10**9)  # cannot raise the limit


def test_check_fits_splits_device_and_host_on_cuda(monkeypatch):
    free = {"cuda": 100, "cpu": 10_000}
    monkeypatch.setattr(memory, "available_memory", lambda d: free[torch.device(d).type])
    estimate = MemoryEstimate((Part("maps", 5000), Part("tile buffers", 80, "device")))
    check_fits(estimate, device=torch.device("cuda", 0), what="x")
    estimate = MemoryEstimate((Part("maps", 5000), Part("tile buffers", 200, "device")))
    with pytest.raises(MemoryLimitError, match="only 100 B is available on cuda:0"):
        check_fits(estimate, device=torch.device("cuda", 0), what="x")


def test_load_model_refuses_weights_that_do_not_fit(tiny_dirs):
    floats, _ = checkpoint_size(tiny_dirs["gpt2"])
    with pytest.raises(MemoryLimitError) as info:
        hs.load_model(tiny_dirs["gpt2"], max_memory=floats * 3)
    message = str(info.value)
    assert f"loading {tiny_dirs['gpt2']} needs about {format_bytes(floats * 4)}" in message
    assert "weights in float32" in message and "is allowed (max_memory)" in message
    assert "options that fit: dtype bfloat16" in message and "\n" not in message
    with pytest.raises(MemoryLimitError, match="free some memory or use a machine with more"):
        hs.load_model(tiny_dirs["gpt2"], dtype="bfloat16", max_memory=floats)
    assert hs.load_model(tiny_dirs["gpt2"], dtype="bfloat16", max_memory=floats * 3).spec
