"""Retrieval and streaming heads of a causal LM (docs/methods.md §2.15).

- `copy_task`, `greedy_continue`: the copy task [BOS, s_1..s_T, s_1..s_k] whose
  greedy continuation should be s_{k+1}..s_T, and greedy generation (optionally
  with heads ablated at z).
- `retrieval_scores`: Wu et al. 2024, "Retrieval Head Mechanistically Explains
  Long-Context Factuality": per head, the share of copy steps at which its argmax
  key holds the token being generated (`analyses.retrieval.retrieval_score`).
- `streaming_gates`: DuoAttention (Xiao et al. 2024): per-head gates α mixing full
  attention with streaming attention (sink + recent window,
  `probes.streaming.stream_heads`), fitted on a passkey-style needle task by
  distillation from the full model plus an L1 push towards streaming. Heads with α
  ≥ 0.5 are retrieval heads, the rest streaming heads.
- `long_range_scores`: a data-free split: attention mass outside sink + window on
  repeated random tokens (or any prompts given).
- `ablation_check`: the validation: ablating the top-k heads of a score hurts
  copying more than ablating the bottom-k.
- `retrieval_study`: all of the above with echo scores, for the dashboard page,
  the report section and the notebook.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.analyses.retrieval import (
    HeadScore,
    echo_score,
    long_range_mass,
    long_range_peak,
    rank_by,
    retrieval_score,
    sink_baseline,
    wilson_interval,
)
from headscope.analyses.taxonomy import HeadTaxonomy, head_taxonomy, long_context_labels
from headscope.analyses.uncertainty import Interval, bootstrap_interval
from headscope.errors import InputError
from headscope.experiments.ablation import ablation_scores
from headscope.experiments.inputs import Prompts, as_batch, check_pairs
from headscope.experiments.progress import AnalysisCancelledError, ProgressCallback, tracking
from headscope.models.loading import HeadscopeModel
from headscope.probes.capture import capture
from headscope.probes.interventions import gate_heads
from headscope.probes.run import run
from headscope.probes.streaming import stream_heads
from headscope.records.attention import AttentionRecord

Head = tuple[int, int]


def _check_lm(model: HeadscopeModel) -> None:
    if not (model.spec.causal and model.spec.has_lm_head):
        raise InputError(
            f"{model.spec.name} is not a causal language model with a trained LM head: "
            "retrieval and streaming heads are defined during generation"
        )


def content_ids(model: HeadscopeModel) -> list[int]:
    """Token ids to draw synthetic tasks from: the vocabulary without special tokens
    (at most the first 5000 ids, enough for tasks of a few hundred tokens)."""
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    special |= {model.spec.bos_token_id, model.spec.eos_token_id, model.spec.pad_token_id}
    limit = min(model.spec.d_vocab, len(model.tokenizer), 5000)
    return [i for i in range(limit) if i not in special]


def _draw(pool: list[int], count: int, generator: torch.Generator) -> list[int]:
    if count > len(pool):
        raise InputError(f"the task needs {count} distinct tokens; the vocabulary has {len(pool)}")
    order = torch.randperm(len(pool), generator=generator)[:count]
    return [pool[int(i)] for i in order]


@dataclass(frozen=True)
class CopyTask:
    """Prompts [BOS, s_1..s_T, s_1..s_k] (distinct tokens within a prompt; T =
    `source_length`, k = `cue_length`), `expected` the continuation s_{k+1}..s_T.
    The source span is positions 1..T."""

    ids: Int[Tensor, "prompt position"]
    expected: Int[Tensor, "prompt step"]
    source_length: int
    cue_length: int

    @property
    def prompt_length(self) -> int:
        return int(self.ids.shape[1])

    @property
    def steps(self) -> int:
        return int(self.expected.shape[1])


def copy_task(
    model: HeadscopeModel,
    *,
    prompts: int = 16,
    source_length: int = 16,
    cue_length: int = 2,
    seed: int = 0,
) -> CopyTask:
    """A seeded copy task (see CopyTask) from the model's non-special tokens."""
    if prompts < 1 or source_length < 2 or not 1 <= cue_length < source_length:
        raise InputError(
            "need prompts >= 1, source_length >= 2 and 1 <= cue_length < source_length"
        )
    bos = model.spec.bos_token_id
    if bos is None:
        raise InputError("the copy task starts with a BOS token; the model has none")
    if 1 + source_length + cue_length > model.spec.n_ctx:
        raise InputError(f"the copy task does not fit in the model's {model.spec.n_ctx} tokens")
    generator = torch.Generator().manual_seed(seed)
    pool = content_ids(model)
    sources = [_draw(pool, source_length, generator) for _ in range(prompts)]
    ids = torch.tensor([[bos, *s, *s[:cue_length]] for s in sources], dtype=torch.long)
    expected = torch.tensor([s[cue_length:] for s in sources], dtype=torch.long)
    return CopyTask(ids, expected, source_length, cue_length)


