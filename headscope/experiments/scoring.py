"""`score_heads`: the one entry point for head importance. The dashboard's
Importance page, `headscope report` and the notebooks all call it, so a
metric, a target span and a default mean the same thing everywhere.

    scores = score_heads(model, [ScoringPrompt("red cat blue dog red cat blue dog")],
                         methods=("ablation", "gradient"), metric="loss", target="auto")
    scores.mean("ablation")     # [layer, head], higher = more important

Each method's scores are oriented so that higher means more important
(docs/methods.md §2):

- `ablation`: zero ablation at z, one head at a time; the harm done to the
  metric, sign·(metric(ablated) − metric(clean)) with sign +1 for a loss and
  −1 for higher-is-better metrics. One unit per prompt; the signed change of
  the metric itself is kept as `effect`.
- `gradient`: Michel et al. 2019, |∂M_x/∂ξ_h| for each prompt x, normalised per
  layer (L2 over the layer's heads) within each prompt, so every prompt weighs
  the same in the mean. One unit per prompt.
- `chg`: Causal Head Gating facilitation G⁻ (Nam et al. 2025), fitted once over
  all the prompts with `chg_seeds` seeds and `chg_steps` Adam steps per phase.
  One unit per seed (labelled `{group}/seed-{s}`), so its interval is across seeds.
- `attribution`: attribution patching from each prompt's `corrupted` version
  towards the clean one, as the fraction of the clean − corrupted metric gap a
  head restores, to first order. One unit per prompt.
- `activation`: activation patching, the same fraction measured exactly: one
  head's clean z put into the corrupted run (not among the report's default
  `METHODS`; the dashboard's Patching page asks for it). One unit per prompt.

The clean text of a prompt is `prompt + target`; the loss scores the tokens
the target rule picks (`experiments.targets`). Scores are a deterministic
function of (model, prompts, options): they are computed with one intra-op
thread and a seeded generator, so the float reductions happen in the same
order on every run, process and backend.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.analyses.ranking import rank_heads
from headscope.analyses.uncertainty import Interval, bootstrap_interval
from headscope.errors import InputError
from headscope.experiments.ablation import ablation_scores, clean_metric, pruning_curve
from headscope.experiments.gating import CHGResult, causal_head_gating
from headscope.experiments.gradients import GRADIENT_FLOOR, gate_gradients, normalize_per_layer
from headscope.experiments.metrics import (
    Metric,
    MetricInfo,
    embedding_cosine,
    logit_difference,
    metric_info,
    next_token_loss,
    resolve_metric,
)
from headscope.experiments.patching import (
    activation_patching,
    activation_patching_positions,
    attribution_patching,
    attribution_patching_positions,
    patching_ends,
)
from headscope.experiments.targets import TARGET_RULES, TargetRule, check_rule, resolve_targets
from headscope.models.loading import HeadscopeModel
from headscope.models.tokens import TokenBatch

METHODS: tuple[str, ...] = ("ablation", "gradient", "chg", "attribution")
#: Methods scored once per prompt; the others (CHG) once per call.
PER_PROMPT: tuple[str, ...] = ("ablation", "gradient", "attribution", "activation")
#: Methods `score_heads` also takes beyond the report's `METHODS`.
EXTRA_METHODS: tuple[str, ...] = ("activation",)
#: The methods that patch from each prompt's `corrupted` version.
PATCHING_METHODS: tuple[str, ...] = ("attribution", "activation")
#: What a score of each method means.
SCORE_MEANING: dict[str, str] = {
    "ablation": "harm to the metric when the head's z is zeroed (higher: more important)",
    "gradient": "Michel et al. 2019 |dM/d gate|, normalised per layer within each prompt",
    "chg": "Causal Head Gating facilitation G- (one unit per seed)",
    "attribution": "fraction of the clean - corrupted metric gap restored (attribution patching)",
    "activation": "fraction of the clean - corrupted metric gap restored (activation patching)",
}
#: The metrics score_heads supports (names from the metric vocabulary).
SCORING_METRICS: tuple[str, ...] = ("loss", "logit_diff", "embedding_cosine")
#: Causal Head Gating's regulariser weight λ.
CHG_LAMBDA = 1.0

ProgressReport = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ScoringPrompt:
    """One prompt and its optional companions: `target` (a continuation
    appended to the prompt and scored by the loss), `corrupted` (for
    attribution patching), `answer` and `wrong` (for the logit difference:
    their first tokens), and a `label` naming it in results."""

    prompt: str
    target: str | None = None
    corrupted: str | None = None
    answer: str | None = None
    wrong: str | None = None
    label: str | None = None

    @property
    def text(self) -> str:
        """The clean text: prompt + target."""
        return self.prompt + (self.target or "")


@dataclass(frozen=True)
class MethodScores:
    """One method's scores `[unit, layer, head]` (float64, higher = more
    important), the unit labels, what a score means, for ablation the signed
    change of the metric itself (`effect`, same shape), for the gradient the
    raw |∂M/∂ξ| before normalisation (`raw`), and a `warning` when the method
    says nothing here (a degenerate gating fit, a gradient at the metric's
    optimum): then the scores must not be drawn as findings."""

    method: str
    scores: Float[Tensor, "unit layer head"]
    units: tuple[str, ...]
    meaning: str
    effect: Float[Tensor, "unit layer head"] | None = None
    raw: Float[Tensor, "unit layer head"] | None = None
    warning: str | None = None

    @property
    def mean(self) -> Float[Tensor, "layer head"]:
        return self.scores.mean(0)

    def interval(self, level: float = 0.95) -> Interval:
        """The mean over units with its percentile-bootstrap interval (over
        prompts; over seeds for CHG); `Interval.significant` is False where
        the interval includes zero."""
        return bootstrap_interval(self.scores, level=level)

    def ranking(self) -> list[tuple[int, int, float]]:
        """(layer, head, mean score), most important first: by magnitude, the
        sign kept (a negative harm means ablating the head helped the metric)."""
        return rank_heads(self.mean, by_magnitude=True)


@dataclass(frozen=True)
class HeadScores:
    """What `score_heads` returns: per method, the scores; and what they
    measured: the metric (`metric`: name, direction, unit), the target rule
    asked for and the rule each prompt resolved to with its number of scored
    tokens (the support), the clean metric per prompt (the baseline), and the
    Causal Head Gating fit when it ran."""

    metric: MetricInfo
    target: str
    prompts: tuple[str, ...]
    prompt_targets: tuple[str, ...]
    target_tokens: tuple[int, ...]
    clean: Float[Tensor, " prompt"]
    methods: Mapping[str, MethodScores]
    ablation_mode: str = "zero"
    chg: CHGResult | None = field(default=None, repr=False)

    def mean(self, method: str) -> Float[Tensor, "layer head"]:
        """The mean over units of `method`'s scores."""
        return self._method(method).mean

    def interval(self, method: str, level: float = 0.95) -> Interval:
        """`method`'s mean with its bootstrap interval (see `MethodScores.interval`)."""
        return self._method(method).interval(level)

    @property
    def warnings(self) -> dict[str, str]:
        """method → why its scores say nothing here (only methods with a warning)."""
        return {name: m.warning for name, m in self.methods.items() if m.warning is not None}

    def _method(self, method: str) -> MethodScores:
        if method not in self.methods:
            raise InputError(f"method {method!r} was not scored; scored: {list(self.methods)}")
        return self.methods[method]

    @property
    def described(self) -> str:
        """One line: the metric, which way is better, and what it scores."""
        rules = sorted(set(self.prompt_targets))
        return (
            f"{self.metric.name} ({self.metric.description}; {self.metric.better}), target "
            f"{self.target!r} → {', '.join(rules)}, {sum(self.target_tokens)} scored tokens "
            f"over {len(self.prompts)} prompts"
        )


