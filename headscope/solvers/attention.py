"""Fused causal self-attention with per-head statistics, compiled over BLAS.

`causal_attention_statistics` computes what `kernels.tiled.tiled_attention` computes for
plain causal self-attention (no padding but right padding: `lengths`; no window, ALiBi,
softcap or extra mask), reading
each score from memory at most twice where the torch tiles read it many times. For every
(sequence, head) and every block of `rows` queries, over the block's keys in chunks of
`keys` (FlashAttention's tiling, Dao et al. 2022; docs/methods.md §2.8):

1. S_c = Q_B·K_cᵀ (one GEMM into an L2-sized [rows, keys] tile);
2. per row: the chunk's maximum and its first index (one vectorized pass over
   order-preserving integer keys); where it beats the row's running maximum, the row's
   sums and output are rescaled by exp(scale·(old − new)) (online softmax); then
   e = exp(scale·(s − max)) in float32 (a degree-7 polynomial on a range-reduced
   argument, relative error ≤ 3·10⁻⁷, vectorized by LLVM; libm's expf would not be),
   summed per log distance bin together with Σe·(s − max)·scale and Σe·distance;
3. O_B += E_c·V_c (one GEMM on the tile while it is in cache).

Then, with every row's maximum and Z final: entropy = log Z − Σp·x (x = scale·(s − max)),
max weight = 1/Z (e = 1 at the maximum), argmax = first key of the maximum score, mean
distance = Σp·(q − k), histogram bin b = Σ_{q−k ∈ [edges[b], edges[b+1])} p; sink mass,
previous-token mass and key mass += Σ_q p need each row's final normaliser, so every
chunk's e stays in a per-worker store (taken at the maximum of its time, recorded per row
and chunk) and the key mass is one GEMV per chunk over it, read once in order.

Memory beyond the inputs and results: per worker the store, float32 [rows, key rounded up
to a whole chunk], and one head's q, k, v: 4·(rows + 3·d_head)·key bytes (14 MB at 8k
tokens, d_head 64). Workers are threads of one process-wide pool (the kernel releases the
GIL); BLAS is limited to one thread while they run (process-wide, through threadpoolctl:
concurrent numpy BLAS calls in other threads run single-threaded meanwhile). Checked
against the float32 reference oracle (`kernels.reference`) in tests/kernels/test_tiled.py
(test_fused_*) and against float64 where every chunk holds a new maximum
(tests/solvers/test_fused_attention.py).
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

DEFAULT_ROWS = 256
DEFAULT_KEYS = 2048


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
    q,
    k,
    v,
    pairs,
    lengths,
    group,
    scale,
    rows,
    keys,
    edges,
    sink_k,
    out,
    per_query,
    argmax,
    hist,
    mass,
    work,
):
    """One worker: the (sequence, head) pairs listed in `pairs` (see module docstring).

    q `[batch, head, n, d]`, k, v `[batch, kv_head, n, d]` float32 with any strides (each
    head is copied into contiguous scratch, O(n·d), so that the model's transposed views
    need no full copy); sequence b is its first `lengths[b]` positions (right padding: the
    rows and keys beyond are left untouched); out `[batch, head, n, d]` C-contiguous;
    per_query `[5, batch, head, n]` = entropy, max weight, sink, previous, mean distance;
    work: this worker's scratch, rows·chunks·keys + 3·n·d floats.
    """
    size, d = q.shape[2], q.shape[3]
    n_bins = edges.shape[0] - 1
    n_chunks = (size + keys - 1) // keys
    store = work[: rows * n_chunks * keys]
    heads = work[rows * n_chunks * keys : rows * n_chunks * keys + 3 * size * d]
    q_all = heads[: size * d].reshape(size, d)
    k_all = heads[size * d : 2 * size * d].reshape(size, d)
    v_all = heads[2 * size * d :].reshape(size, d)
    best = np.empty(rows, np.float32)  # running maximum score per row
    first = np.empty(rows, np.int64)  # its first key
    z = np.empty(rows, np.float32)  # Σe, e = exp(scale·(s − best))
    weighted = np.empty(rows, np.float32)  # Σe·scale·(s − best)
    distance = np.empty(rows, np.float32)  # Σe·(query − key)
    bins = np.empty((rows, n_bins), np.float32)
    used = np.empty((rows, n_chunks), np.float32)  # the maximum each chunk's e was taken at
    alpha = np.empty(rows, np.float32)  # this chunk's rescaling of the row's sums
    partial = np.empty((rows, d), np.float32)
    inverse = np.empty(rows, np.float32)
    weights = np.empty(rows, np.float32)
    accumulated = np.empty(keys, np.float32)
    for index in range(pairs.shape[0]):
        b = pairs[index] // q.shape[1]
        h = pairs[index] % q.shape[1]
        kv = h // group
        n = lengths[b]
        qh, kh, vh = q_all[:n], k_all[:n], v_all[:n]
        qh[:] = q[b, h, :n]
        kh[:] = k[b, kv, :n]
        vh[:] = v[b, kv, :n]
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            height = r1 - r0
            target = out[b, h, r0:r1]
            for c0 in range(0, r1, keys):
                c1 = min(r1, c0 + keys)
                chunk = c0 // keys
                scores = store[chunk * rows * keys : chunk * rows * keys + height * (c1 - c0)]
                scores = scores.reshape(height, c1 - c0)
                np.dot(qh[r0:r1], kh[c0:c1].T, scores)
                for i in range(height):
                    p = r0 + i
                    width = min(c1, p + 1) - c0  # keys of this chunk the query sees
                    row = scores[i]
                    alpha[i] = 1.0
                    if width <= 0:
                        row[:] = 0.0
                        continue
                    j = _max_and_first_argmax(row[:width])
                    top = row[j]
                    if c0 == 0:
                        best[i] = top
                        first[i] = j
                        z[i] = 0.0
                        weighted[i] = 0.0
                        distance[i] = 0.0
                        bins[i, :] = 0.0
                    elif top > best[i]:
                        shift = (best[i] - top) * scale
                        factor = _exp_nonpositive(shift)
                        weighted[i] = factor * (weighted[i] + shift * z[i])
                        z[i] *= factor
                        distance[i] *= factor
                        for bin_index in range(n_bins):
                            bins[i, bin_index] *= factor
                        alpha[i] = factor
                        best[i] = top
                        first[i] = c0 + j
                    used[i, chunk] = best[i]
                    # Only the bins this chunk's distances reach: p − c0 − width + 1 .. p − c0.
                    bin_index = np.searchsorted(edges, p - c0 - width + 1, side="right") - 1
                    while bin_index < n_bins and edges[bin_index] <= p - c0:
                        lo = max(p - edges[bin_index + 1] + 1, c0)
                        hi = min(p - edges[bin_index] + 1, c0 + width)
                        if hi > lo:
                            s, w, t = _exp_segment(
                                row[lo - c0 : hi - c0], best[i], scale, np.float32(p - lo)
                            )
                            bins[i, bin_index] += s
                            z[i] += s
                            weighted[i] += w
                            distance[i] += t
                        bin_index += 1
                    row[width:] = 0.0  # keys right of the query
                if c0 == 0:
                    np.dot(scores, vh[c0:c1], target)
                else:
                    np.dot(scores, vh[c0:c1], partial[:height])
                    for i in range(height):
                        for col in range(d):
                            target[i, col] = target[i, col] * alpha[i] + partial[i, col]
            # The row sums are final: normalise; then the key mass, chunk by chunk as one
            # GEMV over that chunk's kept e (read in order), weighted per row by its
            # normaliser and the maximum the chunk's e were taken at.
            for i in range(height):
                p = r0 + i
                inv = np.float32(1.0) / z[i]
                inverse[i] = inv
                for col in range(d):
                    target[i, col] *= inv
                for bin_index in range(n_bins):
                    hist[b, h, bin_index] += bins[i, bin_index] * inv
                sink = np.float32(0.0)
                previous = np.float32(0.0)
                for key in range(min(sink_k, p + 1)):
                    sink += _kept(store, used, best, scale, rows, keys, r1, i, key) * inv
                if p > 0:
                    previous = _kept(store, used, best, scale, rows, keys, r1, i, p - 1) * inv
                per_query[0, b, h, p] = np.float32(math.log(z[i])) - weighted[i] * inv
                per_query[1, b, h, p] = inv
                per_query[2, b, h, p] = sink
                per_query[3, b, h, p] = previous
                per_query[4, b, h, p] = distance[i] * inv
                argmax[b, h, p] = first[i]
            for c0 in range(0, r1, keys):
                chunk = c0 // keys
                width = min(r1, c0 + keys) - c0
                region = store[chunk * rows * keys : chunk * rows * keys + height * width]
                for i in range(height):
                    weights[i] = 0.0
                    if r0 + i >= c0:
                        shift = (used[i, chunk] - best[i]) * scale
                        weights[i] = _exp_nonpositive(shift) * inverse[i]
                np.dot(weights[:height], region.reshape(height, width), accumulated[:width])
                _add_scaled(mass[b, h, c0 : c0 + width], accumulated[:width], np.float32(1.0))


@njit(inline="always", nogil=True, cache=True)
def _kept(store, used, best, scale, rows, keys, r1, i, key):
    """e of row i at `key` as kept in `store`, rescaled to the row's final maximum."""
    chunk = key // keys
    c0 = chunk * keys
    width = min(r1, c0 + keys) - c0
    value = store[chunk * rows * keys + i * width + key - c0]
    return value * _exp_nonpositive((used[i, chunk] - best[i]) * scale)


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


