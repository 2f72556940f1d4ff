"""Attention capture: speed and peak memory against the peers, on GPT-2-shaped models.

    .venv/bin/python benchmarks/capture.py [--quick] [--sizes 512,1024,...] [--cases a,c]
    .venv/bin/python benchmarks/capture.py --shape long --cases g,f     # N = 16384, 32768

Cases, each (case, N) in a fresh subprocess, batch 1, torch.set_num_threads(2) (--threads),
one untimed 64-token forward (prime_s: it loads the compiled kernel, once per process),
--warmup untimed forwards (default 1) then --repeats timed ones; with --rounds R every
(N, case) runs R times, the cases of one N interleaved (a round goes a, f, g, ...; the
next g, f, a, ...), and the median is over all timed forwards of all rounds:
  a  Hugging Face forward with torch SDPA attention (no capture): the speed floor
  b  transformer-lens TransformerBridge.run_with_cache keeping only hook_pattern
  c  headscope statistics for every head (bridge + tiled kernel, collector keeps stats)
  d  headscope maps for 12 heads (one per layer) plus statistics for every head
  e  c without the unembedding: the forward stops at ln_final (a statistics capture
     has no use for the [N, 50257] logits, 1.6 GB at N = 8192)
  f  the public API: headscope.capture(model, ids, mode="stats") on the model from
     headscope.load_model, which builds the HeadStats record and stops the forward
     after the last attention layer
  g  the floor for f: the Hugging Face SDPA forward without the unembedding (the
     GPT2Model trunk, which ends at ln_f; no [N, vocab] logits)
--batch B (cases f and g only): a right-padded batch of B prompts instead of one, lengths
spread evenly from N/B to N (a dataset's prompts padded to the longest): g runs the trunk
with the padding as `attention_mask`, f captures the batch `model.batch_from_ids` builds.
Shapes (--shape; random init from GPT2Config, no download): `gpt2-small` (12 layers ×
12 heads, d_model 768, n_positions 8192; sizes 512-8192) and `long` (4 layers × 8 heads,
d_model 512, n_positions 32768; sizes 16384 and 32768). Cases a-d return logits, so
their ratios compare like with like; f/g is the public capture against its floor.
Memory: peak RSS of the child (ru_maxrss), and the peak above the weights: the
child's high-water mark over the warm-up and timed forwards (VmHWM, reset through
/proc/self/clear_refs once every weight has been read) minus its RSS at that point.
b is skipped where its L·H·N² pattern cache would not fit.
Writes benchmarks/results/capture.json (--out; machine info, date, load average, results).
"""

from __future__ import annotations

import argparse
import contextlib
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
QUICK_SIZES = (512, 1024, 2048)
PRIME_TOKENS = 64
CASES = ("a", "b", "c", "d", "e", "f", "g")
# name: (layers, heads, d_model, n_positions, default sizes)
SHAPES = {
    "gpt2-small": (12, 12, 768, 8192, (512, 1024, 2048, 4096, 8192)),
    "long": (4, 8, 512, 32768, (16384, 32768)),
}
CASE_TIMEOUT_S = 3600


# -- child: one (case, N) -----------------------------------------------------------------------


def _build_model(directory: Path, shape: str) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    layers, heads, d_model, positions, _ = SHAPES[shape]
    config = GPT2Config(n_layer=layers, n_head=heads, n_embd=d_model, n_positions=positions)
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


def _child(
    case: str,
    n: int,
    directory: Path,
    repeats: int,
    threads: int,
    shape: str,
    warmup: int = 1,
    batch: int = 1,
) -> dict:
    import gc

    import torch

    n_layers, n_heads = SHAPES[shape][:2]
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    ids = torch.randint(0, 50257, (batch, n))
    lengths = [round(n * (b + 1) / batch) for b in range(batch)]
    mask = None if batch == 1 else torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]

    if case == "a":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa").eval()

        def run(ids: torch.Tensor = ids) -> None:
            model(ids)

    elif case == "g":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa").eval()
        trunk = model.transformer  # GPT2Model: embeddings, blocks, ln_f; no lm_head

        def run(ids: torch.Tensor = ids) -> None:
            trunk(ids, attention_mask=mask if ids.shape[1] == n else None)

    elif case == "f":
        import headscope as hs

        model = hs.load_model(directory)
        bridge = model.bridge
        rows = [row[:length] for row, length in zip(ids.tolist(), lengths, strict=True)]
        prompts = ids if batch == 1 else model.batch_from_ids(rows)

        def run(ids: torch.Tensor = ids) -> None:
            stats = hs.capture(model, prompts if ids.shape[1] == n else ids, mode="stats")
            assert stats.entropy.shape[-3] == n_layers

    else:
        bridge = _load_bridge(directory)
        if case == "b":

            def run(ids: torch.Tensor = ids) -> None:
                _, cache = bridge.run_with_cache(
                    ids, names_filter=lambda name: name.endswith("hook_pattern")
                )
                assert len(cache) == n_layers
                del cache

        else:
            from headscope.probes.fast_attention import instrumented_attention

            maps_for = (
                [(layer, layer % n_heads) for layer in range(n_layers)] if case == "d" else None
            )
            from headscope.records.stats import PER_HEAD, PER_QUERY

            keep = PER_QUERY + PER_HEAD

            def run(ids: torch.Tensor = ids) -> None:
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
                assert len(kept) == n_layers

    # One untimed forward of a few tokens first: it loads the compiled kernel from numba's
    # cache (compiles it, ~7 s, on a fresh install) and starts the worker threads, a cost
    # paid once per process that --warmup 0 at the longest sizes would otherwise charge to
    # the one timed forward. Timed apart as prime_s.
    start = time.perf_counter()
    with torch.no_grad():
        run(ids[:, :PRIME_TOKENS])
    prime_s = time.perf_counter() - start
    _page_in(model if case in "ag" else bridge)
    gc.collect()
    load_rss = _rss_gb()
    resident = _reset_peak()  # None where the kernel cannot reset the high-water mark
    times, cpu = [], []
    with torch.no_grad():
        for _ in range(warmup):
            run()
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {
        "case": case,
        "n": n,
        "lengths": lengths,
        "times_s": times,
        "median_s": statistics.median(times),
        "prime_s": prime_s,
        "cpu_median_s": statistics.median(cpu),
        "peak_rss_gb": _rss_gb(),
        "rss_after_load_gb": load_rss,
        "peak_above_load_gb": _peak_above(resident),
    }


