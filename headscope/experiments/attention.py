"""Attention captures and gated runs for the layers above experiments (the
dashboard, reports, notebooks), which never touch hooks themselves.

- `capture`: `headscope.probes.capture.capture`, re-exported here as the
  experiment layer's door to attention records.
- `gated_run`: one prompt captured and run with gates on every head's z
  (Michel et al. 2019's ξ; `probes.interventions.gate_heads`): its maps, its
  logits or sentence embedding, and its next-token loss on the tokens of the
  "auto" target rule (`experiments.targets`), with the rule and its count.
- `sentence_embedding`: the mean-pooled sentence embedding, optionally gated.
- `capture_to_store`: a long prompt's statistics of every head, with the full
  maps of chosen heads (and every head's top-k keys) written to a
  `records.store.MapStore` on disk instead of memory (the dashboard's long
  context page).
- `value_norms`, `value_weighted_attention`: value-weighted attention
  (Kobayashi et al. 2020), α_{h,q,k}·‖v_{h,k}·W_O^h‖, read through `probes.run`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError
from headscope.experiments.metrics import next_token_loss, resolve_metric
from headscope.experiments.targets import TARGET_RULES, resolve_targets
from headscope.models.loading import HeadscopeModel
from headscope.models.tokens import TokenBatch
from headscope.probes.capture import capture
from headscope.probes.interventions import gate_heads
from headscope.probes.run import run
from headscope.probes.sites import Site
from headscope.records.attention import AttentionRecord
from headscope.records.stats import HeadStats
from headscope.records.store import MapStore


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


@torch.no_grad()
def capture_to_store(
    model: HeadscopeModel,
    inputs: str | TokenBatch,
    store: str | os.PathLike,
    *,
    heads: Iterable[tuple[int, int]] = (),
    top_k: int | None = None,
    progress: Callable[[int, int], object] | None = None,
    store_meta: dict | None = None,
    max_memory: int | str | None = None,
) -> tuple[HeadStats, MapStore]:
    """One prompt's `HeadStats` (every head, streamed per query tile) and the
    finished `MapStore` at `store` (a new folder) holding the full maps and
    pyramids of `heads` ((layer, head) pairs; none: statistics and top-k only)
    and, with `top_k`, every head's top keys per query. `progress(layer, total)`
    after each layer. Memory: the statistics, one layer's stored maps in the
    kernel, and the store writer's slabs; the maps are on disk only."""
    pairs = sorted({(int(layer), int(head)) for layer, head in heads})
    stats = capture(
        model,
        inputs,
        mode="stats",
        heads=pairs or None,
        top_k=top_k,
        store=store,
        store_meta=store_meta,
        progress=progress,
        max_memory=max_memory,
    )
    assert isinstance(stats, HeadStats)
    return stats, MapStore.open(store)


@torch.no_grad()
def value_norms(model: HeadscopeModel, batch: TokenBatch) -> Float[Tensor, "layer head key"]:
    """‖v_{h,k}·W_O^h‖ for every layer, head and position of a one-prompt `batch`:
    the norm of the vector that key k's value writes into the residual stream
    through head h (Kobayashi et al. 2020, "Attention is Not Only a Weight"). v
    is read at each layer's value site (`Site(layer, "v")`, bias b_V included;
    b_O, shared by the heads, is left out); grouped-query models read each query
    head's kv head. One forward, stopped after the last layer's values (no
    logits). Float32 on the CPU. Memory: every layer's values, L·N·kv·d_head."""
    if batch.ids.shape[0] != 1:
        raise InputError(f"value_norms takes one prompt, got {batch.ids.shape[0]}")
    n_layers, n_heads = model.spec.n_layers, model.spec.n_heads
    sites = [Site(layer, "v") for layer in range(n_layers)]
    values = run(model, batch, read=sites, stop_after=sites[-1]).activations
    W_O = model.bridge.W_O.detach()  # noqa: N806 ([layer, head, d_head, d_model])
    norms = torch.empty(n_layers, n_heads, batch.ids.shape[1])
    for layer, site in enumerate(sites):
        v = values[site][0].double()  # [position, kv_head, d_head]
        n_kv = v.shape[1]
        if n_heads % n_kv:
            raise InputError(f"cannot expand {n_kv} key/value heads to {n_heads} query heads")
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        w_o = W_O[layer].to(device=v.device, dtype=torch.float64)
        gram = w_o @ w_o.transpose(-1, -2)  # [head, d_head, d_head]: ‖x·W_O‖² = x·G·xᵀ
        squared = torch.einsum("phd,hde,phe->hp", v, gram, v)
        norms[layer] = squared.clamp_min(0).sqrt().float().cpu()
    return norms


def weight_by_value_norms(
    pattern: Float[Tensor, "... query key"],
    norms: Float[Tensor, "... key"],
    *,
    renormalize: bool = True,
) -> Float[Tensor, "... query key"]:
    """α_{q,k}·‖v_k·W_O‖ (`norms` broadcast over the query axis). `renormalize`:
    each query row divided by its sum, so rows sum to 1 like attention (the
    share of the row's weighted mass; rows of mass 0 stay 0); otherwise the raw
    products, in units of the residual stream."""
    weighted = pattern.float() * norms.float().unsqueeze(-2)
    if not renormalize:
        return weighted
    total = weighted.sum(-1, keepdim=True)
    return torch.where(total > 0, weighted / total.clamp_min(torch.finfo(torch.float32).tiny), 0)


@torch.no_grad()
def value_weighted_attention(
    model: HeadscopeModel,
    inputs: str | TokenBatch,
    *,
    pattern: Float[Tensor, "layer head query key"] | None = None,
    renormalize: bool = True,
) -> Float[Tensor, "layer head query key"]:
    """Value-weighted attention of every head on one prompt (Kobayashi et al.
    2020): α_{h,q,k}·‖v_{h,k}·W_O^h‖ (`value_norms`), each query row
    renormalized to sum 1 by default (`weight_by_value_norms`). `pattern`: the
    prompt's maps when already captured (else captured here). Memory: one more
    L·H·N² float32 tensor beside the maps."""
    batch = inputs if isinstance(inputs, TokenBatch) else model.tokenize(inputs)
    if pattern is None:
        record = capture(model, batch)
        assert isinstance(record, AttentionRecord)
        pattern = record.pattern
    norms = value_norms(model, batch)
    if pattern.shape[:2] != norms.shape[:2] or pattern.shape[-1] != norms.shape[-1]:
        raise InputError(
            f"pattern {tuple(pattern.shape)} does not match the prompt's value norms "
            f"{tuple(norms.shape)}"
        )
    return weight_by_value_norms(pattern, norms, renormalize=renormalize)


__all__ = [
    "GatedRun",
    "capture",
    "capture_to_store",
    "gated_run",
    "sentence_embedding",
    "value_norms",
    "value_weighted_attention",
    "weight_by_value_norms",
]
