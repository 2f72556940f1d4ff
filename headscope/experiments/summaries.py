"""Per-prompt attention summaries for reports: each prompt captured once, then
the pure analyses of `headscope.analyses` on its maps.

For every prompt: the head-taxonomy scores and their support
(`taxonomy.head_taxonomy`), the sink scores α_k of every key
(`position.sink_scores` of the record, so with the model's own causality, which
the summary keeps for the sink decision's baseline), and the cumulative influence
by distance of the model's head-averaged maps and of its mask alone
(`position.cumulative_influence`, Wu et al. 2025; docs/methods.md §3.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from headscope.analyses import position, taxonomy
from headscope.experiments.scoring import ScoringPrompt, deterministic, encode_prompt
from headscope.models.loading import HeadscopeModel
from headscope.probes.capture import capture


@dataclass(frozen=True)
class PromptSummary:
    """One prompt: `taxonomy` category → `[layer, head]` (NaN where undefined),
    `sinks` α_k `[layer, head, key]`, `influence` and `influence_baseline`
    `[layer, distance]` (model and mask alone), its `tokens` and whether BOS was
    prepended; `support` category → `[layer, head]` number of queries defining the
    taxonomy score (empty: unknown) and `causal`, the model's mask, which gives the
    sinks' content-free baseline (`position.sink_baseline`; None: unknown)."""

    taxonomy: dict[str, np.ndarray]
    sinks: np.ndarray
    influence: np.ndarray
    influence_baseline: np.ndarray
    tokens: tuple[str, ...]
    bos_prepended: bool
    support: dict[str, np.ndarray] = field(default_factory=dict)
    causal: bool | None = None


def summarize_prompts(
    model: HeadscopeModel,
    prompts: Sequence[ScoringPrompt],
    *,
    truncate: bool = False,
    chunk: int = 8,
) -> list[PromptSummary]:
    """A `PromptSummary` per prompt (the clean text, prompt + target, as
    `score_heads` tokenizes it). One captured forward per `chunk` prompts;
    deterministic (one intra-op thread). Memory: the maps of one chunk,
    4·layers·heads·chunk·N² bytes."""
    spec = model.spec
    rows = [
        encode_prompt(
            model,
            item,
            metric="embedding_cosine",
            target="all",
            truncate=truncate,
            label=f"prompt {i}",
        )
        for i, item in enumerate(prompts)
    ]
    out: list[PromptSummary] = []
    mask_kind = "causal" if spec.causal else "bidirectional"
    with deterministic(0), torch.no_grad():
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            batch = model.batch_from_ids([row.ids for row in part])
            record = capture(model, batch)
            sinks = position.sink_scores(record)  # [batch, layer, head, key]
            if sinks.dim() == 3:  # a one-prompt record
                sinks = sinks[None]
            for i in range(batch.batch_size):
                one = record.prompt(i)
                n = batch.lengths[i]
                mask = position.mask_attention(mask_kind, n)
                evidence = taxonomy.head_taxonomy(one)
                out.append(
                    PromptSummary(
                        taxonomy={
                            name: score.double().numpy() for name, score in evidence.scores.items()
                        },
                        sinks=sinks[i, :, :, :n].numpy(),
                        influence=position.influence_by_distance(
                            position.cumulative_influence(one.pattern)
                        ).numpy(),
                        influence_baseline=position.influence_by_distance(
                            position.cumulative_influence(mask, n_layers=spec.n_layers)
                        ).numpy(),
                        tokens=tuple(batch.tokens[i]),
                        bos_prepended=batch.prepended_bos,
                        support={name: count.numpy() for name, count in evidence.support.items()},
                        causal=bool(spec.causal),
                    )
                )
    return out