# -- prompts -> tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedPrompt:
    """One prompt, tokenized: clean ids, the rule its targets came from and the
    target marks, the corrupted ids, and the answer / wrong token ids."""

    label: str
    ids: list[int]
    rule: str
    targets: list[bool]
    corrupted: list[int] | None
    answer: int | None
    wrong: int | None


def _encode(model: HeadscopeModel, text: str) -> list[int]:
    return model.tokenize(text, max_length=sys.maxsize).ids[0].tolist()


def token_count(model: HeadscopeModel, text: str) -> int:
    """Tokens of `text` as the model sees it (BOS included where the model prepends one)."""
    return len(_encode(model, text))


def _kept_positions(model: HeadscopeModel, ids: list[int], truncate: bool, label: str) -> list[int]:
    """Positions of a row that fit the context: all of them, or, with
    `truncate`, a prepended BOS and the last tokens (targets and answers sit at
    the end); InputError otherwise."""
    limit = model.spec.n_ctx
    if len(ids) <= limit:
        return list(range(len(ids)))
    if not truncate:
        raise InputError(f"{label} has {len(ids)} tokens; the model's context is {limit} tokens")
    bos = model.spec.bos_token_id
    if model.spec.prepends_bos and bos is not None and ids[0] == bos:
        return [0, *range(len(ids) - limit + 1, len(ids))]
    return list(range(len(ids) - limit, len(ids)))


