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


@pytest.mark.parametrize("workers", [1, 2])
def test_each_right_padded_sequence_is_its_prefix_alone(workers):
    """`lengths`: sequence b's statistics are those of its first lengths[b] positions run
    alone; rows beyond are undescribed (0, argmax −1, no key or histogram mass) and their
    output is left as `out` held it (zeros without `out`)."""
    rng = np.random.default_rng(5)
    n, lengths = 70, np.array([70, 23, 1, 0])
    q, k, v = (rng.standard_normal((4, 4, n, 8)).astype(np.float32) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # grouped-query: 2 query heads per kv head
    edges = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128])
    options = {"scale": 0.4, "edges": edges, "sink_k": 2, "rows": 16, "keys": 9}
    padded = causal_attention_statistics(q, k, v, lengths=lengths, workers=workers, **options)
    for b, length in enumerate(lengths):
        pad = slice(length, None)
        assert not padded["output"][b, :, pad].any()
        assert (padded["argmax_key"][b, :, pad] == -1).all()
        for name in ("entropy", "max_weight", "sink_mass", "key_mass", "mean_distance"):
            assert not padded[name][b, :, pad].any(), name
        if length == 0:
            assert not padded["distance_histogram"][b].any()
            continue
        alone = causal_attention_statistics(
            *(a[b : b + 1, :, :length] for a in (q, k, v)), **options
        )
        for name, value in alone.items():
            got = padded[name][b : b + 1]
            if name != "distance_histogram":  # per position: the prefix
                got = got[:, :, :length]
            np.testing.assert_allclose(got, value, rtol=1e-6, atol=1e-6, err_msg=name)
    marked = np.full(q.shape, 7.0, np.float32)
    causal_attention_statistics(q, k, v, lengths=lengths, out=marked, **options)
    assert (marked[1, :, 23:] == 7.0).all() and (marked[1, :, :23] != 7.0).all()


def test_pairs_are_shared_by_cost():
    """Every (sequence, head) pair goes to exactly one worker; with padded lengths the
    longest go first to the least loaded, so no worker holds all the long ones."""
    costs = np.array([100.0, 100.0, 1.0, 1.0, 1.0, 1.0, 90.0, 90.0]) ** 2
    shares = attention._share(costs, 2)
    assert sorted(np.concatenate(shares).tolist()) == list(range(8))
    loads = [float(costs[share].sum()) for share in shares]
    assert loads[0] == loads[1] == costs.sum() / 2  # (100² + 90² + 1 + 1) each
    assert len(attention._share(costs, 20)) == 8  # no idle worker gets an empty share
    assert [s.tolist() for s in attention._share(costs, 1)] == [list(range(8))]


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
    for lengths in ([9], [4, 4], [-1]):  # longer than n, one per sequence, not negative
        with pytest.raises(ValueError, match="lengths"):
            causal_attention_statistics(
                q, q, q, scale=1.0, edges=edges, sink_k=1, lengths=np.array(lengths)
            )
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
