"""Checkpoints and the summary reduction without a model: shard results (scores,
unit labels, warnings, targets, clean metric, prompt summaries) and pruning
curves round-trip bit for bit through safetensors (no pickles), a checkpoint of
another layout or ranking is refused (`CheckpointError`), so is one that does
not verify (another slot or configuration, tampered contents or metadata,
other prompts, methods or shapes than the job expects, not safetensors), and the streaming reduction of prompt
summaries equals the mean over the stacked prompts."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from headscope.errors import CheckpointError
from headscope.experiments.summaries import PromptSummary
from headscope.reports.checkpoints import (
    LAYOUT,
    Expected,
    ShardResult,
    ShardStore,
    content_digest,
    orders_digest,
)
from headscope.reports.scoring import ShardScores
from headscope.reports.summaries import SINK_THRESHOLD, PruningCurves, reduce_summaries

LAYERS, HEADS = 2, 3


def _summary(rng: np.random.Generator, n: int, *, nan: bool = False) -> PromptSummary:
    taxonomy = {
        "previous_token": rng.random((LAYERS, HEADS)),
        "induction": np.where(
            rng.random((LAYERS, HEADS)) < 0.3, np.nan, rng.random((LAYERS, HEADS))
        )
        if nan
        else rng.random((LAYERS, HEADS)),
    }
    sinks = rng.random((LAYERS, HEADS, n))
    return PromptSummary(
        taxonomy=taxonomy,
        sinks=sinks[:, :, :n],  # a view, as summarize_prompts returns
        influence=rng.random((LAYERS, n)),
        influence_baseline=rng.random((LAYERS, n)),
        tokens=tuple(f'<t{i}> & "{i}"' for i in range(n)),
        bos_prepended=bool(n % 2),
    )


def _shard(seed: int = 0) -> ShardResult:
    rng = np.random.default_rng(seed)
    scores = {
        "gradient": torch.from_numpy(rng.random((3, LAYERS, HEADS))),
        "chg": torch.from_numpy(rng.random((2, LAYERS, HEADS))).float(),
    }
    scoring = ShardScores(
        scores=scores,
        units={
            "gradient": ("line-4", "line-5", "line-6"),
            "chg": ("shard-1/seed-0", "shard-1/seed-1"),
        },
        warnings={"chg": 'degenerate fit: "every" G⁻ at σ(−4) <b>'},
        warned={"chg": (0, 1, 2)},
        prompt_targets=("continuation", "repeats", "all"),
        target_tokens=(4, 1, 6),
        clean=torch.from_numpy(rng.random(3)),
    )
    return ShardResult(scoring, tuple(_summary(rng, n, nan=True) for n in (5, 2, 7)))


def test_a_shard_round_trips_bit_for_bit(tmp_path):
    store = ShardStore(tmp_path, {"model": "x"})
    result = _shard()
    assert not store.done(4)
    store.save(4, result)
    assert store.done(4) and not list(store.root.glob(".tmp-*"))
    loaded = store.load(4)
    assert list(loaded.scores) == ["gradient", "chg"]  # method order kept
    for method, scores in result.scores.items():
        assert loaded.scores[method].dtype == torch.float64
        assert torch.equal(loaded.scores[method], scores.double()), method
    got, want = loaded.scoring, result.scoring
    assert (got.units, got.warnings, got.warned) == (want.units, want.warnings, want.warned)
    assert (got.prompt_targets, got.target_tokens) == (want.prompt_targets, want.target_tokens)
    assert got.clean.dtype == torch.float64 and torch.equal(got.clean, want.clean)
    assert len(loaded.summaries) == len(result.summaries)
    for got, want in zip(loaded.summaries, result.summaries, strict=True):
        assert list(got.taxonomy) == list(want.taxonomy)
        for name in want.taxonomy:
            assert got.taxonomy[name].tobytes() == want.taxonomy[name].tobytes(), name
        for field in ("sinks", "influence", "influence_baseline"):
            a, b = getattr(got, field), getattr(want, field)
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == np.ascontiguousarray(b).tobytes(), field
        assert (got.tokens, got.bos_prepended) == (want.tokens, want.bos_prepended)
    with safe_open(str(store.path(4)), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["layout"] == str(LAYOUT)
    assert json.loads(metadata["prompts"])[0]["tokens"][1] == '<t1> & "1"'


def test_pruning_curves_round_trip_and_are_tied_to_their_ranking(tmp_path):
    store = ShardStore(tmp_path, {"model": "x"})
    means = {"ablation": np.arange(6.0).reshape(2, 3), "chg": np.ones((2, 3))}
    digest = orders_digest(means)
    curves = PruningCurves(
        fractions=(0.0, 0.5, 1.0),
        curves={"chg": (1.0, 0.1 + 0.2, np.pi), "ablation": (1.0, 2.0, 3.0)},
        clean=1 / 3,
        n_prompts=7,
    )
    assert store.load_pruning(digest) is None
    store.save_pruning(curves, digest)
    assert store.load_pruning(digest) == curves  # same floats, same method order
    assert list(store.load_pruning(digest).curves) == ["chg", "ablation"]
    other = {**means, "chg": np.full((2, 3), 1.0 + 1e-15)}
    assert orders_digest(other) != digest
    with pytest.raises(CheckpointError, match="ranked by other mean scores"):
        store.load_pruning(orders_digest(other))


def _nan_padded(arrays: list[np.ndarray]) -> np.ndarray:
    width = max(a.shape[-1] for a in arrays)
    stack = np.full((len(arrays), *arrays[0].shape[:-1], width), np.nan)
    for i, a in enumerate(arrays):
        stack[i, ..., : a.shape[-1]] = a
    return stack


def test_the_reduction_is_the_mean_over_prompts_of_each_summary():
    rng = np.random.default_rng(3)
    per_prompt = [_summary(rng, n, nan=True) for n in (4, 9, 1, 6, 9)]
    # a category undefined on every prompt for one head stays NaN
    for summary in per_prompt:
        summary.taxonomy["induction"][0, 0] = np.nan
    pruning = PruningCurves((0.0, 1.0), {"ablation": (2.0, 5.0)}, 2.0, 5)
    reduced = reduce_summaries(per_prompt, pruning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of the all-NaN head
        for name in ("previous_token", "induction"):
            expected = np.nanmean(np.stack([s.taxonomy[name] for s in per_prompt]), axis=0)
            np.testing.assert_allclose(reduced.taxonomy[name], expected, rtol=1e-15)
        assert np.isnan(reduced.taxonomy["induction"][0, 0])
        alpha = np.mean([s.sinks[:, :, 0] for s in per_prompt], axis=0)
        np.testing.assert_allclose(reduced.sink_alpha, alpha, rtol=1e-15)
        influence = np.nanmean(_nan_padded([s.influence for s in per_prompt]), axis=0)
        np.testing.assert_allclose(reduced.influence, influence, rtol=1e-15)
        baseline = np.nanmean(_nan_padded([s.influence_baseline for s in per_prompt]), axis=0)
        np.testing.assert_allclose(reduced.influence_baseline, baseline, rtol=1e-15)
    assert reduced.influence.shape == (LAYERS, 9)
    assert reduced.peak_distance == [int(np.argmax(row)) for row in influence]
    assert reduced.sink_heads == [
        (int(layer), int(head)) for layer, head in np.argwhere(alpha > SINK_THRESHOLD)
    ]
    assert reduced.sink_example is per_prompt[0].sinks
    assert reduced.sink_tokens == per_prompt[0].tokens
    assert reduced.bos_prepended  # any prompt's BOS counts
    assert (reduced.pruning, reduced.clean_metric, reduced.pruning_prompts) == (
        {"ablation": [2.0, 5.0]},
        2.0,
        5,
    )
    # the same summaries, reduced again, give the same bits
    again = reduce_summaries(per_prompt, pruning)
    assert again.influence.tobytes() == reduced.influence.tobytes()
    with pytest.raises(ValueError, match="no prompt summaries"):
        reduce_summaries([], pruning)


def test_a_shard_is_reused_only_when_it_verifies(tmp_path):
    store = ShardStore(tmp_path, {"model": "x"})
    store.save(1, _shard())
    fits = Expected(lines=(4, 5, 6), methods=("gradient", "chg"), grid=(LAYERS, HEADS))
    assert store.done(1, fits)
    with safe_open(str(store.path(1)), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["config_sha256"] == store.config_sha256 and metadata["checkpoint"] == "shard-1"
    assert len(metadata["content_sha256"]) == 64

    mismatches = [
        (replace(fits, lines=(4, 5, 6, 7)), "3 prompt summaries for 4 prompts"),
        (replace(fits, lines=(1, 2, 3)), "gradient scores other prompts than this shard's"),
        (replace(fits, methods=("chg", "gradient")), "scores for methods ['gradient', 'chg']"),
        (replace(fits, grid=(LAYERS, HEADS + 1)), "score/gradient has shape [3, 2, 3]"),
    ]
    for expected, message in mismatches:
        with pytest.raises(CheckpointError, match=re.escape(message)):
            store.load(1, expected)

    # the same file in another slot, or in another configuration's folder
    shutil.copyfile(store.path(1), store.path(2))
    with pytest.raises(CheckpointError, match="holds shard-1, not shard-2"):
        store.load(2)
    other = ShardStore(tmp_path, {"model": "y"})
    shutil.copyfile(store.path(1), other.path(1))
    with pytest.raises(CheckpointError, match="computed under another configuration"):
        other.load(1)

    # tampered metadata (a token) under the same digest
    tensors = load_file(str(store.path(1)))
    prompts = json.loads(metadata["prompts"])
    prompts[0]["tokens"][0] = "forged"
    save_file(tensors, str(store.path(1)), metadata={**metadata, "prompts": json.dumps(prompts)})
    with pytest.raises(CheckpointError, match="do not match their sha256"):
        store.load(1)
    assert not store.done(1)

    for data, message in ((b"", "an empty file"), (b"\x00" * 64, "not a readable safetensors")):
        store.path(1).write_bytes(data)
        with pytest.raises(CheckpointError, match=message):
            store.load(1)
    store.path(1).unlink()
    store.path(1).mkdir()
    with pytest.raises(CheckpointError, match="not a file"):
        store.load(1)


def test_the_content_digest_covers_names_dtypes_shapes_bytes_and_metadata():
    base = {"a": torch.arange(6, dtype=torch.float64).reshape(2, 3), "b": torch.tensor([True])}
    digest = content_digest(base, {"k": "v"})
    assert digest == content_digest(dict(reversed(base.items())), {"k": "v", "content_sha256": "x"})
    changed = [
        ({**base, "a": base["a"].reshape(3, 2)}, {"k": "v"}),
        ({**base, "a": base["a"].float()}, {"k": "v"}),
        ({**base, "a": base["a"] + 1e-12}, {"k": "v"}),
        ({"c": base["a"], "b": base["b"]}, {"k": "v"}),
        (base, {"k": "w"}),
    ]
    assert len({digest, *(content_digest(t, m) for t, m in changed)}) == 1 + len(changed)


def test_a_shard_keeps_the_taxonomy_support_and_the_models_causality(local_report):
    """The summaries' evidence survives the checkpoint: labels need their support
    and the sink rule the models' mask (an old checkpoint without them would fall
    back to α_0 > 0.3 alone)."""
    import json

    document = json.loads((local_report.out_dir / "report.json").read_text(encoding="utf-8"))
    assert "uniform attention" in document["sinks"]["rule"]
    assert "causal mask" in document["sinks"]["rule"]
