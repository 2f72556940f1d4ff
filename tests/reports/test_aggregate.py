"""Aggregates: t-intervals, Spearman agreement, top heads — against scipy/numpy directly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from headscope.reports.aggregate import aggregate, rank_agreement, top_heads
from headscope.reports.checkpoints import ShardResult, ShardStore, config_hash


def test_interval_matches_scipy():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(12, 2, 3))
    result = aggregate(scores)
    low, high = stats.t.interval(
        0.95, df=11, loc=scores[:, 1, 2].mean(), scale=stats.sem(scores[:, 1, 2])
    )
    assert result.n == 12
    assert np.isclose(result.low[1, 2], low) and np.isclose(result.high[1, 2], high)
    single = aggregate(scores[:1])
    assert np.isnan(single.low).all() and np.array_equal(single.mean, scores[0])


def test_rank_agreement_and_top_heads():
    a = np.arange(6.0).reshape(2, 3)
    table = rank_agreement({"a": a, "b": a * 10, "c": -a})
    assert table["a"]["b"] == pytest.approx(1.0) and table["a"]["c"] == pytest.approx(-1.0)
    top = top_heads(a, k=2)
    assert top == [{"layer": 1, "head": 2, "score": 5.0}, {"layer": 1, "head": 1, "score": 4.0}]


def test_shard_store_round_trip_and_identity(tmp_path):
    import torch

    store = ShardStore(tmp_path, {"x": 1})
    assert not store.done(0)
    store.save(0, ShardResult({"ablation": torch.arange(6.0).reshape(1, 2, 3)}, ()))
    assert store.done(0) and torch.equal(
        store.load(0).scores["ablation"], torch.arange(6.0).reshape(1, 2, 3).double()
    )
    assert config_hash({"x": 1}) != config_hash({"x": 2})
    assert ShardStore(tmp_path, {"x": 2}).root != store.root
    assert not list(store.root.glob(".tmp-*"))