def _first_token(model: HeadscopeModel, text: str, field_name: str, label: str) -> int:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"{label}: '{field_name}' {text!r} tokenizes to nothing")
    return int(ids[0])


def encode_prompt(
    model: HeadscopeModel,
    item: ScoringPrompt,
    *,
    metric: str,
    target: TargetRule | None = "auto",
    corrupted: bool = False,
    truncate: bool = False,
    label: str = "prompt",
) -> EncodedPrompt:
    """Tokenize one prompt for scoring (see `ScoringPrompt`, `experiments.targets`;
    `target=None` marks no target, for callers that only need the tokens)."""
    name = item.label or label
    if not isinstance(item.prompt, str) or not item.prompt.strip():
        raise InputError(f"{name}: the prompt is empty")
    full = _encode(model, item.text)
    continuation = None
    if item.target:
        prompt_ids = _encode(model, item.prompt)
        common = 0
        for a, b in zip(prompt_ids, full, strict=False):
            if a != b:
                break
            common += 1
        continuation = [position >= common for position in range(len(full))]
    keep = _kept_positions(model, full, truncate, name)
    ids = [full[i] for i in keep]
    if continuation is not None:
        continuation = [continuation[i] for i in keep]
        if not any(continuation[1:]):
            raise InputError(f"{name}: truncation left no target token")
    rule, marks = "none", [False] * len(ids)
    if target is not None:
        try:
            rule, marks = resolve_targets(target, ids, continuation)
        except InputError as error:
            raise InputError(f"{name}: {error}") from None
    corrupted_ids = None
    if corrupted:
        if not item.corrupted:
            raise InputError(f"{name}: patching needs a 'corrupted' prompt")
        whole = _encode(model, item.corrupted)
        corrupted_ids = [whole[i] for i in _kept_positions(model, whole, truncate, name)]
        if metric == "loss" and len(corrupted_ids) != len(ids):
            raise InputError(
                f"{name}: 'corrupted' has {len(corrupted_ids)} tokens and prompt + target "
                f"{len(ids)}; patching needs equal token lengths"
            )
    answer = wrong = None
    if metric == "logit_diff":
        answer = _first_token(model, item.answer or "", "answer", name)
        wrong = _first_token(model, item.wrong or "", "wrong", name)
    return EncodedPrompt(name, ids, rule, marks, corrupted_ids, answer, wrong)


def _batch(model: HeadscopeModel, rows: Sequence[list[int]]) -> TokenBatch:
    return model.batch_from_ids([list(row) for row in rows])


def prompt_metric(metric: str, rows: Sequence[EncodedPrompt], batch: TokenBatch) -> Metric:
    """The metric bound to the per-prompt data of `rows` (target marks, answer
    ids), padded like `batch`."""
    if metric == "loss":
        targets = torch.zeros(batch.ids.shape, dtype=torch.bool)
        for i, row in enumerate(rows):
            targets[i, : len(row.targets)] = torch.tensor(row.targets, dtype=torch.bool)
        return next_token_loss(targets)
    if metric == "logit_diff":
        return logit_difference([row.answer for row in rows], [row.wrong for row in rows])
    return embedding_cosine()


def _attribution_metric(metric: str, row: EncodedPrompt, batch: TokenBatch) -> Metric:
    bound = prompt_metric(metric, [row], batch)
    if metric != "loss":
        return bound
    # The corrupted run is scored on the clean tokens (activation patching).
    return next_token_loss(bound.per_prompt.get("targets"), labels=batch.ids)


