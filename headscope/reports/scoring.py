"""Head scores of one report shard, computed with the analyses of `headscope.analyses.heads`.

    score_shard(model, items, config, shard_index=0) -> {method: Tensor [unit, layer, head]}

Each score is oriented so that higher means more important:

- `ablation`: zero ablation at z (METHODS.md §2), one head at a time; the harm
  done to the metric: metric(ablated) − metric(clean) for a loss,
  metric(clean) − metric(ablated) for higher-is-better metrics. One row per prompt.
- `gradient`: head importance of Michel et al. 2019, |∂L_x/∂ξ_h| for each
  prompt x, normalised per layer (L2 over the layer's heads) within each prompt,
  so that every prompt weighs the same in the mean. One row per prompt.
- `chg`: Causal Head Gating facilitation G⁻ (Nam et al. 2025), fitted once per
  shard over its prompts with `config.seeds` seeds (seeded by the shard index) and
  `config.chg_steps` Adam steps per phase; the mean over seeds. One row per shard.
- `attribution`: attribution patching (Nanda 2023; Syed et al. 2023) from the
  `corrupted` prompt towards the clean one, as the fraction of the clean − corrupted
  metric gap a head restores, to first order. One row per prompt.

The clean text of a prompt is `prompt + target`. Metrics (`config.metric`):
"loss" scores the target tokens (every token when a line has no target);
"logit-diff" is logit(answer) − logit(wrong) at the last prompt token (the
first token of each string); "embedding" is the cosine to the unablated
sentence embedding. Attribution with the loss scores the clean tokens on the
corrupted run, so `corrupted` must tokenize to as many tokens as the clean text.

Scores are a deterministic function of (model, shard, config, shard index):
the shard runs with one intra-op thread (the Ray actors do the same), so the
float reductions happen in the same order on every run and backend.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from headscope.analyses.heads import (
    ablation_scores,
    attribution_patching,
    causal_head_gating,
    gradient_importance,
)
from headscope.analyses.metrics import (
    Metric,
    embedding_cosine,
    logit_difference,
    next_token_loss,
)
from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel
from headscope.models.tokens import TokenBatch
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptItem

#: Methods scored once per prompt; the others (CHG) once per shard.
PER_PROMPT = ("ablation", "gradient", "attribution")

#: What a score of each method means (written into report.json).
SCORE_MEANING = {
    "ablation": "harm to the metric when the head's z is zeroed (higher: more important)",
    "gradient": "Michel et al. 2019 |dL/d gate|, normalised per layer within each prompt",
    "chg": "Causal Head Gating facilitation G- (mean over seeds), fitted per shard",
    "attribution": "fraction of the clean - corrupted metric gap restored (attribution patching)",
}

#: The report's metric names and the analyses' names for them.
ANALYSIS_METRIC = {"loss": "loss", "logit-diff": "logit_diff", "embedding": "embedding_cosine"}

_ABLATION_MODE = "zero"
_CHG_LAMBDA = 1.0


def metric_direction(metric: str) -> str:
    """ "minimize" for the loss, "maximize" for logit difference and embedding cosine."""
    return "minimize" if metric == "loss" else "maximize"


# -- input checks -------------------------------------------------------------------------------


def _lines(items: Sequence[PromptItem]) -> str:
    numbers = [str(item.line) for item in items]
    return ", ".join(numbers[:10]) + (" ..." if len(numbers) > 10 else "")


def check_inputs(items: Sequence[PromptItem], config: ReportConfig) -> None:
    """Raise InputError when the metric or a method lacks a field it needs
    (naming the method, the field and the lines that lack it)."""
    if config.metric == "logit-diff":
        for field in ("answer", "wrong"):
            missing = [item for item in items if not getattr(item, field)]
            if missing:
                raise InputError(
                    f"metric 'logit-diff' (used by every method: {', '.join(config.methods)}) "
                    f"needs {'an' if field == 'answer' else 'a'} '{field}' string on every "
                    f"prompt; {len(missing)} prompt(s) have "
                    f"none (lines {_lines(missing)})"
                )
    if "attribution" in config.methods:
        missing = [item for item in items if not item.corrupted]
        if missing:
            others = ",".join(m for m in config.methods if m != "attribution") or "ablation"
            raise InputError(
                f"method 'attribution' needs a 'corrupted' prompt on every line (.jsonl); "
                f"{len(missing)} prompt(s) have none (lines {_lines(missing)}); add them or "
                f"run --methods {others}"
            )


# -- tokenization -------------------------------------------------------------------------------


def clean_text(item: PromptItem) -> str:
    return item.prompt + (item.target or "")


def token_count(model: HeadscopeModel, text: str) -> int:
    """Tokens of `text` as the model sees it (BOS included where the model prepends one)."""
    return model.tokenize(text, max_length=sys.maxsize).lengths[0]


def _encode(model: HeadscopeModel, text: str) -> list[int]:
    return model.tokenize(text, max_length=sys.maxsize).ids[0].tolist()


def _kept_positions(model: HeadscopeModel, ids: list[int]) -> list[int]:
    """Positions of a row that fit the context: all of them, or for a row that
    is too long (`on_long="truncate"`) a prepended BOS and the last tokens
    (targets and answers sit at the end)."""
    limit = model.spec.n_ctx
    if len(ids) <= limit:
        return list(range(len(ids)))
    bos = model.spec.bos_token_id
    if model.spec.prepends_bos and bos is not None and ids[0] == bos:
        return [0, *range(len(ids) - limit + 1, len(ids))]
    return list(range(len(ids) - limit, len(ids)))


@dataclass(frozen=True)
class _Row:
    """One prompt, tokenized: clean ids, which of them are targets (None: all),
    the corrupted ids, and the answer / wrong token ids."""

    line: int
    ids: list[int]
    targets: list[bool] | None
    corrupted: list[int] | None
    answer: int | None
    wrong: int | None


def _first_token(model: HeadscopeModel, text: str, field: str, line: int) -> int:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"line {line}: '{field}' {text!r} tokenizes to nothing")
    return int(ids[0])


def _encode_item(model: HeadscopeModel, item: PromptItem, config: ReportConfig) -> _Row:
    full = _encode(model, clean_text(item))
    targets = None
    if item.target:
        prompt_ids = _encode(model, item.prompt)
        common = 0
        for a, b in zip(prompt_ids, full, strict=False):
            if a != b:
                break
            common += 1
        targets = [position >= common for position in range(len(full))]
    keep = _kept_positions(model, full)
    ids = [full[i] for i in keep]
    if targets is not None:
        targets = [targets[i] for i in keep]
        if not any(targets[1:]):
            raise InputError(f"line {item.line}: truncation left no target token")
    corrupted = None
    if item.corrupted is not None and "attribution" in config.methods:
        whole = _encode(model, item.corrupted)
        corrupted = [whole[i] for i in _kept_positions(model, whole)]
        if config.metric == "loss" and len(corrupted) != len(ids):
            raise InputError(
                f"line {item.line}: 'corrupted' has {len(corrupted)} tokens and prompt + target "
                f"{len(ids)}; attribution patching needs equal token lengths"
            )
    answer = wrong = None
    if config.metric == "logit-diff":
        answer = _first_token(model, item.answer or "", "answer", item.line)
        wrong = _first_token(model, item.wrong or "", "wrong", item.line)
    return _Row(item.line, ids, targets, corrupted, answer, wrong)


def _batch(model: HeadscopeModel, rows: Sequence[list[int]]) -> TokenBatch:
    return model.batch_from_ids([list(row) for row in rows])


def encode_prompts(
    model: HeadscopeModel, items: Sequence[PromptItem], config: ReportConfig
) -> tuple[TokenBatch, list[_Row]]:
    """The clean texts of `items` as one right-padded batch (truncated as
    `on_long="truncate"` does), and each prompt's tokenized companions."""
    rows = [_encode_item(model, item, config) for item in items]
    return _batch(model, [row.ids for row in rows]), rows