Intervention = Literal["zero", "stream"]


@torch.no_grad()
def greedy_continue(
    model: HeadscopeModel,
    ids: Int[Tensor, "prompt position"],
    steps: int,
    *,
    heads: Sequence[Head] = (),
    intervention: Intervention = "zero",
    sink: int = 1,
    window: int = 4,
) -> Int[Tensor, "prompt total"]:
    """Greedy generation of `steps` tokens after equal-length prompts `ids`, with the
    `heads` zero-ablated at z (`intervention="zero"`, `probes.interventions.gate_heads`)
    or made streaming heads (`"stream"`: attention limited to the first `sink` and the
    last `window` keys, `probes.streaming.stream_heads`). One full forward per step
    (no key/value cache: exact, meant for short tasks)."""
    spec = model.spec
    if ids.shape[1] + steps > spec.n_ctx:
        raise InputError(f"prompt + {steps} steps exceed the model's {spec.n_ctx} tokens")
    if intervention not in ("zero", "stream"):
        raise InputError(f"intervention must be 'zero' or 'stream', got {intervention!r}")
    gates = torch.ones(spec.n_layers, spec.n_heads)
    for layer, head in check_pairs(model, heads):
        gates[layer, head] = 0.0
    scope = (
        gate_heads(model, gates)
        if intervention == "zero"
        else stream_heads(model, gates, sink=sink, window=window)
    )
    sequences = ids.clone()
    with scope:
        for _ in range(steps):
            output = run(model, model.batch_from_ids(sequences.tolist())).output
            assert output is not None
            following = output.logits[:, -1].argmax(-1).cpu()
            sequences = torch.cat([sequences, following[:, None]], dim=1)
    return sequences


@dataclass(frozen=True)
class CopyAccuracy:
    """Share of greedily generated tokens equal to the expected copy: `correct` of
    `total`, with its Wilson 95% interval [`low`, `high`]. `ablated`: the heads
    changed during generation (zero-ablated at z or made streaming)."""

    correct: int
    total: int
    low: float
    high: float
    ablated: tuple[Head, ...] = ()

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else math.nan


def _accuracy(task: CopyTask, sequences: Tensor, ablated: Sequence[Head] = ()) -> CopyAccuracy:
    generated = sequences[:, task.prompt_length :]
    correct = int((generated == task.expected).sum())
    total = int(task.expected.numel())
    low, high = wilson_interval(torch.tensor(float(correct)), torch.tensor(total))
    return CopyAccuracy(correct, total, float(low), float(high), tuple(ablated))


def copy_accuracy(
    model: HeadscopeModel,
    task: CopyTask,
    *,
    heads: Sequence[Head] = (),
    intervention: Intervention = "zero",
    sink: int = 1,
    window: int = 4,
) -> CopyAccuracy:
    """Greedy copy accuracy on `task`, with `heads` zero-ablated or made streaming."""
    sequences = greedy_continue(
        model,
        task.ids,
        task.steps,
        heads=heads,
        intervention=intervention,
        sink=sink,
        window=window,
    )
    return _accuracy(task, sequences, heads)


