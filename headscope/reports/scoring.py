"""Head scores of one report shard: `headscope.experiments.score_heads` on the
shard's prompts, the same call the dashboard's Importance page makes.

    score_shard(model, items, config, shard_index=0) -> {method: Tensor [unit, layer, head]}

What each score means and how it is oriented (higher = more important) is
documented in `headscope.experiments.scoring`. Units are the shard's prompts
(labelled `line-N`) and, for CHG, the shard itself (`shard-N`), which also
seeds CHG's initial gates. Scores are a deterministic function of (model,
shard, config, shard index) on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from headscope.errors import InputError
from headscope.experiments.scoring import (
    PER_PROMPT,
    SCORE_MEANING,
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


def score_shard(
    model: HeadscopeModel,
    items: Sequence[PromptItem],
    config: ReportConfig,
    *,
    shard_index: int = 0,
) -> dict[str, Tensor]:
    """Scores of every requested method on one shard, float64 `[unit, layer, head]`."""
    if not items:
        raise InputError("a shard needs at least one prompt")
    scores = score_heads(
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
    return {method: scores.methods[method].scores for method in config.methods}


__all__ = [
    "PER_PROMPT",
    "SCORE_MEANING",
    "check_inputs",
    "clean_text",
    "score_shard",
    "scoring_prompt",
    "token_count",
]
