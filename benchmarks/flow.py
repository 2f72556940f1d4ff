"""Attention flow: headscope vs the reference algorithm (networkx max-flow per pair).

The reference follows samiraabnar/attention_flow (Abnar & Zuidema 2020): head mean, add the
identity and renormalize rows (= 0.5·A + 0.5·I), build one networkx DiGraph over all
(layer, token) nodes with "capacity" edges, then call ``nx.maximum_flow_value`` with
Edmonds-Karp once per (output, input) pair. headscope runs on the same seeded random
patterns: ``flow.augment`` then ``maxflow.pairwise_max_flow`` (the work of
``attention_flow(normalize=False)``, which also reports how each stage solved the pairs);
the table shows time, speedup and the largest absolute difference of the raw flows.

Real maps: MiniLM (the built-in ``minilm``, 6 layers × 12 heads; its weights ship with the
package) on an English text cut to N tokens. For each N: the exact solve (``--real-exact``
caps the N it is tried at, since it grows much faster than on the synthetic maps), a
networkx check of a seeded sample of pairs, how many pairs equal their end-cut bound, and
``approximate_flow`` (top-k pruning) with its certified bracket. Rollout at large N: an
``iter_rollout`` stream of seeded softmax layers, one generated at a time, with peak RSS.

Usage: .venv/bin/python benchmarks/flow.py [--quick] [--out benchmarks/results/flow.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import networkx as nx
import numba
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


TEXT = (
    "The history of natural language processing generally started in the 1950s, although "
    "work can be found from earlier periods. In 1950, Alan Turing published an article titled "
    "Computing Machinery and Intelligence which proposed what is now called the Turing test as "
    "a criterion of intelligence. The Georgetown experiment in 1954 involved fully automatic "
    "translation of more than sixty Russian sentences into English. The authors claimed that "
    "within three or five years, machine translation would be a solved problem. However, real "
    "progress was much slower, and after the ALPAC report in 1966, which found that ten years "
    "of research had failed to fulfill the expectations, funding for machine translation was "
    "dramatically reduced. Little further research in machine translation was conducted until "
    "the late 1980s when the first statistical machine translation systems were developed."
)


def minilm_maps(model, n: int) -> np.ndarray:
    """MiniLM attention [layer head query key] on the longest prefix of TEXT (whole words)
    with at most n tokens ([CLS] and [SEP] included)."""
    import headscope as hs

    words = TEXT.split()
    best = 1
    for count in range(1, len(words) + 1):
        length = model.tokenize(" ".join(words[:count])).lengths[0]
        if length > n:
            break
        best = count
    record = hs.capture(model, " ".join(words[:best]))
    return record.pattern.double().numpy()


def real_case(model, n: int, exact: bool, sample: int, top_k: int, workers: int | None) -> dict:
    from headscope.analyses import prunedflow

    pattern = minilm_maps(model, n)
    tensor = torch.from_numpy(pattern)
    ahat = flow.augment(tensor).numpy()
    n_layers, n_real = ahat.shape[0], ahat.shape[-1]
    row = {"n": n_real, "layers": n_layers, "heads": pattern.shape[1]}
    print(
        f"  minilm N={n_real}: capacities {np.quantile(ahat[ahat > 0], [0, 0.5, 1])}",
        file=sys.stderr,
        flush=True,
    )
    end_cut = np.minimum(ahat[-1].sum(1)[:, None], ahat[0].sum(0)[None, :])
    if exact:
        start = time.perf_counter()
        solved = maxflow.pairwise_max_flow(ahat, workers=workers)
        row["exact_s"] = time.perf_counter() - start
        row["stages"] = dataclasses.asdict(solved.stats)
        values = solved.values
        row["end_cut_tight"] = float(np.mean(np.abs(values - end_cut) <= 1e-12))
        rng = np.random.default_rng(n_real)
        pairs = rng.integers(0, n_real, size=(sample, 2))
        graph = flow.flow_graph(tensor)
        start = time.perf_counter()
        reference = np.array(
            [nx.maximum_flow_value(graph, (n_layers, int(i)), (0, int(j))) for i, j in pairs]
        )
        row["reference_pairs"] = sample
        row["reference_s_per_pair"] = (time.perf_counter() - start) / sample
        row["max_abs_diff"] = float(np.abs(values[pairs[:, 0], pairs[:, 1]] - reference).max())
        print(f"  exact {row['exact_s']:.2f} s {row['stages']}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    approx = flow.approximate_flow(tensor, top_k=top_k, workers=workers)
    row["approx_top_k"] = top_k
    row["approx_s"] = time.perf_counter() - start
    row["approx_kept"] = approx.kept
    row["approx_bound_mean"] = float(approx.bound.mean())
    row["approx_bound_max"] = float(approx.bound.max())
    row["approx_prior_bound"] = prunedflow.prior_bound(
        ahat, prunedflow.pruning_mask(ahat, top_k=top_k)
    )
    if exact:
        row["approx_err_mean"] = float((values - approx.values).mean())
        row["approx_in_bracket"] = bool(
            ((approx.values <= values + 1e-12) & (values <= approx.upper + 1e-12)).all()
        )
    print(f"  approx {row['approx_s']:.2f} s", file=sys.stderr, flush=True)
    return row


def rollout_case(n: int, n_layers: int, heads: int) -> dict:
    """iter_rollout over a stream of seeded softmax layers [head query key] (float32)."""
    generator = torch.Generator().manual_seed(n)

    def layers():
        for _ in range(n_layers):
            logits = torch.randn((heads, n, n), generator=generator).mul_(4.0)
            yield torch.softmax(logits, dim=-1)
            del logits

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    last = torch.empty(0)
    for current in flow.iter_rollout(layers()):  # keeps one layer's rollout, not all of them
        last = current
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row_error = float((last.sum(1) - 1).abs().max())
    print(f"  rollout N={n} L={n_layers}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return {
        "n": n,
        "layers": n_layers,
        "heads": heads,
        "seconds": seconds,
        "peak_rss_mb": peak / 1024,
        "peak_rss_growth_mb": (peak - before) / 1024,
        "input_layer_mb": heads * n * n * 4 / 2**20,
        "full_pattern_float64_mb": n_layers * heads * n * n * 8 / 2**20,
        "max_row_sum_error": row_error,
    }


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
    parser.add_argument("--real-exact", type=int, default=64, help="largest N solved exactly")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-real", action="store_true", help="no MiniLM real-map cases")
    parser.add_argument("--skip-rollout", action="store_true", help="no large-N rollout cases")
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

    # the push-relabel kernel compiles on first use (cached on disk afterwards): not timed
    start = time.perf_counter()
    maxflow.pairwise_max_flow(
        flow.augment(torch.from_numpy(random_pattern("random", 3, 4, 0))).numpy()
    )
    compile_s = time.perf_counter() - start
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.skip_synthetic:
        plan = []
    rows = [run_case(kind, n, layers, ref, args.workers) for kind, n, layers, ref in plan]
    rollout_plan = () if args.skip_rollout else (1024,) if args.quick else (1024, 4096)
    rollouts = [rollout_case(n, 6, 12) for n in rollout_plan]
    real = []
    if not args.skip_real:
        import headscope as hs

        model = hs.load_model("minilm")
        real_plan = (34,) if args.quick else (34, 64, 128)
        real = [
            real_case(model, n, n <= args.real_exact, 10 if args.quick else 30, 4, args.workers)
            for n in real_plan
        ]
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
            "numba": numba.__version__,
        },
        "heads": HEADS,
        "residual": 0.5,
        "warm_up_s": compile_s,
        "reference": "networkx maximum_flow_value (edmonds_karp) per pair, graph built once",
        "workers": args.workers,
        "rows": rows,
        "real_maps": real,
        "rollout": rollouts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(json.dumps(real, indent=1))
    print(json.dumps(rollouts, indent=1))
    print(f"\n{os.cpu_count()} CPUs, load average {load}; wrote {args.out}")


if __name__ == "__main__":
    main()