class _StopForwardError(Exception):
    """Raised by a hook to end a forward before the unembedding."""


def _stop(tensor, hook) -> None:
    raise _StopForwardError


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


def _page_in(module) -> None:
    """Read every weight once: safetensors are memory-mapped and would otherwise
    become resident during the first forward, inflating its peak above the load RSS.
    Then hand freed heap back to the system."""
    import ctypes

    import torch

    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.sum()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int | None:
    """Current RSS (KiB) after resetting the high-water mark to it (Linux ≥ 4.0), so
    that the peak measured next is that of the forwards, not of loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except (OSError, KeyError, ValueError):
        return None


def _peak_above(resident: int | None) -> float | None:
    """GB (10⁹ bytes) of the forwards' peak RSS above the RSS after loading."""
    if resident is None:
        return None
    try:
        return (_status_kib("VmHWM") - resident) * 1024 / 1e9
    except (OSError, KeyError, ValueError):
        return None


# -- parent --------------------------------------------------------------------------------------


def _available_gb() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


def _pattern_cache_gb(n: int, shape: str) -> float:
    """run_with_cache holds L·H·N² fp32 patterns, plus ~3 H·N² eager buffers per layer."""
    layers, heads = SHAPES[shape][:2]
    return (layers * heads + 3 * heads) * n * n * 4 / 2**30 + 1.5


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


def _run_case(
    case: str,
    n: int,
    directory: Path,
    repeats: int,
    threads: int,
    shape: str,
    warmup: int = 1,
    batch: int = 1,
) -> dict:
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
        "--warmup",
        str(warmup),
        "--threads",
        str(threads),
        "--shape",
        shape,
        "--batch",
        str(batch),
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


def _merge(entries: list[dict]) -> dict:
    """One (case, N) over several rounds: the median of every timed forward, the
    largest peak."""
    done = [entry for entry in entries if "times_s" in entry]
    if not done:
        return entries[-1]
    times = [t for entry in done for t in entry["times_s"]]
    cpu = [entry["cpu_median_s"] for entry in done]
    above = [entry["peak_above_load_gb"] for entry in done if entry.get("peak_above_load_gb")]
    return {
        "case": done[0]["case"],
        "n": done[0]["n"],
        "times_s": times,
        "median_s": statistics.median(times),
        "prime_s": statistics.median(entry["prime_s"] for entry in done),
        "cpu_median_s": statistics.median(cpu),
        "peak_rss_gb": max(entry["peak_rss_gb"] for entry in done),
        "rss_after_load_gb": statistics.median(entry["rss_after_load_gb"] for entry in done),
        "peak_above_load_gb": max(above) if above else None,
        "load_average_before": [entry.get("load_average_before") for entry in done],
        "rounds": len(done),
        **({"errors": len(entries) - len(done)} if len(done) < len(entries) else {}),
    }


