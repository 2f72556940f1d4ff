"""Attention captures and gated runs for the layers above experiments (the
dashboard, reports, notebooks), which never touch hooks themselves.

- `capture`: `headscope.probes.capture.capture`, re-exported here as the
  experiment layer's door to attention records.
- `gated_run`: one prompt captured and run with gates on every head's z
  (Michel et al. 2019's ξ; `probes.interventions.gate_heads`): its maps, its
  logits or sentence embedding, and its next-token loss on the tokens of the
  "auto" target rule (`experiments.targets`), with the rule and its count.
- `sentence_embedding`: the mean-pooled sentence embedding, optionally gated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.experiments.metrics import next_token_loss, resolve_metric
from headscope.experiments.targets import TARGET_RULES, resolve_targets
from headscope.models.loading import HeadscopeModel
from headscope.models.tokens import TokenBatch
from headscope.probes.capture import capture
from headscope.probes.interventions import gate_heads
from headscope.probes.run import run


@dataclass(frozen=True)
class GatedRun:
    """One prompt under gates: `pattern` `[layer, head, query, key]`, `logits`
    `[position, vocab]` (None without a trained LM head), `embedding`
    `[d_model]` (encoders), `loss` the mean next-token loss (nats) over the
    tokens of the "auto" target rule (None without an LM head or with one
    token): `target_rule` the rule that applied ("repeats": the tokens a
    copying circuit can predict, else "all": every token after the first),
    `target_tokens` how many tokens it scored."""

    pattern: Float[Tensor, "layer head query key"]
    logits: Float[Tensor, "position vocab"] | None
    embedding: Float[Tensor, " d_model"] | None
    loss: float | None
    target_rule: str | None = None
    target_tokens: int = 0

    @property
    def target_meaning(self) -> str | None:
        """What the scored tokens are, in words (None without a loss)."""
        return None if self.target_rule is None else TARGET_RULES[self.target_rule]


@torch.no_grad()
def gated_run(
    model: HeadscopeModel, batch: TokenBatch, gates: Float[Tensor, "layer head"]
) -> GatedRun:
    """Capture and outputs of a one-prompt `batch` with `gates` on z (1 keeps a
    head, 0 ablates it). The loss scores the "auto" target tokens: on a
    repeated sequence the second copy, not the unpredictable first one.
    Memory: the maps of every head, L·H·N² floats."""
    lm = model.spec.has_lm_head
    metric, rule, count = None, None, 0
    if lm and batch.lengths[0] > 1:
        ids = batch.ids[0, : batch.lengths[0]].tolist()
        rule, marks = resolve_targets("auto", ids, None)
        targets = torch.zeros(batch.ids.shape, dtype=torch.bool)
        targets[0, : len(marks)] = torch.tensor(marks)
        count = sum(marks)
        metric = resolve_metric(model, next_token_loss(targets), batch)
    with gate_heads(model, gates):
        record = capture(model, batch)
        output = run(model, batch, embedding=not lm).output
        assert output is not None
        loss = None if metric is None else float(metric(output, batch)[0])
    return GatedRun(
        pattern=record.pattern,
        logits=output.logits[0] if lm else None,
        embedding=output.embedding[0] if output.embedding is not None else None,
        loss=loss,
        target_rule=rule,
        target_tokens=count,
    )


@torch.no_grad()
def sentence_embedding(
    model: HeadscopeModel, batch: TokenBatch, gates: Float[Tensor, "layer head"] | None = None
) -> Float[Tensor, " d_model"]:
    """The mean-pooled sentence embedding of a one-prompt batch, with `gates` on z if given."""
    if gates is None:
        output = run(model, batch, embedding=True).output
    else:
        with gate_heads(model, gates):
            output = run(model, batch, embedding=True).output
    assert output is not None and output.embedding is not None
    return output.embedding[0]


__all__ = ["GatedRun", "capture", "gated_run", "sentence_embedding"]