@dataclass(frozen=True)
class RetrievalResult:
    """Retrieval scores (Wu et al. 2024) on a copy task: the task, the greedy
    `sequences` (prompt + continuation), the clean `accuracy`, and `scores` (a
    HeadScore with chance baseline, copy-step support and Wilson intervals)."""

    task: CopyTask
    sequences: Int[Tensor, "prompt total"]
    accuracy: CopyAccuracy
    scores: HeadScore


@torch.no_grad()
def retrieval_scores(model: HeadscopeModel, task: CopyTask | None = None) -> RetrievalResult:
    """Greedy generation on the copy task, then the retrieval score of every head.

    The maps of every generation step come from one capture of the final sequences
    (`probes.capture.capture`): in a causal model row p − 1 of the final map is the
    row the model used when it generated token p, so no per-step capture is needed
    (a test checks this against step-by-step captures). Memory: the maps of the
    final sequences, 4·prompts·L·H·N² bytes.
    """
    _check_lm(model)
    task = task if task is not None else copy_task(model)
    sequences = greedy_continue(model, task.ids, task.steps)
    record = capture(model, model.batch_from_ids(sequences.tolist()))
    assert isinstance(record, AttentionRecord)
    pattern = record.pattern if record.pattern.dim() == 5 else record.pattern[None]
    n = sequences.shape[1]
    source = torch.zeros(sequences.shape, dtype=torch.bool)
    source[:, 1 : 1 + task.source_length] = True
    generated = torch.zeros(sequences.shape, dtype=torch.bool)
    generated[:, task.prompt_length : n] = True
    scores = retrieval_score(pattern, sequences, source, generated)
    return RetrievalResult(task, sequences, _accuracy(task, sequences), scores)


@dataclass(frozen=True)
class PasskeyTask:
    """Needle prompts [BOS, filler, n_1..n_m, filler, n_1..n_m] of equal length: the
    needle's second copy must be retrieved from far back (`distance` tokens between
    the two copies' starts, more than a streaming window). `targets[b, p]` marks the
    answer tokens n_{cue+1}..n_m of the second copy (the first `cue` are the cue)."""

    ids: Int[Tensor, "prompt position"]
    targets: Int[Tensor, "prompt position"]
    distance: int


