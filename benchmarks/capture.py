"""Attention capture: speed and peak memory against the peers, on a GPT-2-small-shaped model.

    .venv/bin/python benchmarks/capture.py [--quick] [--sizes 512,1024,...] [--cases a,c]

Cases, each (case, N) in a fresh subprocess, batch 1, torch.set_num_threads(2) (--threads),
median of --repeats timed forwards after one warm-up:
  a  Hugging Face forward with torch SDPA attention (no capture): the speed floor
  b  transformer-lens TransformerBridge.run_with_cache keeping only hook_pattern
  c  headscope statistics for every head (bridge + tiled kernel, collector keeps stats)
  d  headscope maps for 12 heads (one per layer) plus statistics for every head
  e  c without the unembedding: the forward stops at ln_final (a statistics capture
     has no use for the [N, 50257] logits, 1.6 GB at N = 8192)
  f  the public API: headscope.capture(model, ids, mode="stats") on the model from
     headscope.load_model, which builds the HeadStats record and stops the forward
     after the last attention layer
The model is random-init GPT-2 small (12 layers, 12 heads, d_model 768, built from
GPT2Config, no download; n_positions = 8192). Cases a-d return logits, so their
ratios compare like with like. Peak RSS is the child's ru_maxrss. b is skipped
where its L·H·N² pattern cache would not fit.
Writes benchmarks/results/capture.json (machine info, date, load average, results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "capture.json"
DEFAULT_SIZES = (512, 1024, 2048, 4096, 8192)
QUICK_SIZES = (512, 1024, 2048)
CASES = ("a", "b", "c", "d", "e", "f")
N_LAYERS, N_HEADS, D_MODEL, N_POSITIONS = 12, 12, 768, 8192
CASE_TIMEOUT_S = 3600


# -- child: one (case, N) -----------------------------------------------------------------------


def _build_model(directory: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=N_LAYERS, n_head=N_HEADS, n_embd=D_MODEL, n_positions=N_POSITIONS)
    GPT2LMHeadModel(config).save_pretrained(directory)
    sys.path.insert(0, str(ROOT.parent / "tests"))
    from tiny_models import tiny_tokenizer  # an offline tokenizer; ids are random anyway

    tiny_tokenizer().save_pretrained(directory)


def _load_bridge(directory: Path):
    import logging

    from transformer_lens.model_bridge import TransformerBridge

    logging.getLogger().setLevel(logging.ERROR)
    bridge = TransformerBridge.boot_transformers(str(directory), device="cpu")
    bridge.eval()
    return bridge


def _child(case: str, n: int, directory: Path, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    ids = torch.randint(0, 50257, (1, n))

    if case == "a":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa").eval()

        def run() -> None:
            model(ids)

    elif case == "f":
        import headscope as hs

        model = hs.load_model(directory)

        def run() -> None:
            stats = hs.capture(model, ids, mode="stats")
            assert stats.entropy.shape[-3] == N_LAYERS

    else:
        bridge = _load_bridge(directory)
        if case == "b":

            def run() -> None:
                _, cache = bridge.run_with_cache(
                    ids, names_filter=lambda name: name.endswith("hook_pattern")
                )
                assert len(cache) == N_LAYERS
                del cache

        else:
            from headscope.probes.fast_attention import instrumented_attention

            maps_for = (
                [(layer, layer % N_HEADS) for layer in range(N_LAYERS)] if case == "d" else None
            )
            from headscope.records.stats import PER_HEAD, PER_QUERY

            keep = PER_QUERY + PER_HEAD

            def run() -> None:
                kept: dict[int, dict] = {}

                def collector(layer, result) -> None:
                    kept[layer] = {name: getattr(result, name) for name in keep}
                    if result.maps is not None:
                        kept[layer]["maps"] = result.maps

                with instrumented_attention(bridge, collector=collector, maps_for=maps_for):
                    if case == "e":
                        try:
                            with bridge.hooks(fwd_hooks=[("ln_final.hook_in", _stop)]):
                                bridge(ids)
                        except _StopForwardError:
                            pass
                    else:
                        bridge(ids)
                assert len(kept) == N_LAYERS

    load_rss = _rss_gb()
    times, cpu = [], []
    with torch.no_grad():
        run()  # warm-up
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {
        "case": case,
        "n": n,
        "times_s": times,
        "median_s": statistics.median(times),
        "cpu_median_s": statistics.median(cpu),
        "peak_rss_gb": _rss_gb(),
        "rss_after_load_gb": load_rss,
    }


class _StopForwardError(Exception):
    """Raised by a hook to end a forward before the unembedding."""


def _stop(tensor, hook) -> None:
    raise _StopForwardError


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


# -- parent --------------------------------------------------------------------------------------


def _available_gb() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


def _pattern_cache_gb(n: int) -> float:
    """run_with_cache holds L·H·N² fp32 patterns, plus ~3 H·N² eager buffers per layer."""
    return (N_LAYERS * N_HEADS + 3 * N_HEADS) * n * n * 4 / 2**30 + 1.5


def _machine() -> dict:
    import psutil
    import torch
    import transformer_lens
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
        "platform": platform.platform(),
    }


def _run_case(case: str, n: int, directory: Path, repeats: int, threads: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        case,
        "--n",
        str(n),
        "--model-dir",
        str(directory),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    load_before = os.getloadavg()[0]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=CASE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"case": case, "n": n, "error": f"timed out after {CASE_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"case": case, "n": n, "error": f"exit {done.returncode}: {' | '.join(tail)}"}
    result = json.loads(lines[-1])
    result["load_average_before"] = load_before
    return result


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(entry: dict, width: int) -> str:
    if "skipped" in entry:
        return f"{'skipped':>{width}}"
    if "error" in entry:
        return f"{'error':>{width}}"
    return f"{_fmt(entry.get('median_s')):>{width}}"


def _rss(entry: dict) -> str:
    return "skip" if "skipped" in entry else _fmt(entry.get("peak_rss_gb"))


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top and bottom else None


def _table(rows: dict[int, dict[str, dict]]) -> str:
    """Wall-time medians and ratios; the cpu ratios (process CPU time, both threads)
    are less disturbed by other load on the machine."""
    header = (
        f"{'N':>6} | {'a sdpa':>8} | {'b TL cache':>10} | {'c stats':>8} | {'d maps+st':>9} | "
        f"{'e no-unemb':>10} | {'f capture':>9} | "
        f"{'c/a':>5} | {'b/c':>5} | {'f/a':>5} | {'b/f':>5} | {'c/a cpu':>7} | {'b/c cpu':>7} | "
        f"{'RSS a':>6} | {'RSS b':>6} | {'RSS c':>6} | {'RSS d':>6} | {'RSS e':>6} | {'RSS f':>6}"
    )
    lines = [header, "-" * len(header)]
    for n, cases in sorted(rows.items()):
        entry = {case: cases.get(case, {}) for case in CASES}
        a, b, c, f = (entry[case].get("median_s") for case in "abcf")
        ac, bc, cc = (entry[case].get("cpu_median_s") for case in "abc")
        lines.append(
            f"{n:>6} | {_cell(entry['a'], 8)} | {_cell(entry['b'], 10)} | "
            f"{_cell(entry['c'], 8)} | {_cell(entry['d'], 9)} | {_cell(entry['e'], 10)} | "
            f"{_cell(entry['f'], 9)} | "
            f"{_fmt(_ratio(c, a)):>5} | {_fmt(_ratio(b, c)):>5} | "
            f"{_fmt(_ratio(f, a)):>5} | {_fmt(_ratio(b, f)):>5} | "
            f"{_fmt(_ratio(cc, ac)):>7} | {_fmt(_ratio(bc, cc)):>7} | "
            f"{_rss(entry['a']):>6} | {_rss(entry['b']):>6} | {_rss(entry['c']):>6} | "
            f"{_rss(entry['d']):>6} | {_rss(entry['e']):>6} | {_rss(entry['f']):>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    parser.add_argument("--sizes", help="comma-separated sequence lengths")
    parser.add_argument("--cases", default=",".join(CASES), help="subset of a,b,c,d,e,f")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = _child(args.child, args.n, args.model_dir, args.repeats, args.threads)
        print(json.dumps(result), flush=True)
        return

    sizes = (
        tuple(int(s) for s in args.sizes.split(","))
        if args.sizes
        else QUICK_SIZES
        if args.quick
        else DEFAULT_SIZES
    )
    cases = [c for c in args.cases.split(",") if c]
    if any(c not in CASES for c in cases) or max(sizes) > N_POSITIONS:
        parser.error(f"cases must be among {CASES} and sizes at most {N_POSITIONS}")
    rows: dict[int, dict[str, dict]] = {}
    report = {
        "benchmark": "capture",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "model": {"layers": N_LAYERS, "heads": N_HEADS, "d_model": D_MODEL, "batch": 1},
        "repeats": args.repeats,
        "threads": args.threads,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="headscope-bench-") as tmp:
        directory = Path(tmp) / "gpt2-small-random"
        _build_model(directory)
        for n in sizes:
            for case in cases:
                if case == "b":
                    need = _pattern_cache_gb(n)
                    if need > 0.8 * _available_gb():
                        entry = {"case": "b", "n": n, "skipped": f"would need {need:.1f} GB"}
                        rows.setdefault(n, {})["b"] = entry
                        report["results"].append(entry)
                        print(f"N={n} b: skipped, would need {need:.1f} GB", flush=True)
                        continue
                entry = _run_case(case, n, directory, args.repeats, args.threads)
                rows.setdefault(n, {})[case] = entry
                report["results"].append(entry)
                summary = entry.get("error") or (
                    f"{entry['median_s']:.2f} s, peak RSS {entry['peak_rss_gb']:.2f} GB"
                )
                print(f"N={n} {case}: {summary}", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2))
    table = _table(rows)
    report["table"] = table.splitlines()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(table)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