def _share(costs: np.ndarray, workers: int) -> list[np.ndarray]:
    """The (sequence, head) pairs split among at most `workers` workers, longest first to
    the least loaded (a pair costs ∝ length²: padded batches stay balanced)."""
    count = max(1, min(workers, costs.shape[0]))
    loads = np.zeros(count)
    shares: list[list[int]] = [[] for _ in range(count)]
    for pair in np.argsort(-costs, kind="stable"):
        worker = int(np.argmin(loads))
        shares[worker].append(int(pair))
        loads[worker] += costs[pair]
    return [np.array(sorted(share), dtype=np.int64) for share in shares if share]


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
    keys: int = DEFAULT_KEYS,
    out: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Causal self-attention output and statistics (see the module docstring).

    q `[batch, head, n, d]`, k and v `[batch, kv_head, n, d]` (any strides; head a multiple of
    kv_head: grouped-query attention reads kv head h // (head / kv_head)); `edges` the
    int64 distance bin edges (0, 1, 2, 4, …, last ≥ n). Returns float32 arrays `output`
    `[batch, head, n, d]`, `entropy`, `max_weight`, `sink_mass`, `previous_token_mass`,
    `mean_distance` `[batch, head, n]`, `argmax_key` int64 `[batch, head, n]`,
    `distance_histogram` `[batch, head, bin]`, `key_mass` `[batch, head, n]`. `out`: a
    C-contiguous float32 array of q's shape to write the output into (returned as `output`).
    `lengths` `[batch]`: right-padded sequences, sequence b being its first lengths[b]
    positions (default: all n). Its statistics are those of that prefix alone; rows beyond
    it are not described (statistics 0, argmax −1, no key or histogram mass) and their
    output is left as `out` holds it (zeros when `out` is None).
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
    if sink_k < 0 or rows < 1 or keys < 1:
        raise ValueError(f"sink_k must be >= 0, rows and keys >= 1, got {sink_k}, {rows}, {keys}")
    if not scale > 0:  # the exp takes scale·(s − max) ≤ 0
        raise ValueError(f"scale must be > 0, got {scale}")
    if lengths is None:
        lengths = np.full(batch, n, np.int64)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if lengths.shape != (batch,) or lengths.min(initial=0) < 0 or lengths.max(initial=0) > n:
        raise ValueError(f"lengths must be {batch} values in [0, {n}], got {lengths}")
    padded = bool((lengths < n).any())
    if out is None:  # C-contiguous, whatever q's strides
        out = np.zeros(q.shape, np.float32) if padded else np.empty(q.shape, np.float32)
    elif out.shape != q.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {q.shape}")
    per_query = np.zeros((5, batch, heads, n), np.float32)
    argmax = np.full((batch, heads, n), -1, np.int64)
    hist = np.zeros((batch, heads, edges.shape[0] - 1), np.float32)
    mass = np.zeros((batch, heads, n), np.float32)
    group = heads // k.shape[1]
    rows, keys = max(1, min(rows, n)), max(1, min(keys, n))  # scratch no larger than needed
    args = (group, np.float32(scale), rows, keys, edges, sink_k, out, per_query, argmax, hist, mass)
    chunks = _share(lengths.repeat(heads).astype(np.float64) ** 2, workers)
    work = np.empty((len(chunks), rows * -(-n // keys) * keys + 3 * d * n), np.float32)
    with _single_threaded_blas():
        if len(chunks) == 1:
            _attend(q, k, v, chunks[0], lengths, *args, work[0])
        else:
            pool = _workers()
            pairs = zip(chunks, work, strict=True)
            jobs = [pool.submit(_attend, q, k, v, c, lengths, *args, w) for c, w in pairs]
            for job in jobs:
                job.result()
    names = ("entropy", "max_weight", "sink_mass", "previous_token_mass", "mean_distance")
    result = {name: per_query[i] for i, name in enumerate(names)}
    result.update(output=out, argmax_key=argmax, distance_histogram=hist, key_mass=mass)
    return result