def _table(rows: dict[int, dict[str, dict]]) -> str:
    """Wall-time medians and ratios; the cpu ratios (process CPU time, both threads)
    are less disturbed by other load on the machine. Δ: peak RSS above the weights."""
    header = (
        f"{'N':>6} | {'a sdpa':>8} | {'b TL cache':>10} | {'c stats':>8} | {'d maps+st':>9} | "
        f"{'e no-unemb':>10} | {'f capture':>9} | {'g floor':>8} | "
        f"{'c/a':>5} | {'b/c':>5} | {'f/a':>5} | {'b/f':>5} | {'f/g':>5} | "
        f"{'c/a cpu':>7} | {'f/g cpu':>7} | "
        f"{'RSS a':>6} | {'RSS b':>6} | {'RSS c':>6} | {'RSS d':>6} | {'RSS e':>6} | "
        f"{'RSS f':>6} | {'RSS g':>6} | {'Δ f':>5} | {'Δ g':>5}"
    )
    lines = [header, "-" * len(header)]
    for n, cases in sorted(rows.items()):
        entry = {case: cases.get(case, {}) for case in CASES}
        a, b, c, f, g = (entry[case].get("median_s") for case in "abcfg")
        ac, cc, fc, gc = (entry[case].get("cpu_median_s") for case in "acfg")
        lines.append(
            f"{n:>6} | {_cell(entry['a'], 8)} | {_cell(entry['b'], 10)} | "
            f"{_cell(entry['c'], 8)} | {_cell(entry['d'], 9)} | {_cell(entry['e'], 10)} | "
            f"{_cell(entry['f'], 9)} | {_cell(entry['g'], 8)} | "
            f"{_fmt(_ratio(c, a)):>5} | {_fmt(_ratio(b, c)):>5} | "
            f"{_fmt(_ratio(f, a)):>5} | {_fmt(_ratio(b, f)):>5} | {_fmt(_ratio(f, g)):>5} | "
            f"{_fmt(_ratio(cc, ac)):>7} | {_fmt(_ratio(fc, gc)):>7} | "
            + " | ".join(f"{_rss(entry[case]):>6}" for case in CASES)
            + f" | {_fmt(entry['f'].get('peak_above_load_gb')):>5}"
            + f" | {_fmt(entry['g'].get('peak_above_load_gb')):>5}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    parser.add_argument("--sizes", help="comma-separated sequence lengths")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="gpt2-small")
    parser.add_argument("--cases", default=",".join(CASES), help="subset of a,b,c,d,e,f,g")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per process")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed forwards first (0 for the longest sizes)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="processes per (case, N)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case")
    parser.add_argument("--batch", type=int, default=1, help="right-padded prompts (f, g)")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = _child(
            args.child,
            args.n,
            args.model_dir,
            args.repeats,
            args.threads,
            args.shape,
            args.warmup,
            args.batch,
        )
        print(json.dumps(result), flush=True)
        return

    layers, heads, d_model, positions, default_sizes = SHAPES[args.shape]
    sizes = (
        tuple(int(s) for s in args.sizes.split(","))
        if args.sizes
        else QUICK_SIZES
        if args.quick
        else default_sizes
    )
    cases = [c for c in args.cases.split(",") if c]
    if any(c not in CASES for c in cases) or max(sizes) > positions:
        parser.error(f"cases must be among {CASES} and sizes at most {positions}")
    if args.rounds < 1 or args.repeats < 1 or args.batch < 1:
        parser.error("--rounds, --repeats and --batch must be >= 1")
    if args.batch > 1 and set(cases) - {"f", "g"}:
        parser.error("--batch takes the cases f and g only")
    rows: dict[int, dict[str, dict]] = {}
    report = {
        "benchmark": "capture",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_average_at_start": os.getloadavg(),
        "model": {
            "shape": args.shape,
            "layers": layers,
            "heads": heads,
            "d_model": d_model,
            "n_positions": positions,
            "batch": args.batch,
        },
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "threads": args.threads,
        "results": [],
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory(prefix="headscope-bench-") as tmp:
        directory = Path(tmp) / f"gpt2-{args.shape}-random"
        _build_model(directory, args.shape)
        for n in sizes:
            runs: dict[str, list[dict]] = {}
            for round_ in range(args.rounds):
                for case in cases if round_ % 2 == 0 else cases[::-1]:
                    if case == "b":
                        need = _pattern_cache_gb(n, args.shape)
                        if need > 0.8 * _available_gb():
                            entry = {"case": "b", "n": n, "skipped": f"would need {need:.1f} GB"}
                            runs["b"] = [entry]
                            print(f"N={n} b: skipped, would need {need:.1f} GB", flush=True)
                            continue
                    entry = _run_case(
                        case,
                        n,
                        directory,
                        args.repeats,
                        args.threads,
                        args.shape,
                        args.warmup,
                        args.batch,
                    )
                    entry["round"] = round_
                    runs.setdefault(case, []).append(entry)
                    report["results"].append(entry)
                    summary = entry.get("error") or (
                        f"{entry['median_s']:.2f} s, peak RSS {entry['peak_rss_gb']:.2f} GB, "
                        f"above load {_fmt(entry.get('peak_above_load_gb'))} GB, "
                        f"first {PRIME_TOKENS}-token forward {entry['prime_s']:.2f} s"
                    )
                    print(f"N={n} {case} (round {round_ + 1}): {summary}", flush=True)
                    save()
            rows[n] = {case: _merge(entries) for case, entries in runs.items()}
            report.setdefault("merged", []).extend(rows[n].values())
    table = _table(rows)
    report["table"] = table.splitlines()
    report["load_average_at_end"] = os.getloadavg()
    save()
    print()
    print(table)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
