"""bfloat16 / float16 models against float32 on the CPU (maps and statistics, with
stated tolerances), statistics accumulated in float32, and the same on CUDA when a
GPU is present (skipped otherwise).

Tolerances: the models are the tiny GPT-2 / Llama (GQA) / BERT checkpoints and a
tiny GPT-NeoX (Pythia's architecture), built with initializer_range=0.2 (peaked
attention), seed 0, on the two prompts below (16 and 6 tokens with BOS).
Measured max |low precision − float32| (seed 0 over the four architectures; in
brackets the worst over seeds 0–3), torch 2.13 CPU:

    field                   bfloat16           float16
    maps, max_weight,       0.0114 (0.0180)    0.0017 (0.0017)
      sink/prev mass, top-k
    entropy (nats)          0.0152 (0.0301)    0.0023 (0.0029)
    mean_distance (tokens)  0.0706 (0.1201)    0.0071 (0.0091)
    key_mass, histogram     0.0324 (0.0400)    0.0046 (0.0060)

The tolerances below are about 2.5x the worst measured value. The error comes
from q and k being rounded to the model's dtype before the (float32) scores; the
statistics add no error of their own (`test_statistics_accumulate_in_float32`).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHES, build_tiny

import headscope as hs
from headscope.errors import DeviceError, MemoryLimitError

PROMPTS = ["t5 t6 t7 t8 t9 t5 t6 t7 t8 t9 t5 t6 t7 t8 t9", "t11 t12 t13 t40 t41"]
PROBABILITIES = ("max_weight", "sink_mass", "previous_token_mass", "topk_weights")

TOLERANCE = {
    torch.bfloat16: {
        "maps": 0.05,
        "entropy": 0.08,
        "mean_distance": 0.3,
        "key_mass": 0.1,
        "distance_histogram": 0.1,
    },
    torch.float16: {
        "maps": 5e-3,
        "entropy": 8e-3,
        "mean_distance": 0.03,
        "key_mass": 0.015,
        "distance_histogram": 0.015,
    },
}
for table in TOLERANCE.values():
    table.update(dict.fromkeys(PROBABILITIES, table["maps"]))

FAMILIES = (*ARCHES, "gpt_neox")
LOW = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]
has_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _tiny_gpt_neox(directory):
    from tiny_models import build_tiny_gpt_neox

    return build_tiny_gpt_neox(directory)


@pytest.fixture(scope="module")
def peaked_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("peaked")
    dirs = {arch: build_tiny(arch, root / arch, initializer_range=0.2) for arch in ARCHES}
    dirs["gpt_neox"] = _tiny_gpt_neox(root / "gpt_neox")
    return dirs


@pytest.fixture(scope="module")
def float32_results(peaked_dirs):
    results = {}
    for arch, path in peaked_dirs.items():
        model = hs.load_model(path)
        results[arch] = (
            hs.capture(model, PROMPTS),
            hs.capture(model, PROMPTS, mode="stats", top_k=3),
        )
    return results


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("arch", FAMILIES)
def test_low_precision_maps_match_float32(peaked_dirs, float32_results, arch, dtype):
    model = hs.load_model(peaked_dirs[arch], dtype=dtype)
    assert model.dtype == dtype
    assert next(model.bridge.original_model.parameters()).dtype == dtype
    record = hs.capture(model, PROMPTS)
    expected = float32_results[arch][0]
    assert record.pattern.dtype == torch.float32
    error = _error(record.pattern, expected.pattern)
    assert error <= TOLERANCE[dtype]["maps"], error
    assert error > 0  # the model really ran in low precision
    # rows still sum to one over the real keys (the softmax ran in float32)
    real = record.lengths[1]
    sums = record.pattern[1, :, :, :real, :real].sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("arch", FAMILIES)
def test_low_precision_statistics_match_float32(peaked_dirs, float32_results, arch, dtype):
    model = hs.load_model(peaked_dirs[arch], dtype=dtype)
    stats = hs.capture(model, PROMPTS, mode="stats", top_k=3)
    expected = float32_results[arch][1]
    for name, tolerance in TOLERANCE[dtype].items():
        if name == "maps":
            continue
        got = getattr(stats, name)
        assert got.dtype == torch.float32, name
        error = _error(got, getattr(expected, name))
        assert error <= tolerance, (name, error)
    assert torch.equal(stats.key_visibility, expected.key_visibility)  # counts, exact


@pytest.mark.parametrize("dtype", LOW)
def test_statistics_accumulate_in_float32(peaked_dirs, dtype):
    """The statistics of a low-precision model equal those computed in float64
    from its own (float32) maps: all the low-precision error is in q and k,
    none is added by the accumulation."""
    model = hs.load_model(peaked_dirs["llama"], dtype=dtype)
    stats = hs.capture(model, PROMPTS[0], mode="stats", heads=[(0, 0), (1, 3)])
    maps = stats.maps
    for layer, head in [(0, 0), (1, 3)]:
        pattern = maps.map(layer, head).double()
        n = pattern.shape[-1]
        position = torch.arange(n)
        entropy = -torch.xlogy(pattern, pattern).sum(-1)
        distance = (position[:, None] - position[None, :]).abs().double()
        for name, expected in (
            ("entropy", entropy),
            ("max_weight", pattern.amax(-1)),
            ("mean_distance", (pattern * distance).sum(-1)),
            ("key_mass", pattern.sum(-2)),
        ):
            got = getattr(stats, name)[layer, head].double()
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=name)


def test_dtype_names_and_errors(peaked_dirs):
    assert hs.load_model(peaked_dirs["gpt2"], dtype="bf16").dtype == torch.bfloat16
    assert hs.load_model(peaked_dirs["gpt2"], dtype="float16").dtype == torch.float16
    with pytest.raises(DeviceError, match="unknown dtype 'int8'; choose float32, bfloat16"):
        hs.load_model(peaked_dirs["gpt2"], dtype="int8")
    with pytest.raises(DeviceError, match="unknown dtype 'int64'"):
        hs.load_model(peaked_dirs["gpt2"], dtype=torch.int64)
    # float64 is allowed for numerical checks (finite differences).
    assert hs.load_model(peaked_dirs["gpt2"], dtype="float64").dtype == torch.float64


# -- CUDA (skipped without a GPU) ------------------------------------------------------------


@has_cuda
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"), *LOW])
@pytest.mark.parametrize("arch", FAMILIES)
def test_cuda_matches_cpu_float32(peaked_dirs, float32_results, arch, dtype):
    model = hs.load_model(peaked_dirs[arch], "cuda", dtype=dtype)
    assert model.device.type == "cuda" and model.dtype == dtype
    record = hs.capture(model, PROMPTS)
    stats = hs.capture(model, PROMPTS, mode="stats", top_k=3)
    maps_expected, stats_expected = float32_results[arch]
    tolerance = TOLERANCE.get(dtype, dict.fromkeys(TOLERANCE[torch.float16], 1e-4))
    assert record.pattern.device.type == "cpu"
    assert _error(record.pattern, maps_expected.pattern) <= tolerance["maps"]
    for name, atol in tolerance.items():
        if name != "maps":
            got = getattr(stats, name)
            assert got.dtype == torch.float32 and got.device.type == "cpu", name
            assert _error(got, getattr(stats_expected, name)) <= atol, name


@has_cuda
def test_cuda_memory_and_device_checks(peaked_dirs):
    from headscope.models.memory import available_memory

    free = available_memory("cuda")
    assert 0 < free <= torch.cuda.get_device_properties(0).total_memory
    count = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"has {count} CUDA device"):
        hs.load_model(peaked_dirs["gpt2"], f"cuda:{count}")
    model = hs.load_model(peaked_dirs["gpt2"], "cuda:0")
    with pytest.raises(MemoryLimitError, match="max_memory"):
        hs.capture(model, PROMPTS, max_memory=1000)
