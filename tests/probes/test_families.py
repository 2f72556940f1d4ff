"""The family matrix: every model family headscope supports, as a tiny random
checkpoint built here (tests/families.py), against plain Hugging Face eager.

Per family: (a) maps from the tiled kernel equal Hugging Face's
`output_attentions`; (b) `capture(mode="stats")` equals the statistics of those
maps; (c) a head gated to 0 equals zeroing that head's input columns of the
output projection in Hugging Face; (d) logits equal Hugging Face's. Each family
is measured once per session; the results go to artifacts/families.json and
docs/models.md must equal what they render (tests/render_models_doc.py).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import warnings
from pathlib import Path

import pytest
import torch
from families import BY_NAME, FAMILIES, PROMPT_LENGTH, UNSUPPORTED, WINDOW, Family, load_eager
from render_models_doc import DOC, RESULTS, render
from tiny_models import VOCAB

import headscope as hs
from headscope.errors import SUPPORTED_FAMILIES, ModelNotFoundError, UnsupportedModelError
from headscope.kernels.masks import dense_mask
from headscope.probes.fast_attention import attention_route, instrumented_attention

TOLERANCE = 1e-5
GATED = (0, 1)  # (layer, head) gated to 0: layer 0, so the change runs through layer 1
SINK_K = 2
TILE = 5  # query rows per kernel tile: several tiles, windows crossing tile edges
NAMES = [family.name for family in FAMILIES]


def token_rows() -> list[list[int]]:
    """Two prompts (BOS + random words), PROMPT_LENGTH and PROMPT_LENGTH − 3 tokens
    (both longer than the sliding windows), right-padded by `batch_from_ids`."""
    generator = torch.Generator().manual_seed(0)
    return [
        [1, *torch.randint(3, VOCAB, (length - 1,), generator=generator).tolist()]
        for length in (PROMPT_LENGTH, PROMPT_LENGTH - 3)
    ]


def map_statistics(maps: torch.Tensor, edges: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Readable statistics of `[batch, layer, head, query, key]` maps (rows of
    padded queries are zero and stay zero)."""
    n = maps.shape[-1]
    query = torch.arange(n)[:, None]
    key = torch.arange(n)[None, :]
    distance = (query - key).abs().float()
    histogram = torch.stack(
        [
            (maps * ((distance >= lo) & (distance < hi))).sum((-1, -2))
            for lo, hi in itertools.pairwise(edges)
        ],
        dim=-1,
    )
    return {
        "entropy": -torch.xlogy(maps, maps).sum(-1),
        "max_weight": maps.amax(-1),
        "sink_mass": maps[..., :SINK_K].sum(-1),
        "previous_token_mass": (maps * (key == query - 1)).sum(-1),
        "mean_distance": (maps * distance).sum(-1),
        "key_mass": maps.sum(-2),
        "distance_histogram": histogram,
    }


def expected_visibility(family: Family, real: torch.Tensor, n_layers: int) -> torch.Tensor:
    """`[batch, layer, key]`: how many real queries see each key, from the family's
    causality and per-layer windows (independent of any model code)."""
    n = real.shape[1]
    per_layer = []
    for layer in range(n_layers):
        visible = dense_mask(
            n, n, causal=family.causal, key_padding_mask=real, window=family.windows[layer]
        )[:, 0]
        per_layer.append((visible & real[:, :, None]).sum(-2).float())
    return torch.stack(per_layer, 1)


def _window_bites(maps: torch.Tensor, real: torch.Tensor, causal: bool, window: int) -> bool:
    """Whether the prompt reaches past `window` and Hugging Face's maps `[batch,
    head, query, key]` give no weight to the keys the window hides."""
    n = real.shape[1]
    full = dense_mask(n, n, causal=causal, key_padding_mask=real)
    hidden = full & ~dense_mask(n, n, causal=causal, key_padding_mask=real, window=window)
    hidden = (hidden & real[:, None, :, None]).expand_as(maps)
    return bool(hidden.any()) and bool((maps[hidden] == 0).all())