def prompt_metric(config: ReportConfig, rows: Sequence[_Row], batch: TokenBatch) -> Metric:
    """The report's metric with the per-prompt data of `rows`, padded like `batch`."""
    if config.metric == "loss":
        if all(row.targets is None for row in rows):
            return next_token_loss()
        targets = torch.zeros(batch.ids.shape, dtype=torch.bool)
        for i, row in enumerate(rows):
            marks = row.targets if row.targets is not None else [True] * len(row.ids)
            targets[i, : len(marks)] = torch.tensor(marks, dtype=torch.bool)
        return next_token_loss(targets)
    if config.metric == "logit-diff":
        return logit_difference([row.answer for row in rows], [row.wrong for row in rows])
    return embedding_cosine()


def _attribution_metric(config: ReportConfig, row: _Row, batch: TokenBatch) -> Metric:
    metric = prompt_metric(config, [row], batch)
    if config.metric != "loss":
        return metric
    # The corrupted run is scored on the clean tokens (METHODS.md §2, activation patching).
    return next_token_loss(metric.per_prompt.get("targets"), labels=batch.ids)


# -- scoring ------------------------------------------------------------------------------------


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread while scoring (restored afterwards), as in the Ray actors."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def score_shard(
    model: HeadscopeModel,
    items: Sequence[PromptItem],
    config: ReportConfig,
    *,
    shard_index: int = 0,
) -> dict[str, Tensor]:
    """Scores of every requested method on one shard, float64 `[unit, layer, head]`
    (units: the shard's prompts, in order; one unit for `chg`). See the module
    docstring for what each score means. Cost per shard of P prompts and H heads
    in all: ablation ⌈P·H/16⌉ forwards; gradient P forward+backward passes;
    attribution 2P forwards and P backwards; CHG 2·chg_steps forward+backward
    passes over 2·seeds·P sequences at most."""
    if not items:
        raise InputError("a shard needs at least one prompt")
    check_inputs(items, config)
    with single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(shard_index)
        clean, rows = encode_prompts(model, items, config)
        metric = prompt_metric(config, rows, clean)
        sign = -1.0 if metric_direction(config.metric) == "maximize" else 1.0
        scores: dict[str, Tensor] = {}
        for method in config.methods:
            if method == "ablation":
                effect = ablation_scores(
                    model, clean, metric=metric, mode=_ABLATION_MODE, per_prompt=True
                )
                scores[method] = sign * effect
            elif method == "gradient":
                scores[method] = torch.stack(
                    [_gradient(model, config, row) for row in rows]
                ).double()
            elif method == "chg":
                result = causal_head_gating(
                    model,
                    clean,
                    metric=metric,
                    seeds=config.seeds,
                    steps=config.chg_steps,
                    lam=_CHG_LAMBDA,
                    seed=shard_index,
                    progress=False,
                )
                scores[method] = result.facilitation[None].double()
            elif method == "attribution":
                scores[method] = torch.stack(
                    [_attribution(model, config, row) for row in rows]
                ).double()
            else:  # ReportConfig refuses unknown methods; keep the failure loud anyway
                raise InputError(f"unknown method {method!r}")
    return {name: value.detach().cpu().contiguous() for name, value in scores.items()}


def _gradient(model: HeadscopeModel, config: ReportConfig, row: _Row) -> Tensor:
    batch = _batch(model, [row.ids])
    return gradient_importance(model, batch, metric=prompt_metric(config, [row], batch))


def _attribution(model: HeadscopeModel, config: ReportConfig, row: _Row) -> Tensor:
    assert row.corrupted is not None  # check_inputs
    clean = _batch(model, [row.ids])
    corrupted = _batch(model, [row.corrupted])
    try:
        return attribution_patching(
            model, clean, corrupted, _attribution_metric(config, row, clean)
        )
    except InputError as error:
        raise InputError(f"attribution on line {row.line}: {error}") from None


__all__ = [
    "ANALYSIS_METRIC",
    "PER_PROMPT",
    "SCORE_MEANING",
    "check_inputs",
    "clean_text",
    "encode_prompts",
    "metric_direction",
    "prompt_metric",
    "score_shard",
    "single_thread",
    "token_count",
]