def check_prompts(prompts: Sequence[ScoringPrompt], methods: Sequence[str], metric: str) -> None:
    """InputError when the metric or a method lacks a field it needs, naming
    the method, the field and the prompts that lack it."""

    def listed(items: list[int]) -> str:
        names = [prompts[i].label or f"prompt {i}" for i in items]
        return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")

    if metric == "logit_diff":
        for name in ("answer", "wrong"):
            missing = [i for i, item in enumerate(prompts) if not getattr(item, name)]
            if missing:
                article = "an" if name == "answer" else "a"
                raise InputError(
                    f"metric 'logit_diff' (used by every method: {', '.join(methods)}) needs "
                    f"{article} '{name}' string on every prompt; {len(missing)} prompt(s) "
                    f"have none ({listed(missing)})"
                )
    for method in PATCHING_METHODS:
        if method not in methods:
            continue
        missing = [i for i, item in enumerate(prompts) if not item.corrupted]
        if missing:
            others = ",".join(m for m in methods if m not in PATCHING_METHODS) or "ablation"
            raise InputError(
                f"method {method!r} needs a 'corrupted' prompt on every line; "
                f"{len(missing)} prompt(s) have none ({listed(missing)}); add them or "
                f"run --methods {others}"
            )


def check_options(
    model: HeadscopeModel, methods: Sequence[str], metric: str, target: str
) -> tuple[tuple[str, ...], MetricInfo]:
    """Validated (methods, metric entry): known names, and a metric the model can compute."""
    chosen = tuple(methods)
    known = (*METHODS, *EXTRA_METHODS)
    unknown = [m for m in chosen if m not in known]
    if unknown or not chosen:
        raise InputError(
            f"unknown method(s) {unknown}; choose from {', '.join(known)}"
            if unknown
            else "choose at least one method"
        )
    info = metric_info(metric)
    if info.name not in SCORING_METRICS:
        raise InputError(
            f"metric {info.name!r} is not a head-scoring metric; choose from "
            f"{', '.join(SCORING_METRICS)}"
        )
    if info.needs_lm_head and not model.spec.has_lm_head:
        raise InputError(
            f"metric {info.name!r} needs a trained LM head, and {model.spec.name} has none "
            "(its logits mean nothing); use embedding_cosine"
        )
    check_rule(target)
    return chosen, info