def _ignore(layer: int, result: object) -> None:
    pass


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@torch.no_grad()
def measure(family: Family, directory: Path) -> dict:
    """Build, load and check one family; returns its JSON record."""
    start = time.perf_counter()
    family.build(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hs.load_model(directory)
        hf = load_eager(directory, family)
    spec = model.spec
    batch = model.batch_from_ids(token_rows())
    real = batch.attention_mask
    rows = real[:, None, None, :, None]  # real queries of [batch, layer, head, query, key]
    reference = hf(batch.ids, attention_mask=real.long(), output_attentions=True)
    hf_maps = torch.stack(reference.attentions, 1).float() * rows

    # (a) maps from the tiled kernel
    record = hs.capture(model, batch, query_tile=TILE)
    maps = torch.where(rows, record.pattern, 0.0)
    maps_error = _error(maps, hf_maps)

    # (b) statistics against the Hugging Face maps
    stats = hs.capture(model, batch, mode="stats", sink_k=SINK_K, query_tile=TILE)
    expected = map_statistics(hf_maps, stats.distance_bin_edges)
    expected["key_visibility"] = expected_visibility(family, real, spec.n_layers)[:, :, None]
    stat_errors = {
        name: _error(getattr(stats, name), value.expand_as(getattr(stats, name)))
        for name, value in expected.items()
    }
    top2 = torch.topk(hf_maps, 2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1] > 1e-4) & real[:, None, None, :]
    argmax_agrees = bool(torch.equal(stats.argmax_key[clear], hf_maps.argmax(-1)[clear]))
    window_bites = all(
        _window_bites(hf_maps[:, layer], real, family.causal, window)
        for layer, window in enumerate(family.windows)
        if window is not None
    )

    # (d) logits, eager bridge and with the kernel in every attention layer
    hf_logits = reference.logits
    eager_logits = model.forward(batch).logits
    with instrumented_attention(model.bridge, collector=_ignore, stats=False, query_tile=TILE):
        kernel_logits = model.forward(batch).logits
    logits_error = max(
        _error(eager_logits[real], hf_logits[real]), _error(kernel_logits[real], hf_logits[real])
    )

    # (c) one head gated to 0 against the zeroed output projection
    gates = torch.ones(spec.n_layers, spec.n_heads)
    gates[GATED] = 0.0
    with hs.gate_heads(model, gates):
        gated_eager = model.forward(batch).logits
        with instrumented_attention(model.bridge, collector=_ignore, stats=False, query_tile=TILE):
            gated_kernel = model.forward(batch).logits
    projection = hf.get_submodule(family.out_proj.format(layer=GATED[0]))
    saved = projection.weight.detach().clone()
    columns = slice(GATED[1] * spec.d_head, (GATED[1] + 1) * spec.d_head)
    in_features = saved.shape[0] if type(projection).__name__ == "Conv1D" else saved.shape[1]
    assert in_features == spec.n_heads * spec.d_head, "the output projection reads all heads"
    try:
        if type(projection).__name__ == "Conv1D":  # GPT-2: weight [in, out]
            projection.weight[columns, :] = 0.0
        else:
            projection.weight[:, columns] = 0.0
        zeroed = hf(batch.ids, attention_mask=real.long()).logits
    finally:
        projection.weight.copy_(saved)
    gate_error = max(
        _error(gated_eager[real], zeroed[real]), _error(gated_kernel[real], zeroed[real])
    )
    gate_effect = _error(zeroed[real], hf_logits[real])

    checks = {
        "maps": {"max_error": maps_error, "kernel": record.provenance.kernel},
        "stats": {
            "max_error": max(stat_errors.values()),
            "entropy_error": stat_errors["entropy"],
            "errors": stat_errors,
            "argmax_agrees": argmax_agrees,
            "kernel": stats.provenance.kernel,
        },
        "gate": {"max_error": gate_error, "effect": gate_effect},
        "logits": {"max_error": logits_error},
    }
    for check in checks.values():
        check["passed"] = check["max_error"] <= TOLERANCE
    checks["maps"]["passed"] &= record.provenance.kernel == "tiled"
    checks["stats"]["passed"] &= (
        argmax_agrees and window_bites and stats.provenance.kernel == "tiled"
    )
    checks["gate"]["passed"] &= gate_effect > 1e-3
    return {
        "name": family.name,
        "model_class": family.model_class,
        "features": family.features,
        "route": "; ".join(sorted({attention_route(block.attn) for block in model.bridge.blocks})),
        "bridge": type(model.bridge.blocks[0].attn).__name__,
        "layers": spec.n_layers,
        "heads": spec.n_heads,
        "kv_heads": spec.n_kv_heads,
        "d_head": spec.d_head,
        "stats_available": stats.provenance.kernel == "tiled",
        "window_exercised": window_bites,
        "checks": checks,
        "seconds": round(time.perf_counter() - start, 2),
    }


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Measures each family on first use (once per session)."""
    root = tmp_path_factory.mktemp("families")
    logging.getLogger().setLevel(logging.ERROR)
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            family = BY_NAME[name]
            cache[name] = measure(family, root / family.name.replace(" ", "_"))
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_maps_equal_hugging_face_eager(matrix, name):
    check = matrix(name)["checks"]["maps"]
    assert check["kernel"] == "tiled", f"{name}: capture fell back to eager attention"
    assert check["max_error"] <= TOLERANCE, check


@pytest.mark.parametrize("name", NAMES)
def test_statistics_equal_those_of_the_maps(matrix, name):
    result = matrix(name)
    check = result["checks"]["stats"]
    assert result["stats_available"] and check["kernel"] == "tiled"
    assert check["entropy_error"] <= TOLERANCE, check
    assert check["max_error"] <= TOLERANCE, check["errors"]
    assert check["argmax_agrees"]
    assert result["window_exercised"], f"{name}: the prompt does not reach past the window"


@pytest.mark.parametrize("name", NAMES)
def test_gated_head_equals_zeroed_output_projection(matrix, name):
    check = matrix(name)["checks"]["gate"]
    assert check["effect"] > 1e-3, "gating the head must change the logits"
    assert check["max_error"] <= TOLERANCE, check


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_hugging_face(matrix, name):
    check = matrix(name)["checks"]["logits"]
    assert check["max_error"] <= TOLERANCE, check


def test_unloadable_family_gets_a_one_line_error(tmp_path):
    directory = UNSUPPORTED.build(tmp_path / "distilbert")
    with pytest.raises(UnsupportedModelError) as caught:
        hs.load_model(directory)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    assert UNSUPPORTED.model_class in message
    assert all(name in message for name in SUPPORTED_FAMILIES)
    assert isinstance(caught.value, ModelNotFoundError)  # callers that catch it keep working


def test_supported_families_are_the_matrix():
    assert tuple(NAMES) == SUPPORTED_FAMILIES
    assert WINDOW < PROMPT_LENGTH - 3


def test_models_doc_renders_the_current_results(matrix, tmp_path):
    """Writes artifacts/families.json; docs/models.md must be its rendering."""
    directory = UNSUPPORTED.build(tmp_path / "distilbert")
    try:
        hs.load_model(directory)
        error = None
    except UnsupportedModelError as caught:
        error = caught
    assert error is not None
    results = {
        "generated_by": "tests/probes/test_families.py",
        "tolerance": TOLERANCE,
        "prompt_length": PROMPT_LENGTH,
        "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        "families": [matrix(name) for name in NAMES],
        "unsupported": [
            {
                "name": UNSUPPORTED.name,
                "model_class": UNSUPPORTED.model_class,
                "error_type": type(error).__name__,
                "error": str(error),
            }
        ],
    }
    results["seconds"] = round(sum(family["seconds"] for family in results["families"]), 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    rendered = render(results)
    current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    assert current == rendered, (
        "docs/models.md is out of date: run `python tests/render_models_doc.py` "
        f"(it renders {RESULTS})"
    )


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
