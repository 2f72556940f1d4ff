"""Attention kernels alone: the fused statistics kernel and the torch tiles against SDPA.

For each N: random q, k, v `[1, heads, N, d_head]` as transposed views of `[1, N, heads,
d_head]` (the layout models hand over), causal; then, interleaved over --repeats rounds,
torch's `scaled_dot_product_attention` (output only: the floor), `tiled_attention` with the
compiled one-pass kernel (`fused=True`: output and every statistic) and with the torch tiles
(`fused=False`). Reports the minimum and median wall time of each and the ratios of the
medians to SDPA, plus the largest difference between the two kernels' outputs and
statistics. Threads: --threads for torch, the same number of kernel workers.

--padded B: a right-padded batch instead, B sequences of lengths spread evenly from N/B to
N (a dataset's prompts padded to the longest); SDPA then takes the causal and padding mask
as a boolean `attn_mask` (as a model's padded forward does), the kernels the padding mask.

Usage: .venv/bin/python benchmarks/kernel.py [--sizes 2048,8192] [--heads 12] [--d-head 64]
       [--rows 256] [--repeats 5] [--skip-tiles] [--padded B]
       [--out benchmarks/results/kernel.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from headscope.kernels.tiled import tiled_attention
from headscope.solvers.attention import DEFAULT_ROWS

RESULTS = Path(__file__).resolve().parent / "results" / "kernel.json"
COMPARED = ("entropy", "max_weight", "sink_mass", "previous_token_mass", "mean_distance")


def _time(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(runs: dict, repeats: int) -> dict[str, list[float]]:
    """One untimed call of each run (compiled code loaded, buffers touched), then `repeats`
    rounds, each timing every run once, in reverse order every other round."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            samples[name].append(_time(runs[name]))
    return samples


def machine(threads: int) -> dict:
    """What the results were measured on."""
    import numba

    return {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "load_average": os.getloadavg(),
    }


def arguments(
    description: str, *, sizes: str, rows: int, repeats: int, results: Path
) -> argparse.ArgumentParser:
    """The options the kernel benchmarks share (shapes, repeats, threads, output file)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sizes", default=sizes)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=results)
    return parser


def new_report(threads: int) -> dict:
    """An empty results document: date, machine, no results yet (threads set for torch)."""
    torch.set_num_threads(threads)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(threads),
        "results": [],
    }


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


def measure(
    n: int, heads: int, d_head: int, rows: int, repeats: int, tiles: bool, padded: int = 0
) -> dict:
    g = torch.Generator().manual_seed(n)
    batch = max(1, padded)
    q, k, v = (torch.randn(batch, n, heads, d_head, generator=g).transpose(1, 2) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    padding = lengths = None
    if padded:
        lengths = [round(n * (b + 1) / batch) for b in range(batch)]
        padding = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        mask = causal[None, None] & padding[:, None, None, :]
        runs = {"sdpa": lambda: sdpa(q, k, v, attn_mask=mask)}
    else:
        runs = {"sdpa": lambda: sdpa(q, k, v, is_causal=True)}
    options = {"causal": True, "key_padding_mask": padding}
    runs["fused"] = lambda: tiled_attention(q, k, v, fused=True, query_tile=rows, **options)
    if tiles:
        runs["tiles"] = lambda: tiled_attention(q, k, v, fused=False, **options)
    samples = interleaved(runs, repeats)
    row = {"n": n, "heads": heads, "d_head": d_head, "rows": rows, "samples": samples}
    if lengths is not None:
        row["lengths"] = lengths
    medians = {name: statistics.median(s) for name, s in samples.items()}
    row["median_s"] = medians
    row["min_s"] = {name: min(s) for name, s in samples.items()}
    row["ratio_to_sdpa"] = {name: medians[name] / medians["sdpa"] for name in runs}
    if tiles:
        fused, tiled = runs["fused"](), runs["tiles"]()
        diffs = {"output": float((fused.output - tiled.output).abs().max())}
        for name in (*COMPARED, "key_mass", "distance_histogram"):
            diffs[name] = float((getattr(fused, name) - getattr(tiled, name)).abs().max())
        diffs["argmax_agree"] = float((fused.argmax_key == tiled.argmax_key).float().mean())
        row["fused_vs_tiles"] = diffs
    return row


def main() -> None:
    parser = arguments(
        __doc__.splitlines()[0],
        sizes="2048,4096,8192",
        rows=DEFAULT_ROWS,
        repeats=5,
        results=RESULTS,
    )
    parser.add_argument("--skip-tiles", action="store_true", help="time SDPA and fused only")
    parser.add_argument("--padded", type=int, default=0, help="a right-padded batch of B")
    args = parser.parse_args()
    report = new_report(args.threads)
    print(f"{'N':>6} | {'SDPA s':>8} | {'fused s':>8} | {'tiles s':>8} | fused/SDPA | tiles/SDPA")
    for n in (int(x) for x in args.sizes.split(",")):
        row = measure(
            n, args.heads, args.d_head, args.rows, args.repeats, not args.skip_tiles, args.padded
        )
        report["results"].append(row)
        m, r = row["median_s"], row["ratio_to_sdpa"]
        tiles = f"{m['tiles']:8.3f}" if "tiles" in m else f"{'-':>8}"
        tile_ratio = f"{r['tiles']:10.2f}" if "tiles" in r else f"{'-':>10}"
        print(
            f"{n:6d} | {m['sdpa']:8.3f} | {m['fused']:8.3f} | {tiles} | {r['fused']:10.2f} | "
            f"{tile_ratio}",
            flush=True,
        )
    write(report, args.out)


if __name__ == "__main__":
    main()
