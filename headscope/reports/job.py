"""The report job: prompts -> sharded, checkpointed head scores and summaries -> report files.

    run_report(ReportConfig(model="toy-induction", prompts="examples/induction.jsonl"), "out/")

Work is split into shards of `shard_size` prompts. One executor task per
shard computes its head scores and its prompts' attention summaries; one
final task computes the pruning curves, ranking heads by the magnitude of
every method's mean score. The
executor runs them in this process (`local`) or on Ray actors (`ray`), and
every result is checkpointed atomically (`reports.checkpoints`), so killing
the job and rerunning the same command finishes without recomputing what is
done and gives byte-identical files. A rerun reuses a checkpoint only when it
verifies (its slot, configuration, content digest and shapes); one that does
not is named on stderr and recomputed. The report files are then written from
the checkpoints alone (`reports.writers`, no model), all four published
together or none. Progress goes to stderr (tqdm, with an ETA), never stdout.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import numpy as np

from headscope.errors import CheckpointError, InputError
from headscope.experiments.metrics import metric_info
from headscope.reports.aggregate import aggregate
from headscope.reports.checkpoints import (
    LAYOUT,
    Expected,
    ShardResult,
    ShardStore,
    orders_digest,
)
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptItem, load_prompts
from headscope.reports.scoring import Measured, measured
from headscope.reports.summaries import PruningCurves, SummaryReducer

Backend = Literal["local", "ray"]
#: How long a Ray cluster given by address may take to answer, in seconds.
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ReportResult:
    """Scores per method `[unit, layer, head]` (units: prompts, or seeds for
    CHG, labelled in `units`), how many shards were computed now or reused,
    the paths written, `top_heads` (per method every head by magnitude, most
    important first, with its sign and interval), whether the pruning curves
    were computed now (else reused), and what the scores measured (`measured`:
    metric, targets, baseline, each method's warnings)."""

    out_dir: Path
    scores: dict[str, np.ndarray]
    units: dict[str, list[str]]
    computed_shards: int
    reused_shards: int
    files: dict[str, Path]
    top_heads: dict[str, list[dict]]
    pruning_computed: bool = False
    measured: Measured | None = None


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
    connect_timeout: float = CONNECT_TIMEOUT_S,
    progress: bool = True,
    model=None,
    stop_after: int | None = None,
    clusters: bool = False,
    retrieval: bool = False,
) -> ReportResult:
    """Run (or resume) a report job and write its files into `out_dir`.

    `model`: an already loaded model (else `config.model` is loaded); with the
    Ray backend it only tokenizes and identifies the weights, each actor loads
    its own. `address`: a running Ray cluster (Ray backend only), reached
    within `connect_timeout` seconds or a `BackendError`. `stop_after`:
    compute at most this many shards now, then stop without writing the
    report (used to test resumption; a kill does the same). `clusters`: add
    the head-clusters section (`reports.clusters`, docs/methods.md §2.12; off
    by default, it runs the model on the first prompts once more). `retrieval`:
    add the retrieval-heads section (`reports.retrieval`, docs/methods.md §2.15;
    off by default, it runs synthetic copy and passkey tasks).

    A checkpoint that does not verify (tampered, truncated, not safetensors,
    of another configuration) is named on stderr and recomputed, never
    reused. Write failures are `OutputError`s naming the path.
    """
    from headscope.experiments.scoring import check_options
    from headscope.models.loading import load_model
    from headscope.reports.scoring import check_inputs
    from headscope.reports.writers import write_outputs

    if isinstance(out_dir, str) and not out_dir.strip():
        raise InputError("the output directory is empty; name one (use '.' for this directory)")
    if backend not in ("local", "ray"):
        raise InputError(f"unknown backend {backend!r}; choose local or ray")
    if backend == "local" and address is not None:
        raise InputError("a Ray cluster address needs the ray backend; add --backend ray")
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    if not connect_timeout > 0:
        raise InputError(f"the connect timeout must be positive, got {connect_timeout}")
    prompt_set = load_prompts(config.prompts, on_bad_line=config.on_bad_line)
    for message in prompt_set.skipped:
        print(f"headscope: skipped {message}", file=sys.stderr)
    check_inputs(prompt_set.items, config)
    if model is None:
        model = load_model(config.model, config.device, dtype=config.dtype)
    # A metric the model cannot compute (the loss of an encoder...) fails now, before any shard.
    check_options(model, config.methods, config.metric, config.target)
    check_lengths(model, prompt_set.items, config.on_long)
    identity = {
        **{k: v for k, v in config.to_dict().items() if k not in ("prompts", "on_bad_line")},
        "weights_hash": model.weights_hash,
        "prompts_sha256": file_sha256(config.prompts),
        "skipped_lines": list(prompt_set.skipped),
        "headscope_version": _version(),
        # A new layout gets a new folder: shards of an older one are recomputed, never misread.
        "checkpoint_layout": LAYOUT,
    }
    out = Path(out_dir)
    store = ShardStore(out, identity)
    store.clean_temporaries()
    shards = shard_items(prompt_set.items, config.shard_size)
    grid = (model.spec.n_layers, model.spec.n_heads)
    expected = [Expected(tuple(i.line for i in items), config.methods, grid) for items in shards]
    pending = _unverified(store, expected)
    reused = len(shards) - len(pending)
    now = pending if stop_after is None else pending[:stop_after]
    executor = _executor(
        backend, model, config, workers=workers, address=address, timeout=connect_timeout
    )
    with executor:
        executor.run_shards(shards, now, store, progress=progress)
        if len(now) < len(pending):
            return ReportResult(out, {}, {}, len(now), reused, {}, {})
        scores, units, reducer, scored = _collect(store, shards, expected, config)
        # Heads are pruned least important first by magnitude: a large negative
        # mean (ablating the head helps; patching it moves away from the clean
        # run) is as large an effect as a positive one.
        orders = {method: np.abs(aggregate(scores[method]).mean) for method in config.methods}
        digest = orders_digest(orders)
        try:
            pruning = store.load_pruning(digest, config.methods)
        except CheckpointError as error:
            _say(f"pruning curves: checkpoint does not verify ({error}); recomputing")
            pruning = None
        pruning_computed = pruning is None
        if pruning is None:
            with _bar(1, 0, "pruning", progress, unit="task") as bar:
                store.save_pruning(executor.prune(prompt_set.items, orders), digest)
                bar.update(1)
            # Read back what a rerun would read, so both write the same bytes.
            pruning = store.load_pruning(digest, config.methods)
            assert pruning is not None
    section = None
    if clusters:
        from headscope.reports.clusters import clusters_section

        section = clusters_section(model, prompt_set.items, config)
    retrieval_part = None
    if retrieval:
        from headscope.reports.retrieval import retrieval_section

        retrieval_part = retrieval_section(model)
    files, top = write_outputs(
        out,
        config,
        identity,
        prompt_set,
        scores,
        units,
        reducer.result(pruning),
        spec=model.spec,
        weights_hash=model.weights_hash,
        measured=scored,
        clusters=section,
        retrieval=retrieval_part,
    )
    return ReportResult(out, scores, units, len(now), reused, files, top, pruning_computed, scored)


