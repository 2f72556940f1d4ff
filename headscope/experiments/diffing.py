"""Model diffing: two models or checkpoints of one shape, head by head
(docs/methods.md §2.14).

    diff = diff_models(series.load(0), series.load(3000))
    diff.deltas["induction"]      # Interval: mean B − A per head, bootstrap over prompts
    diff.matching                 # [layer, head]: B's head matched to each of A's

Both models run on the same prompts (default `dynamics.repeat_prompts()`):
taxonomy score deltas and (with `importance`) ablation-importance deltas with
paired bootstrap intervals, taxonomy label changes, and per-layer Hungarian
matching of heads by attention-map correlation (`analyses.diffing`).
"""

from __future__ import annotations

from collections.abc import Sequence

from headscope.analyses.diffing import ModelDiff, map_similarity, match_heads, score_deltas
from headscope.errors import InputError
from headscope.experiments.dynamics import (
    DYNAMICS_CATEGORIES,
    CheckpointProfile,
    profile_model,
    repeat_prompts,
)
from headscope.models.loading import HeadscopeModel


def diff_profiles(a: CheckpointProfile, b: CheckpointProfile, *, seed: int = 0) -> ModelDiff:
    """The diff of two profiles measured on the same prompts."""
    if a.pattern.shape != b.pattern.shape or not bool((a.lengths == b.lengths).all()):
        raise InputError(
            "the two models must have the same shape (layers, heads) and tokenize the prompts "
            f"alike; maps {list(a.pattern.shape)} vs {list(b.pattern.shape)}"
        )
    values_a, values_b = dict(a.per_prompt), dict(b.per_prompt)
    if a.importance is not None and b.importance is not None:
        values_a["importance"], values_b["importance"] = a.importance, b.importance
    similarity = map_similarity(a.pattern, b.pattern, a.lengths, causal=a.causal)
    matching, matched = match_heads(similarity)
    return ModelDiff(
        name_a=a.name,
        name_b=b.name,
        prompts=int(a.lengths.shape[0]),
        deltas=score_deltas(values_a, values_b, seed=seed),
        scores_a=dict(a.taxonomy.scores),
        scores_b=dict(b.taxonomy.scores),
        labels_a=a.labels,
        labels_b=b.labels,
        similarity=similarity.float(),
        matching=matching,
        matched_similarity=matched.float(),
    )


def diff_models(
    model_a: HeadscopeModel,
    model_b: HeadscopeModel,
    prompts: Sequence[str] | None = None,
    *,
    importance: bool = True,
    categories: Sequence[str] = DYNAMICS_CATEGORIES,
    seed: int = 0,
) -> ModelDiff:
    """Model B against model A on the same `prompts` (default
    `repeat_prompts()`): see the module docstring. The models must have the
    same number of layers and heads and the same tokenizer. Cost: two
    `profile_model` runs, plus `map_similarity` (two `[head, entries]`
    matrices per layer)."""
    spec_a, spec_b = model_a.spec, model_b.spec
    if (spec_a.n_layers, spec_a.n_heads) != (spec_b.n_layers, spec_b.n_heads):
        raise InputError(
            f"models differ in shape: {spec_a.name} has {spec_a.n_layers}×{spec_a.n_heads} "
            f"heads, {spec_b.name} {spec_b.n_layers}×{spec_b.n_heads}"
        )
    texts = list(prompts) if prompts is not None else list(repeat_prompts())
    use_importance = importance and spec_a.has_lm_head and spec_b.has_lm_head
    a = profile_model(model_a, texts, importance=use_importance, categories=categories)
    b = profile_model(model_b, texts, importance=use_importance, categories=categories)
    return diff_profiles(a, b, seed=seed)
