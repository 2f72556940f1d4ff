"""Query-tiled attention that computes the output and per-head statistics in one pass.

Plain causal self-attention statistics on the CPU (no padding or right padding only; no
window, ALiBi, softcap, extra mask, top-k or kept maps: the common case of a capture) go
to the compiled one-pass kernel of `solvers.attention` instead (`fused=`): the same
results to float32 rounding, at the speed of torch's SDPA forward (docs/benchmarks.md).
Everything else runs the torch tiles described below.

Eager attention materializes every head's N × N pattern. `tiled_attention`
walks the queries in tiles of `query_tile` rows; for each tile it computes the
scores against the keys the tile can see (causal tiles skip the keys to their
right, sliding windows the keys to their left), softmaxes them in float32, uses
the probabilities for the output, folds them into the statistics below, and
drops them. At any moment it holds one tile of scores for every head:
O(batch · head · query_tile · key) floats (a few such buffers), never
O(head · query · key), except for the full maps of the heads named in
`keep_maps_for_heads`.

Statistics (float32 whatever the input dtype), for every (batch, head, query):
entropy (nats), max weight, argmax key, sink mass (keys < `sink_k`), previous-
token mass (key = query − 1), mean attended distance Σ_k A[q,k]·|q − k| (for
causal attention k ≤ q, so this is Σ_k A[q,k]·(q − k)); for every (batch, head):
a histogram of attended distance in log bins [0,1), [1,2), [2,4), [4,8), …
(attention mass summed over queries), the attention mass each key receives
summed over queries (`key_mass`) and how many queries can see each key
(`key_visibility`), so that the sink score of Xiao et al. 2023 is
α_k = key_mass / key_visibility. Optional: the `top_k` keys and weights of each
query (a sparse map).

Positions: the queries are the last `query` positions of the key sequence
(query i sits at position i + key − query, the KV-cache convention; i for
self-attention). RoPE and other rotations are applied to q and k by the model
before this kernel, so there is nothing to do for them here. Scores are
q·kᵀ·scale, softcapped (`softcap`, Gemma 2) before ALiBi (`alibi_slopes`) and
any explicit additive mask are added, as in the reference oracle.

Padding: `key_padding_mask` marks real tokens. When query and key lengths match
(self-attention), padded positions are also excluded as queries: their
statistics are 0 (argmax −1), their top-k and map rows are empty, and they add
nothing to the histogram, key mass or key visibility. Their attention output is
still computed as the mask says, so right-padded causal batches give the same
output as eager attention. A query that can see no key gets a zero output and
zero statistics (the reference oracle's convention).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope.errors import InputError
from headscope.kernels.reference import visible_keys
from headscope.solvers.attention import DEFAULT_KEYS, DEFAULT_ROWS, causal_attention_statistics

# 128 query rows per tile was fastest or within 3% of it at N = 2048 and 8192 with
# 12 heads (single-thread CPU time on Zen 5; 16 and 512 rows were 10–40% slower):
# large enough to amortize the per-tile op overhead, small enough that the tile's
# scores stay mostly in cache between the softmax, the output and the statistics
# passes. MAX_TILE_SCORES caps a buffer at 128 MiB for very long or wide inputs.
DEFAULT_QUERY_TILE = 128
MAX_TILE_SCORES = 1 << 25
MIN_QUERY_TILE = 16
# argmax in blocks: torch.max(dim) with indices is ~3x slower than amax on CPU.
_ARGMAX_BLOCK = 64


@dataclass(frozen=True, eq=False)
class TiledAttentionResult:
    """What one call of `tiled_attention` returns.

    `output` `[batch, head, query, d_head]` is in the input dtype. Per query
    `[batch, head, query]`: `entropy`, `max_weight`, `argmax_key` (int64, −1 for
    rows that attend to nothing or are padding), `sink_mass`,
    `previous_token_mass`, `mean_distance`. Per head: `distance_histogram`
    `[batch, head, bin]` (bin j = distances in [edges[j], edges[j+1])),
    `key_mass` `[batch, head, key]`, `key_visibility` `[batch, head, key]`
    (float counts; the same for every head unless an explicit per-head mask was
    given). `query_mask` `[batch, query]`: True for the real queries that the
    statistics describe. Statistics fields are None when `stats=False`.
    `topk_keys` / `topk_weights` `[batch, head, query, k]` (keys −1 / weights 0
    where a query sees fewer than k keys), `maps` `[batch, len(map_heads), query,
    key]` float32 for the heads in `map_heads`.
    """

    output: Float[Tensor, "batch head query d_head"]
    query_mask: Bool[Tensor, "batch query"]
    distance_bin_edges: tuple[int, ...]
    sink_keys: int
    causal: bool
    entropy: Float[Tensor, "batch head query"] | None = None
    max_weight: Float[Tensor, "batch head query"] | None = None
    argmax_key: Int[Tensor, "batch head query"] | None = None
    sink_mass: Float[Tensor, "batch head query"] | None = None
    previous_token_mass: Float[Tensor, "batch head query"] | None = None
    mean_distance: Float[Tensor, "batch head query"] | None = None
    distance_histogram: Float[Tensor, "batch head bin"] | None = None
    key_mass: Float[Tensor, "batch head key"] | None = None
    key_visibility: Float[Tensor, "batch head key"] | None = None
    topk_keys: Int[Tensor, "batch head query k"] | None = None
    topk_weights: Float[Tensor, "batch head query k"] | None = None
    maps: Float[Tensor, "batch selected query key"] | None = None
    map_heads: tuple[int, ...] = ()


def distance_bin_edges(n_key: int, n_bins: int | None = None) -> tuple[int, ...]:
    """Log-spaced distance bin edges (0, 1, 2, 4, 8, …): bin j holds distances in
    [edges[j], edges[j+1]). By default just enough bins to cover distances
    0..n_key−1; with fewer `n_bins` the last bin absorbs every larger distance
    (its upper edge is then n_key)."""
    needed = 1 + math.ceil(math.log2(max(n_key, 1)))
    bins = needed if n_bins is None else n_bins
    if bins < 1:
        raise InputError(f"distance_bins must be >= 1, got {n_bins}")
    edges = [0] + [2**j for j in range(bins)]
    if bins < needed:
        edges[-1] = max(n_key, edges[-2] + 1)
    return tuple(edges)


def default_query_tile(batch: int, heads: int, n_key: int) -> int:
    """128 rows, halved until a tile of scores (batch·head·rows·key) fits
    MAX_TILE_SCORES, but never below 16."""
    tile = DEFAULT_QUERY_TILE
    while tile > MIN_QUERY_TILE and batch * heads * tile * n_key > MAX_TILE_SCORES:
        tile //= 2
    return tile


@dataclass(frozen=True)
class _Structure:
    """Which keys each query sees, from the structured arguments (no dense mask).

    Query i sits at absolute position i + offset; it sees key k when k ≤ position
    (causal) and position − k < window (|position − k| < window bidirectional).
    """

    causal: bool
    window: int | None
    offset: int
    n_query: int
    n_key: int

    def key_range(self, t0: int, t1: int) -> tuple[int, int]:
        """[lo, hi) of the keys that any query of rows t0..t1−1 can see."""
        first, last = t0 + self.offset, t1 - 1 + self.offset
        lo = 0 if self.window is None else max(0, first - self.window + 1)
        if self.causal:
            hi = last + 1
        elif self.window is None:
            hi = self.n_key
        else:
            hi = last + self.window
        return lo, min(max(hi, lo), self.n_key)

    def invisible(self, distance: Tensor) -> Tensor | None:
        """`[tile, key]` True where the structure hides a key (None: nothing hidden).
        `distance` is the signed position − key of the tile."""
        hidden = None
        if self.causal:
            hidden = distance < 0
        if self.window is not None:
            far = distance >= self.window if self.causal else distance.abs() >= self.window
            hidden = far if hidden is None else hidden | far
        return hidden

    def query_bounds(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Inclusive key bounds [first, last] of every query."""
        position = torch.arange(self.n_query, device=device) + self.offset
        everything = torch.full_like(position, self.n_key - 1)
        first = position - self.window + 1 if self.window is not None else position * 0
        if self.causal:
            last = position
        else:
            last = position + self.window - 1 if self.window is not None else everything
        return first.clamp(0, self.n_key), last.clamp(-1, self.n_key - 1)

    def key_bounds(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Inclusive query-index bounds [first, last] of the queries that see each key."""
        index = torch.arange(self.n_key, device=device) - self.offset
        everything = torch.full_like(index, self.n_query - 1)
        if self.causal:
            first = index
        else:
            first = index - self.window + 1 if self.window is not None else index * 0
        last = index + self.window - 1 if self.window is not None else everything
        return first.clamp(0, self.n_query), last.clamp(-1, self.n_query - 1)


def _count_in(mask: Bool[Tensor, "batch n"], first: Tensor, last: Tensor) -> Tensor:
    """Per row, how many True entries lie in [first, last] (inclusive index bounds)."""
    prefix = torch.nn.functional.pad(mask.to(torch.int64).cumsum(1), (1, 0))
    rows = prefix.shape[0]
    hi = prefix.gather(1, (last + 1).clamp(min=0)[None].expand(rows, -1))
    lo = prefix.gather(1, first[None].expand(rows, -1))
    return (hi - lo).clamp(min=0)


def _flag_prefix(flags: Bool[Tensor, "batch n"]) -> list[int]:
    """Host-side exclusive prefix count of the positions flagged in any row."""
    return [0, *flags.any(dim=0).cumsum(0).tolist()]


def _row_max(p: Tensor) -> tuple[Tensor, Tensor]:
    """(max, first argmax) over the last dim; blockwise because amax is vectorized
    on CPU and torch.max(dim) with indices is ~3x slower."""
    n = p.shape[-1]
    if n <= 2 * _ARGMAX_BLOCK:
        return p.max(dim=-1)
    n_blocks = n // _ARGMAX_BLOCK
    blocks = p[..., : n_blocks * _ARGMAX_BLOCK].unflatten(-1, (n_blocks, _ARGMAX_BLOCK))
    block_max = blocks.amax(dim=-1)
    if n_blocks * _ARGMAX_BLOCK < n:
        tail = p[..., n_blocks * _ARGMAX_BLOCK :].amax(dim=-1, keepdim=True)
        block_max = torch.cat([block_max, tail], dim=-1)
    best, block = block_max.max(dim=-1)
    index = block[..., None] * _ARGMAX_BLOCK + torch.arange(_ARGMAX_BLOCK, device=p.device)
    values = torch.gather(p, -1, index.clamp(max=n - 1)).masked_fill(index >= n, -1.0)
    return best, block * _ARGMAX_BLOCK + values.argmax(dim=-1)


def _mass_up_to(cumulative: Tensor, local: Int[Tensor, "tile points"]) -> Tensor:
    """Attention mass on the tile's keys 0..local (per row and point) from the row
    cumsum `[batch, head, tile, key]`; 0 where local < 0, the row total past the end."""
    batch, heads, rows, width = cumulative.shape
    index = local.clamp(0, width - 1).expand(batch, heads, rows, -1)
    return torch.gather(cumulative, -1, index).masked_fill(local < 0, 0.0)


def _check(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InputError("q, k, v must be [batch, head, position, d_head]")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise InputError(f"incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise InputError(f"{q.shape[1]} query heads do not divide into {k.shape[1]} kv heads")
    if q.shape[2] > k.shape[2]:
        raise InputError("more queries than keys: queries are the last positions of the keys")
    if attn_mask is not None and (
        attn_mask.dim() != 4 or tuple(attn_mask.shape[-2:]) != (q.shape[2], k.shape[2])
    ):
        raise InputError("attn_mask must be [batch or 1, head or 1, query, key]")


class _Workspace:
    """Tile buffers allocated once per call and reused by every tile.

    Fresh multi-megabyte temporaries per tile cost a page fault per 4 KiB on CPU
    (measured: about a quarter of the kernel's time at N = 2048); two buffers of
    batch·head·tile·key floats (three for tiles that need a cumsum) avoid that.
    """

    def __init__(self, rows: int, tile: int, n_key: int, device: torch.device):
        self._size = rows * tile * n_key
        self._scores = torch.empty(self._size, dtype=torch.float32, device=device)
        self._probs = torch.empty(self._size, dtype=torch.float32, device=device)
        self._scratch: Tensor | None = None
        self._triangles: dict[int, Tensor] = {}
        self._ones: dict[int, Tensor] = {}
        self.device = device

    @staticmethod
    def _view(buffer: Tensor, *shape: int) -> Tensor:
        return buffer[: math.prod(shape)].view(shape)

    def scores(self, *shape: int) -> Tensor:
        return self._view(self._scores, *shape)

    def probs(self, *shape: int) -> Tensor:
        return self._view(self._probs, *shape)

    def scratch(self, *shape: int) -> Tensor:
        if self._scratch is None:
            self._scratch = torch.empty(self._size, dtype=torch.float32, device=self.device)
        return self._view(self._scratch, *shape)

    def ones(self, rows: int) -> Tensor:
        """`[1, rows]` of ones (a row vector for column sums by GEMM)."""
        if rows not in self._ones:
            self._ones[rows] = torch.ones(1, rows, device=self.device)
        return self._ones[rows]

    def upper_triangle(self, rows: int) -> Tensor:
        """`[rows, rows − 1]`, True at column ≥ row: the keys right of each query."""
        if rows not in self._triangles:
            ones = torch.ones(rows, rows - 1, dtype=torch.bool, device=self.device)
            self._triangles[rows] = torch.triu(ones)
        return self._triangles[rows]


class _Statistics:
    """Mutable float32 accumulators for one call (internal; frozen into the result)."""

    PER_QUERY = ("entropy", "max_weight", "sink_mass", "previous_token_mass", "mean_distance")

    def __init__(
        self, batch: int, heads: int, n_query: int, n_key: int, edges: tuple[int, ...], device
    ):
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=torch.float32, device=device)

        self.values = {name: zeros(batch, heads, n_query) for name in self.PER_QUERY}
        self.values["argmax_key"] = torch.full(
            (batch, heads, n_query), -1, dtype=torch.int64, device=device
        )
        self.values["distance_histogram"] = zeros(batch, heads, len(edges) - 1)
        self.values["key_mass"] = zeros(batch, heads, n_key)
        self.edges = torch.tensor(edges, device=device)
        distances = torch.arange(n_key, device=device)
        self.bin_of_distance = torch.bucketize(distances, self.edges, right=True) - 1

    def fold(
        self,
        probs: Float[Tensor, "batch head tile key"],
        scores: Float[Tensor, "batch head tile key"],
        distance: Float[Tensor, "tile key"],
        position: Int[Tensor, " tile"],
        rows: slice,
        lo: int,
        structure: _Structure,
        sink_k: int,
        workspace: _Workspace,
    ) -> None:
        """Add one tile (rows of zero probability contribute nothing)."""
        v = self.values
        best, best_index = _row_max(probs)
        # p_max = exp(s_max − lse), so entropy = lse − Σ p·s needs no log over the tile.
        best_score = torch.gather(scores, -1, best_index[..., None])[..., 0]
        log_norm = best_score - torch.log(best.clamp_min(1e-30))
        v["entropy"][:, :, rows] = log_norm - torch.einsum("bhrk,bhrk->bhr", probs, scores)
        v["max_weight"][:, :, rows] = best
        v["argmax_key"][:, :, rows] = best_index + lo
        v["mean_distance"][:, :, rows] = torch.einsum("bhrk,rk->bhr", probs, distance)
        # Column sums as a ones-vector GEMM: one vectorized read of the tile, ~1.4x
        # faster than sum(dim=-2), which reduces across rows.
        column_sums = torch.matmul(workspace.ones(probs.shape[-2]), probs)
        v["key_mass"][:, :, lo : lo + probs.shape[-1]] += column_sums[..., 0, :]
        if structure.causal and structure.window is None and probs.is_contiguous():
            self._fold_diagonals(probs, position, rows, sink_k)
        else:
            cumulative = workspace.scratch(*probs.shape)
            torch.cumsum(probs, dim=-1, out=cumulative)
            self._fold_cumulative(cumulative, position, rows, lo, structure.causal, sink_k)

    def _fold_diagonals(self, probs: Tensor, position: Tensor, rows: slice, sink_k: int) -> None:
        """Causal tiles whose keys start at 0: sum the tile along its diagonals.

        The tile is `[.., r, k]` with k = 0..c + tile − 1, c = position of row 0. A
        view with row stride key + 1 puts one distance in each column, so the
        histogram needs one strided reduction instead of a cumsum over the tile.
        Keys right of the diagonal are exactly 0, which makes the reads that a
        skewed row makes into its neighbour's masked tail harmless.
        """
        batch, heads, n_rows, width = probs.shape
        first = width - n_rows  # c: the position of the tile's first query
        outer = (probs.stride(0), probs.stride(1))
        base = probs.storage_offset()
        # Column j holds keys r + j of row r: distance c − j, for j = 0..c.
        upper = probs.as_strided((batch, heads, n_rows, first + 1), (*outer, width + 1, 1), base)
        sums = [upper.sum(dim=-2).flip(-1)]
        if n_rows > 1:
            # Keys left of r in rows 1..: distance c + m for m = 1..tile − 1.
            lower = probs.as_strided(
                (batch, heads, n_rows - 1, n_rows - 1),
                (*outer, width + 1, 1),
                base + width + 1 - (n_rows - 1),
            )
            sums.append(lower.sum(dim=-2).flip(-1))
        by_distance = torch.cat(sums, dim=-1)
        self.values["distance_histogram"].index_add_(
            -1, self.bin_of_distance[: by_distance.shape[-1]], by_distance
        )
        previous = torch.gather(
            probs, -1, (position - 1).clamp_min(0)[:, None].expand(batch, heads, n_rows, 1)
        )[..., 0]
        self.values["previous_token_mass"][:, :, rows] = previous * (position > 0)
        if sink_k:
            self.values["sink_mass"][:, :, rows] = probs[..., :sink_k].sum(dim=-1)

    def _fold_cumulative(
        self, cumulative: Tensor, position: Tensor, rows: slice, lo: int, causal: bool, sink_k: int
    ) -> None:
        """Any tile: the mass on a key interval is a difference of two entries of the
        row cumsum, so the histogram, previous-token and sink mass share one cumsum."""
        v = self.values
        edges = self.edges
        local = position[:, None] - lo
        left = _mass_up_to(cumulative, local - edges[None, :])  # keys ≤ position − edge
        histogram = left[..., :-1] - left[..., 1:]
        if not causal:
            right = edges.clamp_min(1)
            below = _mass_up_to(cumulative, local + right[None, :] - 1)  # keys < position + e
            histogram = histogram + (below[..., 1:] - below[..., :-1])
        v["distance_histogram"] += histogram.sum(dim=-2)
        points = torch.cat([local - 1, local - 2, torch.full_like(local, sink_k - 1 - lo)], dim=1)
        taken = _mass_up_to(cumulative, points)
        v["previous_token_mass"][:, :, rows] = taken[..., 0] - taken[..., 1]
        v["sink_mass"][:, :, rows] = taken[..., 2]

    def finish(self, valid: Bool[Tensor, "batch head_or_1 query"]) -> dict[str, Tensor]:
        """Zero the rows that describe no real query."""
        out = {name: self.values[name].masked_fill(~valid, 0.0) for name in self.PER_QUERY}
        out["argmax_key"] = self.values["argmax_key"].masked_fill(~valid, -1)
        out["distance_histogram"] = self.values["distance_histogram"]
        out["key_mass"] = self.values["key_mass"]
        return out


@torch.no_grad()
def tiled_attention(
    q: Float[Tensor, "batch head query d_head"],
    k: Float[Tensor, "batch kv_head key d_head"],
    v: Float[Tensor, "batch kv_head key d_head"],
    *,
    causal: bool,
    key_padding_mask: Bool[Tensor, "batch key"] | None = None,
    window: int | None = None,
    alibi_slopes: Float[Tensor, " head"] | None = None,
    attn_mask: Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    query_tile: int | None = None,
    stats: bool = True,
    sink_k: int = 1,
    top_k: int | None = None,
    keep_maps_for_heads: Sequence[int] | None = None,
    distance_bins: int | None = None,
    fused: bool | None = None,
) -> TiledAttentionResult:
    """Attention output plus streamed per-head statistics (see the module docstring).

    - Grouped-query attention: query head h reads kv head h // (head / kv_head);
      K and V are never repeated (queries are grouped per kv head instead).
    - `causal`: key k visible to the query at position p iff k ≤ p. `window`: also
      p − k < window (|p − k| < window when bidirectional), Hugging Face's
      `sliding_window`. `key_padding_mask` `[batch, key]`: True at real tokens.
    - `softcap`: attention logit softcapping (Gemma 2): the scaled scores s
      become softcap·tanh(s / softcap) before any bias or mask is added.
    - `alibi_slopes` `[head]`: adds −slope·|p − k| to the scores (ALiBi).
    - `attn_mask`: an explicit extra mask `[batch or 1, head or 1, query, key]`,
      bool (True = visible) or additive float (see `reference.visible_keys`); it
      is sliced per tile and combined with the structured arguments.
    - `scale` defaults to 1/√d_head. Scores, softmax, output accumulation and
      statistics run in float32; the output is cast back to the input dtype.
    - `query_tile`: rows per tile (default `default_query_tile`).
    - `fused`: plain causal self-attention statistics on the CPU (no padding but right
      padding; no window, ALiBi, softcap, extra mask, top-k or maps) run in the compiled
      one-pass kernel of `solvers.attention` (blocks of `query_tile` rows, default 256,
      over chunks of 2048 keys, on torch's thread count), the same results to float32
      rounding; the padded queries' outputs come from SDPA.
      None: whenever it applies; False: never; True: an error where it does not apply.
    Memory: a few float32 buffers of batch·head·query_tile·key, plus the results
    (O(batch·head·(query + key)), top-k O(batch·head·query·k), maps
    4·batch·len(keep_maps_for_heads)·query·key bytes); the fused kernel, per thread,
    4·(query_tile + 3·d_head)·key bytes (key rounded up to a whole chunk).
    Not differentiable (runs under no_grad): it is an observation kernel.
    """
    _check(q, k, v, attn_mask)
    if window is not None and window < 1:
        raise InputError(f"window must be >= 1, got {window}")
    if sink_k < 0:
        raise InputError(f"sink_k must be >= 0, got {sink_k}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if softcap is not None and not softcap > 0:
        raise InputError(f"softcap must be > 0, got {softcap}")
    batch, n_heads, n_query, d_head = q.shape
    n_kv, n_key = k.shape[1], k.shape[2]
    group = n_heads // n_kv
    device, f32 = q.device, torch.float32
    structure = _Structure(causal, window, n_key - n_query, n_query, n_key)
    scale = d_head**-0.5 if scale is None else float(scale)
    # A power-of-two scale (1/8 for d_head 64) applied as the GEMM's alpha is exact:
    # the same scores as (q·kᵀ)·scale, without a separate pass over the tile.
    exact_alpha = math.frexp(scale)[0] == 0.5
    tile = query_tile or default_query_tile(batch, n_heads, n_key)
    map_heads = tuple(int(h) for h in (keep_maps_for_heads or ()))
    if any(not 0 <= h < n_heads for h in map_heads):
        raise InputError(f"map heads {map_heads} out of range for {n_heads} heads")
    edges = distance_bin_edges(n_key, distance_bins)
    plain = (
        q.device.type == "cpu"
        and stats
        and causal
        and scale > 0  # the kernel's exp takes scale·(s − max) ≤ 0
        and n_query == n_key
        and window is None
        and alibi_slopes is None
        and softcap is None
        and attn_mask is None
        and top_k is None
        and not map_heads
    )
    lengths = _right_padded_lengths(key_padding_mask, batch, n_key) if plain else None
    if fused and lengths is None:
        raise InputError(
            "fused=True needs CPU causal self-attention statistics with a positive scale and "
            "without left or inner padding, window, ALiBi, softcap, an explicit mask, top_k "
            "or kept maps"
        )
    if lengths is not None and fused is not False:
        return _fused_attention(q, k, v, scale, edges, sink_k, query_tile or DEFAULT_ROWS, lengths)

    keys = k.to(f32)
    values = v.to(f32)
    if batch > 1:
        # Models hand over K and V as transposed views of [batch, key, head, d_head]:
        # with one sequence a tile's [head, key, d_head] slice is still a strided view
        # that the GEMMs read in place; with several, every tile would copy it.
        keys, values = keys.contiguous(), values.contiguous()
    # Grouped per kv head so K/V are never repeated. The scale multiplies the scores
    # (q·kᵀ)·scale as Hugging Face's eager attention does, not q: the same rounding.
    grouped_q = q.to(f32).unflatten(1, (n_kv, group))
    out = torch.empty(batch, n_kv, group, n_query, d_head, dtype=f32, device=device)

    # Padding: which queries see any key and how many real queries see each key
    # follow from prefix sums of the padding mask, with no query × key mask.
    real_key = torch.ones(batch, n_key, dtype=torch.bool, device=device)
    if key_padding_mask is not None:
        real_key = key_padding_mask.to(device).bool()
    real_query = real_key[:, structure.offset :]
    sees_any = _count_in(real_key, *structure.query_bounds(device)) > 0  # [batch, query]
    # Host-side prefix counts decide per tile whether masking is needed at all,
    # without a device synchronization per tile.
    padded_keys = _flag_prefix(~real_key)
    padded_queries = _flag_prefix(~real_query)
    blind_queries = _flag_prefix(~sees_any)
    visible = visible_keys(attn_mask)
    if visible is not None:
        mask_heads = attn_mask.shape[1]
        sees_any = sees_any[:, None].repeat(1, mask_heads, 1)  # refined tile by tile
        visibility = torch.zeros(batch, mask_heads, n_key, dtype=f32, device=device)
    else:
        sees_any = sees_any[:, None]
    accumulators = _Statistics(batch, n_heads, n_query, n_key, edges, device)
    if top_k is not None:
        topk_keys = torch.full((batch, n_heads, n_query, top_k), -1, device=device)
        topk_weights = torch.zeros(batch, n_heads, n_query, top_k, dtype=f32, device=device)
    maps = None
    if map_heads:
        maps = torch.zeros(batch, len(map_heads), n_query, n_key, dtype=f32, device=device)
    map_index = torch.tensor(map_heads, dtype=torch.long, device=device)
    slopes = None if alibi_slopes is None else alibi_slopes.to(device, f32)[None, :, None, None]
    # Hidden keys get the most negative finite float (Hugging Face's eager choice),
    # not −inf: softmax sends them to exactly 0 and 0·score stays finite in Σ p·s.
    fill = torch.finfo(f32).min
    observe = stats or top_k is not None or maps is not None
    need_distance = stats or slopes is not None
    plain_causal = causal and window is None
    workspace = _Workspace(batch * n_heads, min(tile, n_query), n_key, device)
    # Signed distances position − key of every tile are slices of one Toeplitz
    # template: row r, column j holds r − (j − n_key).
    template_rows = min(tile, n_query)
    template = torch.arange(template_rows, dtype=f32, device=device)[:, None] - (
        torch.arange(2 * n_key, dtype=f32, device=device)[None, :] - n_key
    )
    magnitude = template.abs() if not plain_causal else template

    for t0 in range(0, n_query, tile):
        t1 = min(n_query, t0 + tile)
        rows = t1 - t0
        lo, hi = structure.key_range(t0, t1)
        if hi == lo:
            continue
        width = hi - lo
        q_tile = grouped_q[:, :, :, t0:t1].reshape(batch * n_kv, -1, d_head)
        scores = workspace.scores(batch * n_kv, group * rows, width)
        key_tile = keys[:, :, lo:hi].flatten(0, 1).transpose(-1, -2)
        if exact_alpha:
            # beta = 0: the buffer's old contents are ignored (not even NaN propagates).
            scores.baddbmm_(q_tile, key_tile, beta=0.0, alpha=scale)
        else:
            torch.bmm(q_tile, key_tile, out=scores)
            scores.mul_(scale)
        scores = scores.view(batch, n_heads, rows, width)
        if softcap is not None:
            scores.div_(softcap).tanh_().mul_(softcap)

        position = torch.arange(t0, t1, device=device) + structure.offset
        # Column j of the template ↔ key lo + x with j = n_key − position₀ + lo + x.
        start_column = n_key - (t0 + structure.offset) + lo
        columns = slice(start_column, start_column + width)
        # For plain causal tiles the signed distance is the distance wherever p ≠ 0.
        distance = magnitude[:rows, columns] if need_distance else None
        if slopes is not None:
            scores.addcmul_(slopes, distance, value=-1.0)
        if plain_causal:
            # Only the diagonal block holds keys right of a query: a [tile, tile − 1]
            # upper triangle, the same for every tile.
            start = t0 + structure.offset + 1 - lo
            if width > start:
                scores[..., start:].masked_fill_(workspace.upper_triangle(rows), fill)
        else:
            hidden = structure.invisible(template[:rows, columns])
            if hidden is not None:
                scores.masked_fill_(hidden, fill)
        if padded_keys[hi] > padded_keys[lo]:
            scores.masked_fill_(~real_key[:, None, None, lo:hi], fill)
        if visible is not None:
            shown = visible[:, :, t0:t1, lo:hi]
            if attn_mask.dtype != torch.bool:
                scores.add_(torch.where(shown, attn_mask[:, :, t0:t1, lo:hi].to(f32), 0.0))
            scores.masked_fill_(~shown, fill)
            shown = shown & real_key[:, None, None, lo:hi]
            hidden = structure.invisible(template[:rows, columns])
            if hidden is not None:
                shown = shown & ~hidden
            sees_any[:, :, t0:t1] &= shown.any(dim=-1)
            if stats:
                visibility[:, :, lo:hi] += (shown & real_query[:, None, t0:t1, None]).sum(-2)

        probs = workspace.probs(batch, n_heads, rows, width)
        torch.softmax(scores, dim=-1, out=probs)
        if visible is not None or blind_queries[t1] > blind_queries[t0]:
            probs.masked_fill_(~sees_any[:, :, t0:t1, None], 0.0)
        grouped_probs = probs.view(batch, n_kv, group * rows, width)
        tile_out = torch.matmul(grouped_probs, values[:, :, lo:hi])
        out[:, :, :, t0:t1] = tile_out.view(batch, n_kv, group, rows, d_head)
        if not observe:
            continue
        # Padded queries are not described: zero their rows before any statistic.
        if padded_queries[t1] > padded_queries[t0]:
            probs.masked_fill_(~real_query[:, None, t0:t1, None], 0.0)
        if maps is not None:
            maps[:, :, t0:t1, lo:hi] = probs[:, map_index]
        if top_k is not None:
            kk = min(top_k, width)
            weights, index = torch.topk(probs, kk, dim=-1)
            topk_weights[:, :, t0:t1, :kk] = weights
            topk_keys[:, :, t0:t1, :kk] = torch.where(weights > 0, index + lo, -1)
        if stats:
            accumulators.fold(
                probs, scores, distance, position, slice(t0, t1), lo, structure, sink_k, workspace
            )

    valid = sees_any & real_query[:, None]  # [batch, head or 1, query]
    statistics: dict[str, Tensor] = {}
    if stats:
        statistics = accumulators.finish(valid)
        if visible is None:
            first, last = structure.key_bounds(device)
            counts = _count_in(real_query, first, last) * real_key
            visibility = counts.to(f32)[:, None]
        statistics["key_visibility"] = visibility.expand(batch, n_heads, n_key).contiguous()
    output = out.view(batch, n_heads, n_query, d_head).to(q.dtype)
    return TiledAttentionResult(
        output=output,
        query_mask=valid.any(dim=1),
        distance_bin_edges=edges,
        sink_keys=sink_k,
        causal=causal,
        topk_keys=topk_keys if top_k is not None else None,
        topk_weights=topk_weights if top_k is not None else None,
        maps=maps,
        map_heads=map_heads,
        **statistics,
    )


def _release_free_heap() -> None:
    """Return freed heap memory to the OS after a fused call (glibc's malloc_trim; a no-op
    elsewhere). Without it the model's activations fragment glibc's heap once its dynamic
    mmap threshold has risen to their size: measured on a GPT-2-small capture at 8k tokens,
    2.2 GB peak above the weights instead of 1.4 GB (the tiled path: 1.3 GB). It is not
    free (the trim, then page faults in the next allocations: 15% of a GPT-2-small capture
    at 2k tokens, 3.5% at 4k), so it runs only where a layer's output, the size of the
    model's activations, reaches `_TRIM_BYTES`."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            with contextlib.suppress(OSError, AttributeError):
                _malloc_trim = ctypes.CDLL(None).malloc_trim
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
# Below it (GPT-2 small up to 4k tokens: 12.6 MB outputs) the fragmentation costs at most
# ~0.5 GB and the trim 15-21% of the forward; at 8k it cost 0.8 GB, growing with N.
_TRIM_BYTES = 16 << 20


def _right_padded_lengths(
    key_padding_mask: Bool[Tensor, "batch key"] | None, batch: int, n_key: int
) -> Tensor | None:
    """Each sequence's length where the padding is on the right only (every row of the
    mask a run of True from key 0, at least one); None for any other padding."""
    if key_padding_mask is None:
        return torch.full((batch,), n_key, dtype=torch.int64)
    real = key_padding_mask.to("cpu").bool()
    lengths = real.sum(dim=-1)
    if bool((lengths < 1).any()):
        return None
    if not torch.equal(real, torch.arange(n_key)[None, :] < lengths[:, None]):
        return None
    return lengths


def _fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    edges: tuple[int, ...],
    sink_k: int,
    rows: int,
    lengths: Int[Tensor, " batch"],
) -> TiledAttentionResult:
    """Causal self-attention through the compiled kernel (`solvers.attention`), each
    sequence its first `lengths[b]` positions (right padding).

    Under right padding a real query sees only real keys, so its statistics are those of
    its sequence alone. Padded queries are not described (as in the tiles); their output,
    attention over the sequence's real keys (what the masked tiles and Hugging Face's
    eager attention give them), comes from SDPA."""
    batch, n_heads, n, _ = q.shape
    # Strided views as the model hands them over: the kernel copies one head at a time.
    arrays = [t.detach().to(torch.float32).numpy() for t in (q, k, v)]
    output = torch.empty(q.shape, dtype=torch.float32)
    found = causal_attention_statistics(
        *arrays,
        out=output.numpy(),
        scale=scale,
        edges=np.asarray(edges, dtype=np.int64),
        sink_k=sink_k,
        workers=torch.get_num_threads(),
        rows=rows,
        keys=DEFAULT_KEYS,
        lengths=lengths.numpy(),
    )
    del found["output"]  # written into `output`
    for b, length in enumerate(lengths.tolist()):
        if length < n:
            output[b, :, length:] = F.scaled_dot_product_attention(
                q[b : b + 1, :, length:].to(torch.float32),
                k[b : b + 1, :, :length].to(torch.float32),
                v[b : b + 1, :, :length].to(torch.float32),
                scale=scale,
                enable_gqa=True,
            )[0]
    if output.numel() * output.element_size() >= _TRIM_BYTES:
        _release_free_heap()
    statistics = {name: torch.from_numpy(value) for name, value in found.items()}
    # Causal self-attention: real key k is seen by the real queries k..length−1.
    position = torch.arange(n)
    real = position[None, :] < lengths[:, None]  # [batch, n]
    visibility = (lengths[:, None] - position[None, :]).clamp_min(0).to(torch.float32)
    return TiledAttentionResult(
        output=output.to(q.dtype),
        query_mask=real,
        distance_bin_edges=edges,
        sink_keys=sink_k,
        causal=True,
        key_visibility=visibility[:, None].expand(batch, n_heads, n).contiguous(),
        **statistics,
    )
