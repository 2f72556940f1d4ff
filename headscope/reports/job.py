"""The report job: prompts -> sharded, checkpointed head scores -> report files.

    run_report(ReportConfig(model="toy-induction", prompts="examples/induction.jsonl"), "out/")

Work is split into shards of `shard_size` prompts; each shard's scores are
checkpointed atomically, so killing the job and rerunning the same command
finishes without recomputing done shards and gives byte-identical scores.
Progress goes to stderr (tqdm, with an ETA), never stdout.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from headscope.errors import InputError
from headscope.reports.checkpoints import ShardStore
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptItem, load_prompts

Backend = Literal["local", "ray"]


@dataclass(frozen=True)
class ReportResult:
    """Scores per method `[unit, layer, head]` (units: prompts, or shards for
    CHG, labelled in `units`), how many shards were computed now or reused, and
    the paths written."""

    out_dir: Path
    scores: dict[str, np.ndarray]
    units: dict[str, list[str]]
    computed_shards: int
    reused_shards: int
    files: dict[str, Path]
    top_heads: dict[str, list[dict]]


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shard_items(items: tuple[PromptItem, ...], size: int) -> list[tuple[PromptItem, ...]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def check_lengths(model, items: tuple[PromptItem, ...], on_long: str) -> None:
    """Reject (or warn about, when truncating) prompts longer than the context.

    The clean text (prompt + target) and the corrupted prompt are counted as
    the model tokenizes them (BOS included); truncation keeps a prepended BOS
    and the last tokens, where targets and answers sit."""
    from headscope.reports.scoring import clean_text, token_count

    limit = model.spec.n_ctx
    long_lines = []
    for item in items:
        for text in (clean_text(item), item.corrupted):
            if text is None:
                continue
            if token_count(model, text) > limit:
                long_lines.append(item.line)
                break
    if not long_lines:
        return
    where = ", ".join(str(n) for n in long_lines[:10]) + (" ..." if len(long_lines) > 10 else "")
    if on_long == "reject":
        raise InputError(
            f"{len(long_lines)} prompt(s) exceed the model's context of {limit} tokens "
            f"(lines {where}); shorten them or pass --on-long truncate"
        )
    warnings.warn(
        f"{len(long_lines)} prompt(s) exceed the context of {limit} tokens and are truncated "
        f"to their last {limit} tokens (lines {where})",
        stacklevel=2,
    )


def run_report(
    config: ReportConfig,
    out_dir: str | Path,
    *,
    backend: Backend = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    model=None,
    stop_after: int | None = None,
) -> ReportResult:
    """Run (or resume) a report job and write its files into `out_dir`.

    `model`: an already loaded model (else `config.model` is loaded).
    `stop_after`: compute at most this many shards now, then stop without
    writing the report (used to test resumption; a kill does the same).
    """
    from headscope.models.loading import load_model
    from headscope.reports.scoring import check_inputs
    from headscope.reports.writers import write_outputs

    prompt_set = load_prompts(config.prompts, on_bad_line=config.on_bad_line)
    for message in prompt_set.skipped:
        print(f"headscope: skipped {message}", file=sys.stderr)
    check_inputs(prompt_set.items, config)
    if model is None:
        model = load_model(config.model)
    check_lengths(model, prompt_set.items, config.on_long)
    identity = {
        **{k: v for k, v in config.to_dict().items() if k not in ("prompts", "on_bad_line")},
        "weights_hash": model.weights_hash,
        "prompts_sha256": file_sha256(config.prompts),
        "skipped_lines": list(prompt_set.skipped),
        "headscope_version": _version(),
    }
    out = Path(out_dir)
    store = ShardStore(out, identity)
    store.clean_temporaries()
    shards = shard_items(prompt_set.items, config.shard_size)
    pending = [i for i in range(len(shards)) if not store.done(i)]
    reused = len(shards) - len(pending)
    if stop_after is not None:
        pending = pending[:stop_after]
    if backend == "local":
        _run_local(model, shards, pending, store, config, progress, reused)
    elif backend == "ray":
        from headscope.reports.ray_backend import run_ray

        run_ray(config, shards, pending, store, workers=workers, address=address, progress=progress)
    else:
        raise InputError(f"unknown backend {backend!r}; choose local or ray")
    if stop_after is not None and any(not store.done(i) for i in range(len(shards))):
        return ReportResult(out, {}, {}, len(pending), reused, {}, {})
    scores, units = _collect(store, shards, config)
    files, top = write_outputs(out, model, config, identity, prompt_set, scores, units)
    return ReportResult(out, scores, units, len(pending), reused, files, top)


def _run_local(model, shards, pending, store, config, progress, reused) -> None:
    from tqdm import tqdm

    from headscope.reports.scoring import score_shard

    bar = tqdm(
        total=len(shards),
        initial=reused,
        desc="shards",
        unit="shard",
        file=sys.stderr,
        disable=not progress,
    )
    with bar:
        for index in pending:
            store.save(index, score_shard(model, shards[index], config, shard_index=index))
            bar.update(1)


def _collect(store, shards, config) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    scores: dict[str, list[np.ndarray]] = {}
    units: dict[str, list[str]] = {}
    for index, items in enumerate(shards):
        loaded = store.load(index)
        for method in config.methods:
            block = loaded[method].numpy()
            scores.setdefault(method, []).append(block)
            if method == "chg":
                units.setdefault(method, []).append(f"shard-{index}")
            else:
                units.setdefault(method, []).extend(f"line-{item.line}" for item in items)
    return {m: np.concatenate(v) for m, v in scores.items()}, units


def _version() -> str:
    from headscope import __version__

    return __version__