# -- scoring --------------------------------------------------------------------------------------


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """One intra-op thread and a seeded global generator (both restored after):
    the same inputs give bit-identical scores in every process and backend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(previous)


def score_heads(
    model: HeadscopeModel,
    prompts: Sequence[ScoringPrompt | str],
    methods: Sequence[str] = ("ablation", "gradient"),
    metric: str = "loss",
    target: TargetRule = "auto",
    *,
    chg_seeds: int = 5,
    chg_steps: int = 100,
    ablation_mode: str = "zero",
    truncate: bool = False,
    seed: int = 0,
    group: str = "all",
    progress: ProgressReport | None = None,
) -> HeadScores:
    """Score every head of `model` on `prompts` with each of `methods` (see the
    module docstring for what each score means and how it is oriented).

    `metric`: "loss" (over the target tokens; needs a trained LM head),
    "logit_diff" (needs `answer` and `wrong` on every prompt) or
    "embedding_cosine" (encoders). `target`: the target rule of
    `experiments.targets` ("auto" by default). `ablation_mode`: "zero" or
    "mean" (z ← its per-position mean over the prompts). `truncate`: keep the
    last tokens of a prompt longer than the context instead of refusing it.
    `seed` seeds CHG's initial gates; `group` labels CHG's single unit.
    `progress(done, total, label)` is called as the work advances.

    Cost for P prompts and H heads: ablation ⌈P·H/16⌉ forwards; gradient P
    forward+backward passes; attribution 2P forwards and P backwards;
    activation 2P + ⌈P·H/16⌉ forwards; CHG
    2·chg_steps forward+backward passes over 2·chg_seeds·P sequences at most.

    A vision model takes images instead of prompts (`experiments.vision.
    ScoringImage` or plain images), methods ablation, gradient or chg, and
    metric "class_logit" or "accuracy" (`experiments.vision.score_image_heads`).
    """
    if model.spec.is_vision:
        from headscope.experiments.vision import score_image_heads

        return score_image_heads(
            model,
            prompts,
            methods,
            metric,
            chg_seeds=chg_seeds,
            chg_steps=chg_steps,
            ablation_mode=ablation_mode,
            seed=seed,
            group=group,
            progress=progress,
        )
    chosen, info = check_options(model, methods, metric, target)
    items = [p if isinstance(p, ScoringPrompt) else ScoringPrompt(p) for p in prompts]
    if not items:
        raise InputError("no prompts given")
    check_prompts(items, chosen, info.name)
    if ablation_mode not in ("zero", "mean"):
        raise InputError(f"unknown ablation mode {ablation_mode!r}; choose 'zero' or 'mean'")
    report = progress or (lambda done, total, label: None)
    rows = [
        encode_prompt(
            model,
            item,
            metric=info.name,
            target=target,
            corrupted=any(m in PATCHING_METHODS for m in chosen),
            truncate=truncate,
            label=f"prompt {i}",
        )
        for i, item in enumerate(items)
    ]
    labels = tuple(item.label or f"prompt-{i}" for i, item in enumerate(items))
    stage_total = len(chosen) * 100
    results: dict[str, MethodScores] = {}
    chg: CHGResult | None = None
    with deterministic(seed):
        clean_batch = _batch(model, [row.ids for row in rows])
        bound = resolve_metric(model, prompt_metric(info.name, rows, clean_batch), clean_batch)
        clean = clean_metric(model, clean_batch, metric=bound)
        for stage, method in enumerate(chosen):
            base = stage * 100
            report(base, stage_total, f"{method}…")
            if method == "ablation":
                results[method] = ablation_method(model, clean_batch, bound, ablation_mode, labels)
            elif method == "gradient":
                raw = []
                for i, row in enumerate(rows):
                    one = _batch(model, [row.ids])
                    metric_one = prompt_metric(info.name, [row], one)
                    raw.append(gate_gradients(model, one, metric=metric_one)[0].abs())
                    report(base + 100 * (i + 1) // len(rows), stage_total, "gradient…")
                results[method] = gradient_method(raw, labels, info)
            elif method == "chg":
                chg, results[method] = chg_method(
                    model,
                    clean_batch,
                    bound,
                    seeds=chg_seeds,
                    steps=chg_steps,
                    seed=seed,
                    group=group,
                    report=lambda done, _total, label, base=base: report(
                        base + done, stage_total, label
                    ),
                )
            else:  # attribution or activation patching
                per_prompt = []
                for i, row in enumerate(rows):
                    per_prompt.append(_patching(model, info.name, row, method))
                    report(base + 100 * (i + 1) // len(rows), stage_total, f"{method}…")
                results[method] = MethodScores(
                    method, torch.stack(per_prompt).double(), labels, SCORE_MEANING[method]
                )
    report(stage_total, stage_total, "done")
    return HeadScores(
        metric=info,
        target=target,
        prompts=labels,
        prompt_targets=tuple(row.rule for row in rows),
        target_tokens=tuple(sum(row.targets) for row in rows),
        clean=clean,
        methods={name: _detached(scores) for name, scores in results.items()},
        ablation_mode=ablation_mode,
        chg=chg,
    )


def ablation_method(
    model: HeadscopeModel, batch: TokenBatch, bound: Metric, mode: str, labels: tuple[str, ...]
) -> MethodScores:
    """Ablation scores, one unit per prompt (or image) of `batch`: the metric's change
    with each head's z set to zero or its mean, signed so that larger means more
    important. Shared by `score_heads` and `score_image_heads`."""
    effect = ablation_scores(model, batch, metric=bound, mode=mode, per_prompt=True)  # type: ignore[arg-type]
    return MethodScores(
        "ablation", bound.sign * effect, labels, SCORE_MEANING["ablation"], effect=effect
    )


def gradient_method(
    raw: Sequence[Tensor], labels: tuple[str, ...], info: MetricInfo
) -> MethodScores:
    """Gradient scores from each unit's |∂metric/∂gate| `[layer, head]` (Michel et al.
    2019): normalised per unit, the raw magnitudes kept, with a warning where they
    vanish. Shared by `score_heads` and `score_image_heads`."""
    magnitudes = torch.stack(list(raw)).double()
    return MethodScores(
        "gradient",
        _normalized_or_zero(magnitudes),
        labels,
        SCORE_MEANING["gradient"],
        raw=magnitudes,
        warning=_gradient_warning(magnitudes, info),
    )


def chg_method(
    model: HeadscopeModel,
    batch: TokenBatch,
    bound: Metric,
    *,
    seeds: int,
    steps: int,
    seed: int,
    group: str,
    report: Callable[[int, int, str], object],
) -> tuple[CHGResult, MethodScores]:
    """Causal Head Gating (Nam et al. 2025) on `batch`, one unit per seed
    (`{group}/seed-{s}`); `report(done, 100, label)` as its steps go. Shared by
    `score_heads` and `score_image_heads`."""

    def step(done: int, total: int) -> None:
        report(100 * done // max(1, total), 100, f"causal head gating: step {done}/{total}")

    chg = causal_head_gating(
        model,
        batch,
        metric=bound,
        seeds=seeds,
        steps=steps,
        lam=CHG_LAMBDA,
        seed=seed,
        progress=False,
        callback=step,
    )
    scores = MethodScores(
        "chg",
        chg.facilitation_per_seed.double(),
        tuple(f"{group}/seed-{s}" for s in range(seeds)),
        SCORE_MEANING["chg"],
        warning=chg.warning,
    )
    return chg, scores


def _normalized_or_zero(
    magnitudes: Float[Tensor, "prompt layer head"],
) -> Float[Tensor, "prompt layer head"]:
    """Michel et al.'s per-layer normalisation within each prompt; a layer with
    no first-order signal (every |∂M/∂ξ| below GRADIENT_FLOOR) scores 0: its
    first-order importance is nil, and normalising noise would invent some."""
    normalized = normalize_per_layer(magnitudes)
    signal = magnitudes.amax(dim=-1, keepdim=True) >= GRADIENT_FLOOR
    return torch.where(signal, normalized, torch.zeros_like(normalized))


def _gradient_warning(
    magnitudes: Float[Tensor, "prompt layer head"], info: MetricInfo
) -> str | None:
    silent = magnitudes.flatten(1).amax(1) < GRADIENT_FLOOR  # [prompt]
    if not bool(silent.any()):
        return None
    largest = float(magnitudes[silent].max())
    return (
        f"no first-order signal on {int(silent.sum())} of {len(silent)} prompts: every "
        f"|∂{info.name}/∂gate| is below {GRADIENT_FLOOR:g} (largest {largest:.1e}), so the "
        "metric sits at an optimum when every head is on (as a cosine to the unablated "
        "output does); those prompts score 0. Use ablation, or a metric that is not at "
        "its optimum."
    )


def _detached(scores: MethodScores) -> MethodScores:
    def cpu(tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor.detach().cpu().contiguous()

    return MethodScores(
        scores.method,
        scores.scores.detach().cpu().contiguous(),
        scores.units,
        scores.meaning,
        effect=cpu(scores.effect),
        raw=cpu(scores.raw),
        warning=scores.warning,
    )


def _patching(
    model: HeadscopeModel, metric: str, row: EncodedPrompt, method: str = "attribution"
) -> Tensor:
    assert row.corrupted is not None  # encode_prompt(corrupted=True)
    clean = _batch(model, [row.ids])
    corrupted = _batch(model, [row.corrupted])
    patch = activation_patching if method == "activation" else attribution_patching
    try:
        return patch(model, clean, corrupted, _attribution_metric(metric, row, clean))
    except InputError as error:
        raise InputError(f"{method} on {row.label}: {error}") from None


#: A clean − corrupted gap below this fraction of the metric's scale
#: (max(1, |clean|, |corrupted|)) counts as none: patching fractions divide by
#: the gap, so on such a pair they are noise.
GAP_FLOOR = 1e-3


@dataclass(frozen=True)
class PatchingBaseline:
    """The two ends of the patching scale per prompt, measured as
    `score_heads`' patching methods measure them: the metric on the clean
    prompt (1 on the scale) and on the corrupted prompt, scored against the
    clean tokens (0); the target rule each prompt resolved to and its number of
    scored tokens (the support)."""

    metric: MetricInfo
    target: str
    prompts: tuple[str, ...]
    prompt_targets: tuple[str, ...]
    target_tokens: tuple[int, ...]
    clean: Float[Tensor, " prompt"]
    corrupted: Float[Tensor, " prompt"]

    @property
    def gap(self) -> Float[Tensor, " prompt"]:
        """clean − corrupted, the denominator of every patching fraction."""
        return self.clean - self.corrupted

    @property
    def without_gap(self) -> tuple[int, ...]:
        """Prompts whose gap is below GAP_FLOOR of the metric's scale: the
        corruption does not change the metric, and patching fractions are
        meaningless there."""
        scale = torch.maximum(self.clean.abs(), self.corrupted.abs()).clamp(min=1.0)
        small = self.gap.abs() < GAP_FLOOR * scale
        return tuple(int(i) for i in small.nonzero().flatten())

    @property
    def described(self) -> str:
        """One line: both ends and the gap (means over prompts) and the support."""
        info = self.metric
        over = f" (means over {len(self.prompts)} prompts)" if len(self.prompts) > 1 else ""
        ends = (
            f"{info.name} ({info.unit}, {info.better}): clean {float(self.clean.mean()):.4g}, "
            f"corrupted {float(self.corrupted.mean()):.4g}, gap clean − corrupted "
            f"{float(self.gap.mean()):.4g}{over}"
        )
        if info.name != "loss":  # only the loss reads target tokens
            return f"{ends}; {info.description}"
        rules = ", ".join(sorted(set(self.prompt_targets)))
        return f"{ends}; target {self.target!r} → {rules}, {sum(self.target_tokens)} scored tokens"


def _patching_rows(
    model: HeadscopeModel,
    prompts: Sequence[ScoringPrompt],
    metric: str,
    target: TargetRule,
    truncate: bool,
) -> tuple[MetricInfo, list[EncodedPrompt]]:
    _, info = check_options(model, ["activation"], metric, target)
    if not prompts:
        raise InputError("no prompts given")
    check_prompts(prompts, ["activation"], info.name)
    rows = [
        encode_prompt(
            model,
            item,
            metric=info.name,
            target=target,
            corrupted=True,
            truncate=truncate,
            label=f"prompt {i}",
        )
        for i, item in enumerate(prompts)
    ]
    for row in rows:
        assert row.corrupted is not None
        if len(row.corrupted) != len(row.ids):
            raise InputError(
                f"{row.label}: the clean prompt has {len(row.ids)} tokens and the corrupted "
                f"one {len(row.corrupted)}; patching needs equal token counts"
            )
    return info, rows


def patching_baseline(
    model: HeadscopeModel,
    prompts: Sequence[ScoringPrompt],
    metric: str = "loss",
    target: TargetRule = "auto",
    *,
    truncate: bool = False,
) -> PatchingBaseline:
    """The clean and corrupted metric of each prompt (`ScoringPrompt.corrupted`
    required, equal token counts), with the metric, targets and labels of
    `score_heads`' patching methods. Two forwards per prompt."""
    info, rows = _patching_rows(model, prompts, metric, target, truncate)
    clean, corrupted = [], []
    with deterministic(0):
        for row in rows:
            clean_batch = _batch(model, [row.ids])
            assert row.corrupted is not None
            ends = patching_ends(
                model,
                clean_batch,
                _batch(model, [row.corrupted]),
                _attribution_metric(info.name, row, clean_batch),
            )
            clean.append(ends[0][0])
            corrupted.append(ends[1][0])
    return PatchingBaseline(
        metric=info,
        target=target,
        prompts=tuple(item.label or f"prompt-{i}" for i, item in enumerate(prompts)),
        prompt_targets=tuple(row.rule for row in rows),
        target_tokens=tuple(sum(row.targets) for row in rows),
        clean=torch.stack(clean).double(),
        corrupted=torch.stack(corrupted).double(),
    )


