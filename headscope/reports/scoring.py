"""Head scores of one report shard: `headscope.experiments.score_heads` on the
shard's prompts, the same call the dashboard's Importance page makes.

    score_shard(model, items, config, shard_index=0) -> ShardScores

What each score means and how it is oriented (higher = more important) is
documented in `headscope.experiments.scoring`. Units are the shard's prompts
(labelled `line-N`) and, for CHG, its seeds (`shard-N/seed-S`: CHG is fitted
once per shard, and the shard index seeds its initial gates). Beside the scores
a shard keeps what they measured: each method's warning (a degenerate gating
fit, a gradient with no first-order signal) with the prompts it applies to, the
target rule each prompt resolved to and its number of scored tokens, and the
clean metric per prompt (the baseline). `Measured` gathers these over every
shard for the report. Scores are a deterministic function of (model, shard,
config, shard index) on every backend.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from headscope.errors import InputError
from headscope.experiments.gradients import GRADIENT_FLOOR
from headscope.experiments.metrics import MetricInfo
from headscope.experiments.scoring import (
    PER_PROMPT,
    SCORE_MEANING,
    MethodScores,
    ScoringPrompt,
    check_prompts,
    score_heads,
    token_count,
)
from headscope.models.loading import HeadscopeModel
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptItem


def scoring_prompt(item: PromptItem) -> ScoringPrompt:
    """A prompt file's line as `score_heads` takes it (labelled by its line)."""
    return ScoringPrompt(
        prompt=item.prompt,
        target=item.target,
        corrupted=item.corrupted,
        answer=item.answer,
        wrong=item.wrong,
        label=f"line {item.line}",
    )


def clean_text(item: PromptItem) -> str:
    return scoring_prompt(item).text


def check_inputs(items: Sequence[PromptItem], config: ReportConfig) -> None:
    """InputError when the metric or a method lacks a field it needs (naming
    the method, the field and the lines that lack it)."""
    check_prompts([scoring_prompt(item) for item in items], config.methods, config.metric)


@dataclass(frozen=True)
class ShardScores:
    """One shard's scores and what they measured.

    - `scores`: method → float64 `[unit, layer, head]` (higher = more important);
      `units`: method → its unit labels (`line-N` per prompt; `shard-N/seed-S` for CHG).
    - `warnings`: method → why its scores say nothing here (only methods with
      one); `warned`: method → the indices of the shard's prompts the warning
      applies to (every prompt for a CHG fit; the silent prompts for the gradient).
    - per prompt, in order: `prompt_targets` (the rule its target resolved to),
      `target_tokens` (how many tokens the metric scored) and `clean` (float64,
      the metric with every head on: the baseline)."""

    scores: dict[str, Tensor]
    units: dict[str, tuple[str, ...]]
    warnings: dict[str, str]
    warned: dict[str, tuple[int, ...]]
    prompt_targets: tuple[str, ...]
    target_tokens: tuple[int, ...]
    clean: Tensor


def score_shard(
    model: HeadscopeModel,
    items: Sequence[PromptItem],
    config: ReportConfig,
    *,
    shard_index: int = 0,
) -> ShardScores:
    """Scores of every requested method on one shard, float64 `[unit, layer,
    head]`, with their units, warnings, targets and clean metric."""
    if not items:
        raise InputError("a shard needs at least one prompt")
    result = score_heads(
        model,
        [scoring_prompt(item) for item in items],
        config.methods,
        config.metric,
        config.target,  # type: ignore[arg-type]
        chg_seeds=config.seeds,
        chg_steps=config.chg_steps,
        truncate=config.on_long == "truncate",
        seed=shard_index,
        group=f"shard-{shard_index}",
    )
    lines = tuple(f"line-{item.line}" for item in items)
    scores, units, warnings, warned = {}, {}, {}, {}
    for method in config.methods:
        scored = result.methods[method]
        scores[method] = scored.scores.to(torch.float64).contiguous()
        units[method] = lines if method in PER_PROMPT else tuple(scored.units)
        if scored.warning is not None:
            warnings[method] = scored.warning
            warned[method] = _warned_prompts(scored, len(items))
    return ShardScores(
        scores=scores,
        units=units,
        warnings=warnings,
        warned=warned,
        prompt_targets=tuple(result.prompt_targets),
        target_tokens=tuple(int(n) for n in result.target_tokens),
        clean=result.clean.detach().to("cpu", torch.float64).contiguous(),
    )


