"""Aggregates: percentile-bootstrap intervals (the project's
`bootstrap_interval`, in memory-bounded chunks), Spearman agreement of the
rankings, and top heads by magnitude with their sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headscope.analyses.uncertainty import RESAMPLES, bootstrap_interval
from headscope.reports import aggregate as aggregate_module
from headscope.reports.aggregate import INTERVAL, aggregate, rank_agreement, top_heads
from headscope.reports.checkpoints import ShardResult, ShardStore, config_hash
from headscope.reports.scoring import ShardScores


def test_interval_is_the_percentile_bootstrap(monkeypatch):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(12, 2, 3))
    scores[:, 0, 0] = np.abs(scores[:, 0, 0]) + 1.0  # clearly positive
    result = aggregate(scores)
    reference = bootstrap_interval(torch.from_numpy(scores))
    assert result.n == 12 and f"percentile bootstrap, {RESAMPLES} resamples" == INTERVAL
    np.testing.assert_allclose(result.mean, scores.mean(0), rtol=1e-12)
    np.testing.assert_allclose(result.low, reference.low.numpy(), rtol=1e-12)
    np.testing.assert_allclose(result.high, reference.high.numpy(), rtol=1e-12)
    assert (result.low <= result.mean).all() and (result.mean <= result.high).all()
    assert result.significant[0, 0]
    assert np.array_equal(result.significant, reference.significant.numpy())
    # heads taken one at a time (a tiny memory budget) give the same intervals
    monkeypatch.setattr(aggregate_module, "_BOOTSTRAP_BYTES", 1)
    chunked = aggregate(scores)
    np.testing.assert_allclose(chunked.low, result.low, rtol=1e-12)
    np.testing.assert_allclose(chunked.high, result.high, rtol=1e-12)
    single = aggregate(scores[:1])
    assert np.isnan(single.low).all() and np.array_equal(single.mean, scores[0])
    assert not single.defined.any() and not single.significant.any()


def test_rankings_are_by_magnitude_with_the_sign_kept():
    a = np.arange(6.0).reshape(2, 3)
    table = rank_agreement({"a": a, "b": a * 10, "c": -a})
    # c ranks the heads exactly as a does: by magnitude
    assert table["a"]["b"] == pytest.approx(1.0) and table["a"]["c"] == pytest.approx(1.0)
    signed = np.array([[0.5, -3.0, 0.0], [2.0, -0.5, 1.0]])
    top = top_heads(signed, k=4)
    assert [(row["layer"], row["head"]) for row in top] == [(0, 1), (1, 0), (1, 2), (0, 0)]
    assert top[0] == {"layer": 0, "head": 1, "score": -3.0, "sign": "-"}
    assert top[1]["sign"] == "+"
    every = top_heads(signed)
    assert every[-1] == {"layer": 0, "head": 2, "score": 0.0, "sign": "0"}
    # ties in magnitude keep (layer, head) order, whatever the sign
    assert [(r["layer"], r["head"]) for r in every[3:5]] == [(0, 0), (1, 1)]


def test_shard_store_round_trip_and_identity(tmp_path):
    store = ShardStore(tmp_path, {"x": 1})
    assert not store.done(0)
    scores = torch.arange(6.0).reshape(1, 2, 3)
    scoring = ShardScores(
        scores={"ablation": scores},
        units={"ablation": ("line-1",)},
        warnings={},
        warned={},
        prompt_targets=("all",),
        target_tokens=(3,),
        clean=torch.tensor([1.5], dtype=torch.float64),
    )
    store.save(0, ShardResult(scoring, ()))
    assert store.done(0) and torch.equal(store.load(0).scores["ablation"], scores.double())
    assert config_hash({"x": 1}) != config_hash({"x": 2})
    assert ShardStore(tmp_path, {"x": 2}).root != store.root
    assert not list(store.root.glob(".tmp-*"))