@dataclass(frozen=True)
class PositionScores:
    """Patching per (head, position) of one prompt: `scores[i, p]` is the
    fraction of the clean − corrupted gap restored by patching `heads[i]` at
    position p alone (`method` "activation": exactly; "attribution": to first
    order), with both prompts' token strings."""

    method: str
    heads: tuple[tuple[int, int], ...]
    scores: Float[Tensor, "set position"]
    clean_tokens: tuple[str, ...]
    corrupted_tokens: tuple[str, ...]
    meaning: str


def position_patching(
    model: HeadscopeModel,
    prompt: ScoringPrompt,
    heads: Sequence[tuple[int, int]],
    method: str = "activation",
    metric: str = "loss",
    target: TargetRule = "auto",
    *,
    truncate: bool = False,
    progress: ProgressReport | None = None,
) -> PositionScores:
    """Activation or attribution patching of `heads` position by position on
    one prompt and its `corrupted` version, with `score_heads`' metric and
    targets (`patching.activation_patching_positions`,
    `patching.attribution_patching_positions`). Activation: len(heads)·N
    settings, ⌈len(heads)·N/16⌉ forwards; attribution: two forwards and one
    backward."""
    if method not in PATCHING_METHODS:
        raise InputError(f"unknown patching method {method!r}; choose from {PATCHING_METHODS}")
    info, rows = _patching_rows(model, [prompt], metric, target, truncate)
    row = rows[0]
    assert row.corrupted is not None
    clean = _batch(model, [row.ids])
    corrupted = _batch(model, [row.corrupted])
    bound = _attribution_metric(info.name, row, clean)
    report = progress or (lambda done, total, label: None)
    with deterministic(0):
        try:
            if method == "activation":

                def step(done: int, total: int) -> None:
                    report(done, total, f"activation patching by position: {done}/{total}")

                scores = activation_patching_positions(
                    model, clean, corrupted, bound, list(heads), callback=step
                )
            else:
                grid = attribution_patching_positions(model, clean, corrupted, bound)
                scores = torch.stack([grid[layer, head] for layer, head in heads])
        except InputError as error:
            raise InputError(f"{method} by position: {error}") from None
    return PositionScores(
        method,
        tuple((int(layer), int(head)) for layer, head in heads),
        scores.detach().cpu(),
        clean.tokens[0],
        corrupted.tokens[0],
        SCORE_MEANING[method],
    )


