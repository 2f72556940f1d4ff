"""The compiled attention kernel's pieces: its exp, its argmax, its argument checks.

Its results against the float32 oracle are tested through `tiled_attention` in
tests/kernels/test_tiled.py (test_fused_*); here, against float64 where every chunk of keys
holds a new maximum."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from headscope.solvers import attention
from headscope.solvers.attention import causal_attention_statistics


@njit(cache=False)
def _exp_all(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = attention._exp_nonpositive(x[i])
    return out


def test_polynomial_exp_is_within_float32_rounding():
    x = np.concatenate([np.linspace(-87.0, 0.0, 200_001), -np.logspace(-9, 1, 1001), [0.0]])
    x = x.astype(np.float32)
    got = _exp_all(x).astype(np.float64)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got / exact - 1)) < 5e-7
    assert _exp_all(np.array([0.0], np.float32))[0] == 1.0  # so max weight = 1/Z exactly
    # Below −87 the clamp keeps a tiny normal float instead of 0.
    assert 0 < _exp_all(np.array([-200.0], np.float32))[0] < 1e-37


def test_argmax_is_the_first_index_of_the_largest_value():
    rng = np.random.default_rng(0)
    for n in (1, 2, 15, 16, 17, 100, 1000):
        row = rng.standard_normal(n).astype(np.float32)
        assert attention._max_and_first_argmax(row) == np.argmax(row)
        negative = -np.abs(row) - 1
        assert attention._max_and_first_argmax(negative) == np.argmax(negative)
    ties = np.array([-3.0, 2.0, -1.0, 2.0, 2.0], np.float32)
    assert attention._max_and_first_argmax(ties) == 1
    assert attention._max_and_first_argmax(np.full(40, -7.5, np.float32)) == 0


def test_workers_do_not_change_results():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 4, 90, 16)).astype(np.float32) for _ in range(3))
    edges = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128])
    one = causal_attention_statistics(q, k, v, scale=0.25, edges=edges, sink_k=1, workers=1)
    many = causal_attention_statistics(q, k, v, scale=0.25, edges=edges, sink_k=1, workers=3)
    for name, value in one.items():
        np.testing.assert_array_equal(value, many[name], err_msg=name)


def test_argument_checks():
    q = np.zeros((1, 4, 8, 2), np.float32)
    edges = np.array([0, 1, 2, 4, 8])
    with pytest.raises(ValueError, match="shapes"):
        causal_attention_statistics(q, q[:, :, :4], q, scale=1.0, edges=edges, sink_k=1)
    with pytest.raises(ValueError, match="kv heads"):
        causal_attention_statistics(q, q[:, :3], q[:, :3], scale=1.0, edges=edges, sink_k=1)
    with pytest.raises(ValueError, match="edges"):
        causal_attention_statistics(q, q, q, scale=1.0, edges=edges[:-1], sink_k=1)
    with pytest.raises(ValueError, match="sink_k"):
        causal_attention_statistics(q, q, q, scale=1.0, edges=edges, sink_k=-1)
    for blocks in ({"rows": 0}, {"keys": 0}):
        with pytest.raises(ValueError, match="keys"):
            causal_attention_statistics(q, q, q, scale=1.0, edges=edges, sink_k=1, **blocks)
    for scale in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            causal_attention_statistics(q, q, q, scale=scale, edges=edges, sink_k=1)


def test_output_is_allocated_contiguous_for_transposed_views():
    """Without `out`, strided inputs (the model's [batch, key, head, d] views) still get a
    C-contiguous output, the layout the compiled GEMM writes (numba refused it before)."""
    rng = np.random.default_rng(2)
    q, k, v = (
        rng.standard_normal((1, 30, 3, 8)).astype(np.float32).transpose(0, 2, 1, 3)
        for _ in range(3)
    )
    edges = np.array([0, 1, 2, 4, 8, 16, 32])
    got = causal_attention_statistics(q, k, v, scale=0.5, edges=edges, sink_k=1)
    given = np.empty(q.shape, np.float32)
    causal_attention_statistics(q, k, v, scale=0.5, edges=edges, sink_k=1, out=given)
    assert got["output"].flags.c_contiguous
    np.testing.assert_array_equal(got["output"], given)


def _float64_statistics(q, k, v, scale, edges, sink_k):
    """Dense float64 causal attention and its statistics, one sequence and head."""
    n = q.shape[0]
    scores = (q.astype(np.float64) @ k.astype(np.float64).T) * scale
    scores[np.triu_indices(n, 1)] = -np.inf
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    distance = np.arange(n)[:, None] - np.arange(n)[None, :]
    logp = np.log(np.where(p > 0, p, 1.0))
    bins = np.digitize(np.maximum(distance, 0), edges) - 1
    return {
        "output": p @ v.astype(np.float64),
        "entropy": -(p * logp).sum(1),
        "max_weight": p.max(1),
        "argmax_key": p.argmax(1),
        "sink_mass": p[:, :sink_k].sum(1),
        "previous_token_mass": np.r_[0.0, p[np.arange(1, n), np.arange(n - 1)]],
        "mean_distance": (p * np.maximum(distance, 0)).sum(1),
        "key_mass": p.sum(0),
        "distance_histogram": np.array([(p * (bins == b)).sum() for b in range(len(edges) - 1)]),
    }


@pytest.mark.parametrize(("rows", "keys"), [(5, 3), (7, 1), (64, 16), (13, 100)])
def test_a_maximum_in_every_later_chunk_rescales_exactly(rows, keys):
    """Scores that grow with the key index put each row's maximum in its last chunk, so
    every chunk rescales the running sums and the output: still the dense float64 answer."""
    n, d = 90, 8
    rng = np.random.default_rng(rows * keys)
    direction = rng.standard_normal(d)
    q = np.tile(direction, (n, 1)).astype(np.float32)
    k = np.linspace(0.0, 3.0, n)[:, None] * direction + 0.01 * rng.standard_normal((n, d))
    k = k.astype(np.float32)
    v = rng.standard_normal((n, d)).astype(np.float32)
    edges = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128])
    got = causal_attention_statistics(
        q[None, None],
        k[None, None],
        v[None, None],
        scale=0.5,
        edges=edges,
        sink_k=2,
        rows=rows,
        keys=keys,
    )
    want = _float64_statistics(q, k, v, 0.5, edges, 2)
    assert (want["argmax_key"] == np.arange(n)).mean() > 0.9  # the last key wins
    for name, value in want.items():
        np.testing.assert_allclose(got[name][0, 0], value, rtol=2e-5, atol=2e-6, err_msg=name)