def _unverified(store: ShardStore, expected: Sequence[Expected]) -> list[int]:
    """The shards to compute: those without a checkpoint, and those whose
    checkpoint does not verify (each named on stderr)."""
    pending = []
    for index, expect in enumerate(expected):
        if not store.exists(index):
            pending.append(index)
            continue
        try:
            store.load(index, expect)
        except CheckpointError as error:
            _say(f"shard {index}: checkpoint does not verify ({error}); recomputing")
            pending.append(index)
    return pending


def _say(message: str) -> None:
    print(f"headscope: warning: {message}", file=sys.stderr)


class Executor(Protocol):
    """Where a job's model-running tasks run: a context manager that scores and
    summarizes shards (checkpointing each into `store` as it finishes) and
    computes the pruning curves. Results are bit-identical across executors."""

    def __enter__(self) -> Executor: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def run_shards(
        self,
        shards: Sequence[tuple[PromptItem, ...]],
        pending: Sequence[int],
        store: ShardStore,
        *,
        progress: bool,
    ) -> None: ...

    def prune(
        self, items: Sequence[PromptItem], orders: Mapping[str, np.ndarray]
    ) -> PruningCurves: ...


def shard_task(model, items: Sequence[PromptItem], config: ReportConfig, index: int) -> ShardResult:
    """One shard's executor task: its head scores (with what they measured)
    and its prompts' summaries. Cost: `score_shard` plus one captured forward
    over the shard."""
    from headscope.reports.scoring import score_shard
    from headscope.reports.summaries import summarize_shard

    return ShardResult(
        scoring=score_shard(model, items, config, shard_index=index),
        summaries=summarize_shard(model, items, config),
    )