def passkey_task(
    model: HeadscopeModel,
    *,
    prompts: int = 16,
    needle_length: int = 6,
    cue_length: int = 1,
    filler_length: int = 24,
    seed: int = 0,
) -> PasskeyTask:
    """A passkey-style retrieval task (DuoAttention trains its gates on synthetic
    passkey retrieval): a random needle hidden at a random depth in random filler
    (tokens not in the needle) and repeated at the end after `cue_length` cue
    tokens. Lengths are fixed, so no padding."""
    bos = model.spec.bos_token_id
    if bos is None:
        raise InputError("the passkey task starts with a BOS token; the model has none")
    if needle_length < 2 or not 1 <= cue_length < needle_length or filler_length < 2:
        raise InputError("need needle_length >= 2, 1 <= cue_length < needle_length, filler >= 2")
    length = 1 + filler_length + 2 * needle_length
    if length > model.spec.n_ctx:
        raise InputError(f"the passkey task does not fit in the model's {model.spec.n_ctx} tokens")
    generator = torch.Generator().manual_seed(seed)
    pool = content_ids(model)
    rows, targets = [], torch.zeros(prompts, length, dtype=torch.bool)
    for _ in range(prompts):
        needle = _draw(pool, needle_length, generator)
        rest = [t for t in pool if t not in needle]
        filler = [
            rest[int(i)] for i in torch.randint(len(rest), (filler_length,), generator=generator)
        ]
        depth = int(torch.randint(0, filler_length // 2 + 1, (1,), generator=generator))
        rows.append([bos, *filler[:depth], *needle, *filler[depth:], *needle])
    targets[:, length - needle_length + cue_length :] = True
    distance = filler_length - filler_length // 2 + needle_length
    return PasskeyTask(torch.tensor(rows), targets, distance)


@dataclass(frozen=True)
class StreamingGates:
    """DuoAttention gates fitted on a passkey task.

    `gates` `[layer, head]` in [0, 1]: 1 = full attention needed (retrieval head), 0 =
    sink + recent window suffice (streaming head); `retrieval` is gates ≥ 0.5.
    Evidence: `answer_tokens` scored; `kl_all_streaming`, `kl_fitted`: the mean KL
    (nats per answer token) from the full model's next-token distribution with every
    head streaming and with the fitted split (gates rounded); `warning`: why the fit
    says nothing (None when informative)."""

    gates: Float[Tensor, "layer head"]
    sink: int
    window: int
    lam: float
    steps: int
    answer_tokens: int
    kl_all_streaming: float
    kl_fitted: float
    warning: str | None = None

    @property
    def retrieval(self) -> Tensor:
        return self.gates >= 0.5


def _kl(
    model: HeadscopeModel, batch, targets: Tensor, reference: Tensor, gates: Tensor, sink, window
):
    with stream_heads(model, gates, sink=sink, window=window):
        output = run(model, batch).output
    assert output is not None
    log_q = torch.log_softmax(output.logits[:, :-1].float(), -1)
    kl = (reference.exp() * (reference - log_q)).sum(-1)  # [prompt, position - 1]
    mask = targets[:, 1:].to(kl.device)
    return (kl * mask).sum() / mask.sum()


def streaming_gates(
    model: HeadscopeModel,
    task: PasskeyTask | None = None,
    *,
    sink: int = 1,
    window: int = 4,
    lam: float = 0.5,
    steps: int = 60,
    lr: float = 0.05,
    progress: bool = False,
    callback: ProgressCallback | None = None,
) -> StreamingGates:
    """Fit DuoAttention gates (Xiao et al. 2024) on a passkey task.

    Frozen model; every head's z = α·z_full + (1 − α)·z_stream (`stream_heads`). Loss
    = KL(full model ‖ gated model) of the next-token distributions at the answer
    positions (DuoAttention distils the final hidden states; the output distribution
    is the same idea for any LM head) + `lam`·mean(α), the L1 push towards streaming.
    α starts at 1 and is kept in [0, 1] (projected Adam, `lr`, `steps` full-batch
    steps). Cost: `steps` forward+backward passes over the task. The window must be
    shorter than the needle distance or no head needs full attention."""
    _check_lm(model)
    task = task if task is not None else passkey_task(model)
    if window >= task.distance:
        raise InputError(
            f"window {window} reaches the needle ({task.distance} tokens back): nothing to retrieve"
        )
    spec = model.spec
    batch = model.batch_from_ids(task.ids.tolist())
    with torch.no_grad():
        full = run(model, batch).output
    assert full is not None
    reference = torch.log_softmax(full.logits[:, :-1].float(), -1)
    alpha = torch.ones(spec.n_layers, spec.n_heads, requires_grad=True)
    optimizer = torch.optim.Adam([alpha], lr=lr)
    with tracking(steps, progress, callback, "streaming gates") as tracker:
        for _ in range(steps):
            with torch.enable_grad():
                loss = _kl(model, batch, task.targets, reference, alpha, sink, window)
                loss = loss + lam * alpha.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
            tracker.step()
    gates = alpha.detach().double()
    with torch.no_grad():
        zeros = torch.zeros(spec.n_layers, spec.n_heads)
        kl_stream = float(_kl(model, batch, task.targets, reference, zeros, sink, window))
        rounded = (gates >= 0.5).float()
        kl_fit = float(_kl(model, batch, task.targets, reference, rounded, sink, window))
    warning = None
    if kl_stream < 0.01:
        warning = (
            f"with every head streaming the output moves by only {kl_stream:.3g} nats: "
            "the task never needs attention beyond the window, so the gates say nothing"
        )
    return StreamingGates(
        gates=gates,
        sink=sink,
        window=window,
        lam=float(lam),
        steps=steps,
        answer_tokens=int(task.targets.sum()),
        kl_all_streaming=kl_stream,
        kl_fitted=kl_fit,
        warning=warning,
    )


def repeated_tokens(
    model: HeadscopeModel, *, prompts: int = 8, length: int = 24, seed: int = 0
) -> Int[Tensor, "prompt position"]:
    """[BOS, r_1..r_L, r_1..r_L] with random non-special tokens: data-free text on
    which heads that read far back can show it."""
    bos = model.spec.bos_token_id
    generator = torch.Generator().manual_seed(seed)
    pool = content_ids(model)
    rows = []
    for _ in range(prompts):
        segment = [pool[int(i)] for i in torch.randint(len(pool), (length,), generator=generator)]
        rows.append(([bos] if bos is not None else []) + segment + segment)
    return torch.tensor(rows)


@torch.no_grad()
def long_range_scores(
    model: HeadscopeModel,
    prompts: Prompts | None = None,
    *,
    sink: int = 1,
    window: int = 4,
    measure: Literal["peak", "mass"] = "peak",
    seed: int = 0,
) -> HeadScore:
    """The data-free streaming/retrieval score on `prompts` or, by default, repeated
    random tokens: every head's largest weight on one key outside the first `sink`
    keys and the last `window` keys (`measure="peak"`, `analyses.retrieval.
    long_range_peak`) or its whole mass there (`"mass"`, `long_range_mass`). Memory:
    the maps of the prompts."""
    if measure not in ("peak", "mass"):
        raise InputError(f"measure must be 'peak' or 'mass', got {measure!r}")
    if not model.spec.causal:
        raise InputError("the sink + window split is defined for causal attention")
    batch = (
        model.batch_from_ids(repeated_tokens(model, seed=seed).tolist())
        if prompts is None
        else as_batch(model, prompts)
    )
    record = capture(model, batch)
    assert isinstance(record, AttentionRecord)
    pattern = record.pattern if record.pattern.dim() == 5 else record.pattern[None]
    score = long_range_peak if measure == "peak" else long_range_mass
    return score(pattern, lengths=list(batch.lengths), sink=sink, window=window)


#: Retrieval-head thresholds of each score: Wu et al. 2024 call a head with a
#: retrieval score above 0.1 a retrieval head; DuoAttention rounds gates at 0.5; a
#: long-range peak above 0.3 is six times the uniform baseline of a 24-token context.
THRESHOLDS: dict[str, float] = {
    "retrieval score": 0.1,
    "DuoAttention gate": 0.5,
    "long-range peak": 0.3,
}


@dataclass(frozen=True)
class AblationCheck:
    """Copy accuracy with the `count` top heads of a score changed (`top`) vs
    `count` heads drawn from the heads it calls streaming (score below `threshold`):
    every such subset or `draws` seeded random ones (`bottom`, one per subset), with
    `intervention` "zero" (z ← 0) or "stream" (attention limited to sink + window).
    A score that finds the retrieval heads makes `top` far lower than `bottom`."""

    by: str
    count: int
    threshold: float
    intervention: str
    clean: CopyAccuracy
    top: CopyAccuracy
    bottom: tuple[CopyAccuracy, ...]

    @property
    def bottom_pooled(self) -> CopyAccuracy:
        """The subsets pooled: correct and total summed (Wilson interval of the pool)."""
        correct = sum(item.correct for item in self.bottom)
        total = sum(item.total for item in self.bottom)
        low, high = wilson_interval(torch.tensor(float(correct)), torch.tensor(total))
        return CopyAccuracy(correct, total, float(low), float(high))

    @property
    def separated(self) -> bool:
        """Top and pooled bottom intervals do not overlap, top below bottom."""
        return bool(self.bottom) and self.top.high < self.bottom_pooled.low


def ablation_check(
    model: HeadscopeModel,
    score: Float[Tensor, "layer head"],
    *,
    by: str,
    threshold: float,
    count: int = 2,
    draws: int = 15,
    intervention: Intervention = "zero",
    task: CopyTask | None = None,
    sink: int = 1,
    window: int = 4,
    seed: int = 0,
    cache: dict | None = None,
) -> AblationCheck:
    """Change the `count` highest-scoring heads, then `count` heads drawn from those
    scoring below `threshold` (at most `draws` subsets), and measure greedy copy
    accuracy on `task` each time (see AblationCheck). `cache`: a dict shared by
    checks on the same task, sink and window, so a head set is run once."""
    _check_lm(model)
    total = score.numel()
    if not 1 <= count <= total // 2:
        raise InputError(f"count must lie in [1, {total // 2}], got {count}")
    task = task if task is not None else copy_task(model, seed=1)
    top = rank_by(score, count)
    pool = [
        (layer, head)
        for layer in range(score.shape[0])
        for head in range(score.shape[1])
        if float(score[layer, head]) < threshold and (layer, head) not in top
    ]
    subsets = list(combinations(pool, count))
    if len(subsets) > draws:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(subsets), generator=generator)[:draws]
        subsets = [subsets[int(i)] for i in sorted(order.tolist())]
    memo = {} if cache is None else cache

    def measure(heads: Sequence[Head], kind: Intervention) -> CopyAccuracy:
        key = (tuple(sorted(heads)), kind if heads else "none")
        if key not in memo:
            memo[key] = copy_accuracy(
                model, task, heads=heads, intervention=kind, sink=sink, window=window
            )
        return dataclasses.replace(memo[key], ablated=tuple(heads))

    return AblationCheck(
        by=by,
        count=count,
        threshold=float(threshold),
        intervention=intervention,
        clean=measure((), intervention),
        top=measure(top, intervention),
        bottom=tuple(measure(subset, intervention) for subset in subsets),
    )


def gate_scores(gates: StreamingGates) -> HeadScore:
    """The fitted gates as a HeadScore (for `analyses.taxonomy.long_context_labels`):
    baseline 0, where the L1 push leaves a head the task does not need; support the
    answer tokens; no interval (one fit)."""
    shape = gates.gates.shape
    nan = torch.full(shape, math.nan, dtype=torch.float64)
    return HeadScore(
        measure=(
            f"DuoAttention gate: 1 = full attention needed, 0 = sink ({gates.sink}) + "
            f"window ({gates.window}) suffice"
        ),
        score=gates.gates,
        baseline=torch.zeros(shape, dtype=torch.float64),
        support=torch.full(shape, gates.answer_tokens, dtype=torch.long),
        low=nan,
        high=nan.clone(),
        unit="answer tokens",
    )


@dataclass(frozen=True)
class RetrievalStudy:
    """Everything the Retrieval page, the report section and the notebook show:
    retrieval scores on a copy task, DuoAttention gates, the data-free long-range
    peak, echo scores (on repeated random tokens), the taxonomy of those prompts,
    each head's ablation effect on their loss (`ablation`: per-prompt bootstrap
    interval, nats; for the dormant label) with the uniform sink baseline, the
    ablation checks, and the long-context labels."""

    retrieval: RetrievalResult
    gates: StreamingGates
    long_range: HeadScore
    echo: HeadScore
    taxonomy: HeadTaxonomy
    ablation: Interval
    sink_baseline: float
    checks: tuple[AblationCheck, ...] = field(default=())
    labels: dict = field(default_factory=dict)


def retrieval_study(
    model: HeadscopeModel,
    *,
    prompts: int = 16,
    source_length: int = 16,
    cue_length: int = 2,
    sink: int = 1,
    window: int = 4,
    count: int = 2,
    draws: int = 15,
    gate_steps: int = 60,
    seed: int = 0,
    progress: Callable[[int, int, str], object] | None = None,
) -> RetrievalStudy:
    """Retrieval scores on a copy task, DuoAttention gates on a passkey task, the
    data-free long-range peak, echo scores, single-head ablation (for the dormant
    label), the ablation checks of each score with both interventions (on a fresh
    copy task, seed + 1), and the long-context labels. Cost on toy-induction: about
    10 s on one CPU core. `progress(done, total, label)` after each stage (the gate
    fit: after each step); a False return from it cancels (AnalysisCancelledError)."""
    _check_lm(model)
    stages = 5

    def stage(done: int, label: str) -> None:
        if progress is not None and progress(done, stages, label) is False:
            raise AnalysisCancelledError(f"cancelled at {label}")

    stage(0, "retrieval scores: greedy copying")
    task = copy_task(
        model, prompts=prompts, source_length=source_length, cue_length=cue_length, seed=seed
    )
    retrieval = retrieval_scores(model, task)
    stage(1, "DuoAttention gates")

    def gate_step(done: int, total: int) -> bool | None:
        if progress is None:
            return None
        return progress(1, stages, f"DuoAttention gates: step {done} of {total}") is not False

    gates = streaming_gates(
        model,
        passkey_task(model, prompts=prompts, seed=seed),
        sink=sink,
        window=window,
        steps=gate_steps,
        callback=gate_step,
    )
    stage(2, "data-free and echo scores")
    repeated = repeated_tokens(model, seed=seed)
    batch = model.batch_from_ids(repeated.tolist())
    long_range = long_range_scores(model, batch, sink=sink, window=window)
    record = capture(model, batch)
    assert isinstance(record, AttentionRecord)
    echo = echo_score(record.pattern, repeated, bos=model.spec.bos_token_id is not None)
    taxonomy = head_taxonomy(record)
    stage(3, "single-head ablation (dormant heads)")
    ablation = bootstrap_interval(ablation_scores(model, batch, per_prompt=True), seed=seed)
    check_task = copy_task(
        model, prompts=prompts, source_length=source_length, cue_length=cue_length, seed=seed + 1
    )
    stage(4, "ablation checks: greedy copying with heads changed")
    cache: dict = {}
    scores = {
        "retrieval score": retrieval.scores.score,
        "DuoAttention gate": gates.gates,
        "long-range peak": long_range.score,
    }
    checks = tuple(
        ablation_check(
            model,
            values,
            by=name,
            threshold=THRESHOLDS[name],
            count=count,
            draws=draws,
            intervention=intervention,
            task=check_task,
            sink=sink,
            window=window,
            seed=seed,
            cache=cache,
        )
        for intervention in ("zero", "stream")
        for name, values in scores.items()
    )
    baseline = sink_baseline(list(batch.lengths))
    labels = long_context_labels(
        taxonomy,
        echo=echo,
        retrieval=retrieval.scores,
        streaming=gate_scores(gates),
        ablation=ablation,
        sink_baseline=baseline,
    )
    return RetrievalStudy(
        retrieval, gates, long_range, echo, taxonomy, ablation, baseline, checks, labels
    )


__all__ = [
    "AblationCheck",
    "CopyAccuracy",
    "CopyTask",
    "PasskeyTask",
    "RetrievalResult",
    "RetrievalStudy",
    "StreamingGates",
    "ablation_check",
    "copy_accuracy",
    "copy_task",
    "gate_scores",
    "greedy_continue",
    "long_range_scores",
    "passkey_task",
    "repeated_tokens",
    "retrieval_scores",
    "retrieval_study",
    "streaming_gates",
]
