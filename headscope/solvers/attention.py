"""Fused causal self-attention with per-head statistics, compiled over BLAS.

`causal_attention_statistics` computes what `kernels.tiled.tiled_attention` computes for
plain causal self-attention (no padding, window, ALiBi, softcap or extra mask), in one
pass over the scores. For every (sequence, head) and every block of `rows` queries:

1. S = Q_B·Kᵀ over the keys the block sees (one GEMM into a [rows, key] buffer; the
   block's rows are whole, so the softmax is exact, with no online rescaling);
2. per row, while the row is in cache: the maximum and its first index (one vectorized
   pass over order-preserving integer keys), then e = exp(scale·(s − max)) in float32 (a
   degree-7 polynomial on a range-reduced argument, relative error ≤ 3·10⁻⁷, vectorized by
   LLVM; libm's expf would not be), summed per log distance bin together with
   Σe·(s − max)·scale and Σe·distance; then key mass += e/Z;
3. O_B = diag(1/Z)·E·V (one GEMM).

Entropy = log Z − Σp·x (x = scale·(s − max)), max weight = 1/Z (e = 1 at the maximum),
argmax = first key of the maximum score, mean distance = Σp·(q − k), sink mass = Σ_{k<sink}p,
previous-token mass = p[q − 1], histogram bin b += Σ_{q−k ∈ [edges[b], edges[b+1])} p.

Memory beyond the inputs and results: per worker one float32 [rows, key] block and one
head's q, k, v (4·(rows + 3·d_head)·key bytes: 10.5 MB at 8k tokens, d_head 64). Workers
are threads of one process-wide pool (the kernel releases the GIL); BLAS is limited to one
thread while they run (process-wide, through threadpoolctl: concurrent numpy BLAS calls in
other threads run single-threaded meanwhile). Checked against the float32 reference oracle
(`kernels.reference`) in tests/kernels/test_tiled.py (test_fused_*).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

DEFAULT_ROWS = 128


@intrinsic
def _bits_to_float(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _float_to_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@njit(inline="always", fastmath=True, cache=True)
def _exp_nonpositive(x):
    """exp(x) for float32 x ≤ 0: 2^k·P(f), x = k·ln2 + f, |f| ≤ ln2/2, Taylor to degree 7
    (relative error ≤ 3·10⁻⁷). Clamped at −87 so that 2^k stays a normal float."""
    x = max(x, np.float32(-87.0))
    k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
    f = x - k * np.float32(0.693145751953125) - k * np.float32(1.428606765330187e-06)
    p = np.float32(1.0 / 5040.0)
    p = p * f + np.float32(1.0 / 720.0)
    p = p * f + np.float32(1.0 / 120.0)
    p = p * f + np.float32(1.0 / 24.0)
    p = p * f + np.float32(1.0 / 6.0)
    p = p * f + np.float32(0.5)
    p = p * f + np.float32(1.0)
    p = p * f + np.float32(1.0)
    return p * _bits_to_float((np.int32(k) + np.int32(127)) << np.int32(23))


@njit(fastmath=True, nogil=True, cache=True)
def _max_and_first_argmax(row):
    """Largest value and its first index, as one vectorizable integer max: each float maps
    to an order-preserving int32, packed above the complement of its index."""
    best = np.iinfo(np.int64).min
    for j in range(row.shape[0]):
        bits = _float_to_bits(row[j])
        key = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
        best = max(best, (np.int64(key) << 32) | np.int64(0x7FFFFFFF - j))
    return 0x7FFFFFFF - (best & 0xFFFFFFFF)


@njit(fastmath=True, nogil=True, cache=True)
def _exp_segment(segment, best, scale, distance0):
    """In place e = exp(scale·(s − best)) over a segment whose first key sits `distance0`
    before the query; returns Σe, Σe·x and Σe·distance. (Loops start at 0: numba elides
    the negative-index check only then, and the check blocks vectorization.)"""
    total = np.float32(0.0)
    weighted = np.float32(0.0)
    distance = np.float32(0.0)
    for j in range(segment.shape[0]):
        x = (segment[j] - best) * scale
        e = _exp_nonpositive(x)
        segment[j] = e
        total += e
        weighted += e * x
        distance += e * (distance0 - np.float32(j))
    return total, weighted, distance


@njit(fastmath=True, nogil=True, cache=True)
def _add_scaled(target, source, factor):
    """target += factor·source (loops from 0: vectorized)."""
    for j in range(target.shape[0]):
        target[j] += source[j] * factor


@njit(nogil=True, cache=True)
def _attend(
    q, k, v, pairs, group, scale, rows, edges, sink_k, out, per_query, argmax, hist, mass, work
):
    """One worker: the (sequence, head) pairs listed in `pairs` (see module docstring).

    q `[batch, head, n, d]`, k, v `[batch, kv_head, n, d]` float32 with any strides (each
    head is copied into contiguous scratch, O(n·d), so that the model's transposed views
    need no full copy); out `[batch, head, n, d]` C-contiguous; per_query `[5, batch, head,
    n]` = entropy, max weight, sink, previous, mean distance; work: this worker's scratch,
    (rows + 3·d)·n floats.
    """
    n, d = q.shape[2], q.shape[3]
    n_bins = edges.shape[0] - 1
    buffer = work[: rows * n]
    heads = work[rows * n : (rows + 3 * d) * n]
    qh = heads[: n * d].reshape(n, d)
    kh = heads[n * d : 2 * n * d].reshape(n, d)
    vh = heads[2 * n * d :].reshape(n, d)
    inverse = np.empty(rows, np.float32)
    row_bins = np.empty(n_bins, np.float32)
    for index in range(pairs.shape[0]):
        b = pairs[index] // q.shape[1]
        h = pairs[index] % q.shape[1]
        kv = h // group
        qh[:] = q[b, h]
        kh[:] = k[b, kv]
        vh[:] = v[b, kv]
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            block = buffer[: (r1 - r0) * r1].reshape(r1 - r0, r1)
            np.dot(qh[r0:r1], kh[:r1].T, block)
            for i in range(r1 - r0):
                p = r0 + i
                row = block[i]
                first = _max_and_first_argmax(row[: p + 1])
                best = row[first]
                z = np.float32(0.0)
                weighted = np.float32(0.0)
                distance = np.float32(0.0)
                for bin_index in range(n_bins):
                    lo = max(p - edges[bin_index + 1] + 1, 0)
                    hi = p - edges[bin_index] + 1
                    row_bins[bin_index] = 0.0
                    if hi > lo:
                        s, w, t = _exp_segment(row[lo:hi], best, scale, np.float32(p - lo))
                        row_bins[bin_index] = s
                        z += s
                        weighted += w
                        distance += t
                inv = np.float32(1.0) / z
                inverse[i] = inv
                for bin_index in range(n_bins):
                    hist[b, h, bin_index] += row_bins[bin_index] * inv
                sink = np.float32(0.0)
                for j in range(min(sink_k, p + 1)):
                    sink += row[j]
                per_query[0, b, h, p] = np.float32(math.log(z)) - weighted * inv
                per_query[1, b, h, p] = inv
                per_query[2, b, h, p] = sink * inv
                per_query[3, b, h, p] = row[p - 1] * inv if p > 0 else np.float32(0.0)
                per_query[4, b, h, p] = distance * inv
                argmax[b, h, p] = first
                # Key mass while the row is still in cache (a GEMV after the block would
                # read the whole block from memory again once it outgrows the cache).
                _add_scaled(mass[b, h, : p + 1], row[: p + 1], inv)
                row[p + 1 :] = 0.0  # keys right of the query in the diagonal block
            target = out[b, h, r0:r1]
            np.dot(block, vh[:r1], target)
            for i in range(r1 - r0):
                target[i] *= inverse[i]


_BLAS_LOCK = threading.Lock()
_blas_controller = None
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _workers() -> ThreadPoolExecutor:
    """One process-wide pool, reused (OpenBLAS keeps a work buffer per calling thread;
    threads are not made per call)."""
    global _pool
    with _BLAS_LOCK:
        if _pool is None or _pool[0] != os.getpid():  # a forked child has no pool threads
            pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="headscope-attn")
            _pool = (os.getpid(), pool)
    return _pool[1]


def _single_threaded_blas():
    """A context in which the BLAS that numba calls runs on the calling thread only."""
    global _blas_controller
    with _BLAS_LOCK:
        if _blas_controller is None:
            import scipy.linalg.cython_blas  # noqa: F401 - numba's BLAS: loaded before the scan
            from threadpoolctl import ThreadpoolController

            _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def causal_attention_statistics(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    scale: float,
    edges: np.ndarray,
    sink_k: int,
    workers: int = 1,
    rows: int = DEFAULT_ROWS,
    out: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Causal self-attention output and statistics (see the module docstring).

    q `[batch, head, n, d]`, k and v `[batch, kv_head, n, d]` (any strides; head a multiple of
    kv_head: grouped-query attention reads kv head h // (head / kv_head)); `edges` the
    int64 distance bin edges (0, 1, 2, 4, …, last ≥ n). Returns float32 arrays `output`
    `[batch, head, n, d]`, `entropy`, `max_weight`, `sink_mass`, `previous_token_mass`,
    `mean_distance` `[batch, head, n]`, `argmax_key` int64 `[batch, head, n]`,
    `distance_histogram` `[batch, head, bin]`, `key_mass` `[batch, head, n]`. `out`: a
    C-contiguous float32 array of q's shape to write the output into (returned as `output`).
    """
    q, k, v = (np.asarray(a, dtype=np.float32) for a in (q, k, v))
    edges = np.ascontiguousarray(edges, dtype=np.int64)
    if q.ndim != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"shapes q {q.shape}, k {k.shape}, v {v.shape} do not match")
    batch, heads, n, d = q.shape
    if k.shape[1] < 1 or heads % k.shape[1]:
        raise ValueError(f"{heads} query heads cannot share {k.shape[1]} kv heads")
    if edges.ndim != 1 or edges.shape[0] < 2 or edges[0] != 0 or edges[-1] < n:
        raise ValueError(f"distance bin edges must run from 0 to at least {n}, got {edges}")
    if sink_k < 0 or rows < 1:
        raise ValueError(f"sink_k must be >= 0 and rows >= 1, got {sink_k}, {rows}")
    if not scale > 0:  # the exp takes scale·(s − max) ≤ 0
        raise ValueError(f"scale must be > 0, got {scale}")
    if out is None:
        out = np.empty(q.shape, np.float32)  # C-contiguous, whatever q's strides
    elif out.shape != q.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {q.shape}")
    per_query = np.zeros((5, batch, heads, n), np.float32)
    argmax = np.zeros((batch, heads, n), np.int64)
    hist = np.zeros((batch, heads, edges.shape[0] - 1), np.float32)
    mass = np.zeros((batch, heads, n), np.float32)
    group = heads // k.shape[1]
    args = (group, np.float32(scale), rows, edges, sink_k, out, per_query, argmax, hist, mass)
    chunks = np.array_split(np.arange(batch * heads), max(1, min(workers, batch * heads)))
    work = np.empty((len(chunks), (rows + 3 * d) * n), np.float32)
    with _single_threaded_blas():
        if len(chunks) == 1:
            _attend(q, k, v, chunks[0], *args, work[0])
        else:
            pool = _workers()
            pairs = zip(chunks, work, strict=True)
            jobs = [pool.submit(_attend, q, k, v, c, *args, w) for c, w in pairs]
            for job in jobs:
                job.result()
    names = ("entropy", "max_weight", "sink_mass", "previous_token_mass", "mean_distance")
    result = {name: per_query[i] for i, name in enumerate(names)}
    result.update(output=out, argmax_key=argmax, distance_histogram=hist, key_mass=mass)
    return result