def pruning_curves(
    model: HeadscopeModel,
    prompts: Sequence[ScoringPrompt | str],
    orders: Mapping[str, Float[Tensor, "layer head"]],
    metric: str = "loss",
    target: TargetRule = "auto",
    *,
    ablation_mode: str = "zero",
    truncate: bool = False,
) -> tuple[list[float], dict[str, list[float]], float]:
    """Greedy pruning curves (Michel et al. 2019): for each named importance
    map `[layer, head]` (higher = more important; NaN = least), the metric
    (mean over prompts, same metric and targets as `score_heads`) after
    ablating the least important 0, 10, …, 100% of heads. Returns (fractions,
    {name: values}, the clean metric). A vision model takes images
    (`experiments.vision.image_pruning_curves`)."""
    if model.spec.is_vision:
        from headscope.experiments.vision import image_pruning_curves

        return image_pruning_curves(model, prompts, orders, metric, ablation_mode=ablation_mode)
    _, info = check_options(model, ["ablation"], metric, target)
    items = [p if isinstance(p, ScoringPrompt) else ScoringPrompt(p) for p in prompts]
    if not items:
        raise InputError("no prompts given")
    rows = [
        encode_prompt(
            model, item, metric=info.name, target=target, truncate=truncate, label=f"prompt {i}"
        )
        for i, item in enumerate(items)
    ]
    curves: dict[str, list[float]] = {}
    fractions: list[float] = []
    with deterministic(0):
        batch = _batch(model, [row.ids for row in rows])
        bound = resolve_metric(model, prompt_metric(info.name, rows, batch), batch)
        for name, order in orders.items():
            ranked = torch.nan_to_num(order.double(), nan=-torch.inf)
            fraction_tensor, values = pruning_curve(
                model,
                batch,
                ranked,
                metric=bound,
                mode=ablation_mode,  # type: ignore[arg-type]
            )
            fractions = [float(f) for f in fraction_tensor]
            curves[name] = [float(v) for v in values]
        clean = float(clean_metric(model, batch, metric=bound).mean())
    return fractions, curves, clean


__all__ = [
    "EXTRA_METHODS",
    "GAP_FLOOR",
    "METHODS",
    "PATCHING_METHODS",
    "PER_PROMPT",
    "SCORE_MEANING",
    "SCORING_METRICS",
    "TARGET_RULES",
    "EncodedPrompt",
    "HeadScores",
    "MethodScores",
    "PatchingBaseline",
    "PositionScores",
    "ScoringPrompt",
    "check_options",
    "check_prompts",
    "deterministic",
    "encode_prompt",
    "patching_baseline",
    "position_patching",
    "prompt_metric",
    "pruning_curves",
    "score_heads",
    "token_count",
]
