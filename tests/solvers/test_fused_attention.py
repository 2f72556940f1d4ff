"""The compiled attention kernel's pieces: its exp, its argmax, its argument checks.

Its results against the float32 oracle are tested through `tiled_attention` in
tests/kernels/test_tiled.py (test_fused_*)."""

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
