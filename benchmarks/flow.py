"""Attention flow: headscope vs the reference algorithm (networkx max-flow per pair).

The reference follows samiraabnar/attention_flow (Abnar & Zuidema 2020): head mean, add the
identity and renormalize rows (= 0.5·A + 0.5·I), build one networkx DiGraph over all
(layer, token) nodes with "capacity" edges, then call ``nx.maximum_flow_value`` with
Edmonds-Karp once per (output, input) pair. headscope runs on the same seeded random
patterns: ``flow.augment`` then ``maxflow.pairwise_max_flow`` (the work of
``attention_flow(normalize=False)``, which also reports how each stage solved the pairs);
the table shows time, speedup and the largest absolute difference of the raw flows.

Usage: .venv/bin/python benchmarks/flow.py [--quick] [--out benchmarks/results/flow.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np
import scipy
import torch

from headscope.analyses import flow, maxflow

HEADS = 4


def random_pattern(kind: str, n_layers: int, n: int, seed: int) -> np.ndarray:
    """Seeded row-stochastic attention [layer head query key]."""
    rng = np.random.default_rng(seed)
    shape = (n_layers, HEADS, n, n)
    if kind == "random":  # dense: uniform random weights, rows normalized
        weights = rng.random(shape)
    elif kind == "causal":  # the same, lower-triangular
        weights = np.tril(rng.random(shape))
    elif kind == "softmax":  # softmax of N(0, 3²) logits: peaky, like trained heads
        weights = np.exp(3.0 * rng.standard_normal(shape))
    else:
        raise ValueError(kind)
    return weights / weights.sum(-1, keepdims=True)


def reference_flow(pattern: np.ndarray) -> np.ndarray:
    """Raw attention flow the way samiraabnar/attention_flow computes it."""
    att = pattern.mean(axis=1)
    n_layers, n, _ = att.shape
    aug = att + np.eye(n)[None]
    aug = aug / aug.sum(axis=-1)[..., None]
    size = (n_layers + 1) * n
    adjacency = np.zeros((size, size))
    for layer in range(1, n_layers + 1):
        adjacency[layer * n : (layer + 1) * n, (layer - 1) * n : layer * n] = aug[layer - 1]
    graph = nx.from_numpy_array(adjacency, create_using=nx.DiGraph())
    nx.set_edge_attributes(graph, {(u, v): w for u, v, w in graph.edges(data="weight")}, "capacity")
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = nx.maximum_flow_value(
                graph, n_layers * n + i, j, flow_func=nx.algorithms.flow.edmonds_karp
            )
    return out


def run_case(kind: str, n: int, n_layers: int, with_reference: bool, workers: int | None):
    pattern = random_pattern(kind, n_layers, n, seed=n * 1000 + n_layers)
    tensor = torch.from_numpy(pattern)
    start = time.perf_counter()
    solved = maxflow.pairwise_max_flow(flow.augment(tensor).numpy(), workers=workers)
    ours_s = time.perf_counter() - start
    ours = solved.values
    stages = dataclasses.asdict(solved.stats)
    row = {
        "pattern": kind,
        "n": n,
        "layers": n_layers,
        "headscope_s": ours_s,
        "stages": stages,
        "reference_s": None,
        "speedup": None,
        "max_abs_diff": None,
    }
    if with_reference:
        start = time.perf_counter()
        reference = reference_flow(pattern)
        row["reference_s"] = time.perf_counter() - start
        row["speedup"] = row["reference_s"] / ours_s
        row["max_abs_diff"] = float(np.abs(ours - reference).max())
    print(f"  {kind} N={n} L={n_layers}: {ours_s:.3f} s {stages}", file=sys.stderr, flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| pattern | N | layers | reference (networkx) s | headscope s | speedup | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ref = f"{row['reference_s']:.2f}" if row["reference_s"] is not None else "—"
        speed = f"{row['speedup']:.0f}×" if row["speedup"] is not None else "—"
        diff = f"{row['max_abs_diff']:.1e}" if row["max_abs_diff"] is not None else "—"
        lines.append(
            f"| {row['pattern']} | {row['n']} | {row['layers']} | {ref} | "
            f"{row['headscope_s']:.3f} | {speed} | {diff} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a minute)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flow.json"))
    parser.add_argument("--workers", type=int, default=None, help="attention_flow workers")
    args = parser.parse_args()

    if args.quick:
        plan = [("random", n, 6, True) for n in (8, 16)]
        plan += [("random", 64, 6, False), ("causal", 64, 6, False), ("softmax", 32, 6, False)]
    else:
        plan = [("random", n, 6, True) for n in (8, 16, 32)]
        plan += [("random", n, 6, False) for n in (64, 128)]
        plan += [("random", 256, 12, False)]
        plan += [("causal", n, 6, True) for n in (8, 16, 32)]
        plan += [("causal", n, 6, False) for n in (64, 128)]
        plan += [("softmax", n, 6, True) for n in (8, 16, 32)]
        plan += [("softmax", 64, 6, False)]

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = [run_case(kind, n, layers, ref, args.workers) for kind, n, layers, ref in plan]
    result = {
        "benchmark": "attention_flow",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_at_start": load,
            "load_average_at_end": os.getloadavg() if load is not None else None,
        },
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "networkx": nx.__version__,
        },
        "heads": HEADS,
        "residual": 0.5,
        "reference": "networkx maximum_flow_value (edmonds_karp) per pair, graph built once",
        "workers": args.workers,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(f"\n{os.cpu_count()} CPUs, load average {load}; wrote {args.out}")


if __name__ == "__main__":
    main()