def pruning_task(
    model, items: Sequence[PromptItem], config: ReportConfig, orders: Mapping[str, np.ndarray]
) -> PruningCurves:
    """The final executor task: greedy pruning curves ranked by `orders` (see `summaries.prune`)."""
    from headscope.reports.summaries import PRUNING_PROMPTS, prune

    return prune(model, list(items[:PRUNING_PROMPTS]), config, orders)


class LocalExecutor:
    """Runs every task in this process, on the driver's model."""

    def __init__(self, model, config: ReportConfig) -> None:
        self.model = model
        self.config = config

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def run_shards(self, shards, pending, store, *, progress: bool) -> None:
        with _bar(len(shards), len(shards) - len(pending), "shards", progress) as bar:
            for index in pending:
                store.save(index, shard_task(self.model, shards[index], self.config, index))
                bar.update(1)

    def prune(self, items, orders) -> PruningCurves:
        return pruning_task(self.model, items, self.config, orders)


def _executor(
    backend: str,
    model,
    config: ReportConfig,
    *,
    workers: int,
    address: str | None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> Executor:
    if backend == "ray":
        from headscope.reports.ray_backend import RayExecutor

        return RayExecutor(config, workers=workers, address=address, connect_timeout=timeout)
    return LocalExecutor(model, config)


def _bar(total: int, initial: int, desc: str, progress: bool, unit: str = "shard"):
    """A tqdm bar on stderr (stdout holds only the CLI's summary)."""
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=not progress
    )


def _collect(
    store: ShardStore, shards, expected: Sequence[Expected], config: ReportConfig
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], SummaryReducer, Measured]:
    """Every shard's scores (concatenated over units) and unit labels (`line-N`
    per prompt, `shard-N/seed-S` for CHG), read back from the (verified)
    checkpoints, their prompt summaries fed to a reducer in prompt order, and
    what the scores measured (targets, clean metric and warnings of every shard)."""
    scores: dict[str, list[np.ndarray]] = {}
    units: dict[str, list[str]] = {}
    reducer = SummaryReducer()
    scored = []
    for index, items in enumerate(shards):
        try:
            loaded = store.load(index, expected[index])
        except CheckpointError as error:
            raise CheckpointError(
                f"shard {index}: checkpoint {store.path(index)} changed during the run and "
                f"does not verify ({error}); rerun the same command to recompute it"
            ) from None
        for method in config.methods:
            scores.setdefault(method, []).append(loaded.scores[method].numpy())
            units.setdefault(method, []).extend(loaded.scoring.units[method])
        for summary in loaded.summaries:
            reducer.add(summary)
        scored.append((items, loaded.scoring))
    return (
        {m: np.concatenate(v) for m, v in scores.items()},
        units,
        reducer,
        measured(config, scored, metric_info(config.metric)),
    )


def _version() -> str:
    from headscope import __version__

    return __version__
