"""Per-tile attention statistics in torch: eager against torch.compile's CPU code, with
SDPA and the compiled one-pass kernel as the references.

The question it answers: would torch.compile (inductor's C++/OpenMP code generation on
CPU) make the torch tiles fast enough to need no hand-written kernel? `tile_statistics` is
the per-tile work of the torch path in plain torch: for one block of query rows against
the keys it can see (dynamic shapes, so one compiled graph serves every tile), the scores,
the softmax, the output, and every statistic the fused kernel returns (entropy, max
weight, argmax, sink mass, previous-token mass, mean distance, the distance histogram over
log bins, the key mass). Timed over all tiles of causal q, k, v `[1, heads, N, d_head]`,
interleaved over --repeats rounds, against `scaled_dot_product_attention` and
`tiled_attention(fused=True)`; compile time reported apart. The compiled and the eager
statistics are compared (largest difference).

Usage: .venv/bin/python benchmarks/compiled_tiles.py [--sizes 2048,4096] [--heads 12]
       [--rows 256] [--repeats 3] [--threads 2] [--out benchmarks/results/compiled_tiles.json]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from kernel import arguments, interleaved, new_report, write  # benchmarks/kernel.py

from headscope.kernels.tiled import distance_bin_edges, tiled_attention

RESULTS = Path(__file__).resolve().parent / "results" / "compiled_tiles.json"
SINK_K = 4


def tile_statistics(
    q: torch.Tensor,  # [heads, rows, d]
    k: torch.Tensor,  # [heads, n, d]
    v: torch.Tensor,  # [heads, n, d]
    first: torch.Tensor,  # [] the tile's first query position
    edges: torch.Tensor,  # [bins + 1] distance bin edges
    scale: float,
) -> tuple[torch.Tensor, ...]:
    """One query tile's output and statistics, causal, in plain torch."""
    rows, n = q.shape[1], k.shape[1]
    position = first + torch.arange(rows)
    distance = position[:, None] - torch.arange(n)[None, :]  # [rows, n]
    visible = distance >= 0
    scores = (q @ k.transpose(1, 2)) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    top, argmax = scores.max(-1, keepdim=True)
    e = torch.exp(scores - top)
    z = e.sum(-1, keepdim=True)
    p = e / z
    output = p @ v
    shifted = torch.where(visible, scores - top, torch.zeros((), dtype=scores.dtype))
    entropy = torch.log(z[..., 0]) - (p * shifted).sum(-1)
    sink = p[..., :SINK_K].sum(-1)
    previous = (p * (distance == 1)).sum(-1)
    mean_distance = (p * distance.clamp_min(0)).sum(-1)
    bins = torch.bucketize(distance.clamp_min(0), edges[1:-1], right=True)
    histogram = torch.zeros(p.shape[0], rows, edges.numel() - 1).scatter_add_(
        -1, bins.expand_as(p), p
    )
    key_mass = p.sum(1)
    max_weight = 1 / z[..., 0]
    return (
        output,
        entropy,
        max_weight,
        argmax[..., 0],
        sink,
        previous,
        mean_distance,
        histogram,
        key_mass,
    )


def _all_tiles(stats, q, k, v, rows: int, edges: torch.Tensor, scale: float) -> list:
    return [
        stats(q[:, t : t + rows], k[:, : t + rows], v[:, : t + rows], torch.tensor(t), edges, scale)
        for t in range(0, q.shape[1], rows)
    ]


def measure(n: int, heads: int, d_head: int, rows: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(n)
    q4, k4, v4 = (torch.randn(1, n, heads, d_head, generator=g).transpose(1, 2) for _ in range(3))
    q, k, v = (t[0].contiguous() for t in (q4, k4, v4))
    scale = d_head**-0.5
    edges = torch.tensor(distance_bin_edges(n), dtype=torch.float32)
    compiled = torch.compile(tile_statistics, dynamic=True)
    start = time.perf_counter()
    compiled(q[:, :rows], k[:, :rows], v[:, :rows], torch.tensor(0), edges, scale)
    compile_s = time.perf_counter() - start
    runs = {
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(
            q4, k4, v4, is_causal=True
        ),
        "fused": lambda: tiled_attention(q4, k4, v4, causal=True, fused=True),
        "eager tiles": lambda: _all_tiles(tile_statistics, q, k, v, rows, edges, scale),
        "compiled tiles": lambda: _all_tiles(compiled, q, k, v, rows, edges, scale),
    }
    samples = interleaved(runs, repeats)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    eager, fast = runs["eager tiles"](), runs["compiled tiles"]()
    difference = max(
        float((a.float() - b.float()).abs().max())
        for tile_e, tile_c in zip(eager, fast, strict=True)
        for a, b in zip(tile_e, tile_c, strict=True)
    )
    return {
        "n": n,
        "heads": heads,
        "d_head": d_head,
        "rows": rows,
        "compile_s": compile_s,
        "samples": samples,
        "median_s": medians,
        "ratio_to_sdpa": {name: medians[name] / medians["sdpa"] for name in runs},
        "compiled_vs_eager_max_difference": difference,
    }


def main() -> None:
    parser = arguments(
        __doc__.splitlines()[0], sizes="2048,4096", rows=256, repeats=3, results=RESULTS
    )
    args = parser.parse_args()
    report = new_report(args.threads)
    names = ("sdpa", "fused", "eager tiles", "compiled tiles")
    print(f"{'N':>6} | compile s | " + " | ".join(f"{name:>14}" for name in names) + " | diff")
    for n in (int(x) for x in args.sizes.split(",")):
        row = measure(n, args.heads, args.d_head, args.rows, args.repeats)
        report["results"].append(row)
        m, r = row["median_s"], row["ratio_to_sdpa"]
        cells = " | ".join(f"{m[name]:7.3f} ({r[name]:4.2f})" for name in names)
        print(
            f"{n:6d} | {row['compile_s']:9.1f} | {cells} | "
            f"{row['compiled_vs_eager_max_difference']:.1e}",
            flush=True,
        )
    write(report, args.out)


if __name__ == "__main__":
    main()