def _warned_prompts(scored: MethodScores, n_prompts: int) -> tuple[int, ...]:
    """The shard's prompts a method's warning applies to: for the gradient the
    prompts with no first-order signal (every |∂M/∂gate| below the floor, as
    `score_heads` decides it); every prompt otherwise (a CHG fit covers them all)."""
    if scored.method == "gradient" and scored.raw is not None:
        silent = scored.raw.flatten(1).amax(1) < GRADIENT_FLOOR
        return tuple(int(i) for i in torch.nonzero(silent).flatten().tolist())
    return tuple(range(n_prompts))


# -- what the report's scores measured ------------------------------------------------------------


@dataclass(frozen=True)
class MethodWarning:
    """One warning of a method, the shards that gave it and the prompt file's
    lines it applies to."""

    message: str
    shards: tuple[int, ...]
    lines: tuple[int, ...]


@dataclass(frozen=True)
class Measured:
    """What a report's scores measured, over every prompt (in prompt order):
    the metric, the target rule asked for (`target`) and, per prompt, its line,
    the rule it resolved to, its scored tokens and its clean metric (the
    baseline); and per method its warnings (only methods with one)."""

    metric: MetricInfo
    target: str
    lines: tuple[int, ...]
    prompt_targets: tuple[str, ...]
    target_tokens: tuple[int, ...]
    clean: tuple[float, ...]
    warnings: Mapping[str, tuple[MethodWarning, ...]]

    @property
    def resolved(self) -> dict[str, int]:
        """target rule → number of prompts that resolved to it (sorted by rule)."""
        return dict(sorted(Counter(self.prompt_targets).items()))

    @property
    def scored_tokens(self) -> int:
        return sum(self.target_tokens)

    @property
    def target_described(self) -> str:
        """E.g. "auto → continuation on 24 prompts, 215 scored tokens"."""
        rules = ", ".join(
            f"{rule} on {count} prompt{'s' if count != 1 else ''}"
            for rule, count in self.resolved.items()
        )
        return f"{self.target} → {rules}, {self.scored_tokens} scored tokens"

    def warned_lines(self, method: str) -> tuple[int, ...]:
        """The lines any of `method`'s warnings apply to, sorted."""
        return tuple(sorted({line for w in self.warnings.get(method, ()) for line in w.lines}))

    def void(self, method: str) -> bool:
        """Whether `method`'s warnings cover every prompt: its scores say nothing
        anywhere and must not be drawn as findings."""
        return bool(self.lines) and set(self.warned_lines(method)) >= set(self.lines)


def measured(
    config: ReportConfig,
    shards: Sequence[tuple[Sequence[PromptItem], ShardScores]],
    metric: MetricInfo,
) -> Measured:
    """`Measured` from every shard's prompts and scores, in shard order. A
    method's warnings with the same message are merged (their shards and lines
    joined)."""
    lines: list[int] = []
    targets: list[str] = []
    tokens: list[int] = []
    clean: list[float] = []
    warnings: dict[str, dict[str, tuple[list[int], list[int]]]] = {}
    for index, (items, scored) in enumerate(shards):
        lines.extend(item.line for item in items)
        targets.extend(scored.prompt_targets)
        tokens.extend(scored.target_tokens)
        clean.extend(float(v) for v in scored.clean.tolist())
        for method in config.methods:
            message = scored.warnings.get(method)
            if message is None:
                continue
            where = warnings.setdefault(method, {}).setdefault(message, ([], []))
            where[0].append(index)
            where[1].extend(items[i].line for i in scored.warned.get(method, ()))
    return Measured(
        metric=metric,
        target=config.target,
        lines=tuple(lines),
        prompt_targets=tuple(targets),
        target_tokens=tuple(tokens),
        clean=tuple(clean),
        warnings={
            method: tuple(
                MethodWarning(message, tuple(shards_), tuple(lines_))
                for message, (shards_, lines_) in by_message.items()
            )
            for method, by_message in warnings.items()
        },
    )


__all__ = [
    "PER_PROMPT",
    "SCORE_MEANING",
    "Measured",
    "MethodWarning",
    "ShardScores",
    "check_inputs",
    "clean_text",
    "measured",
    "score_shard",
    "scoring_prompt",
    "token_count",
]
