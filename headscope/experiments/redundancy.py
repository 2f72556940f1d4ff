"""Head redundancy: cluster heads by their attention maps, then check by
ablation whether a cluster's heads stand in for each other (docs/methods.md §2.12).

CHAI (Agarwal et al. 2024, "CHAI: Clustered Head Attention for Efficient LLM
Inference") clusters the heads of a layer whose attention scores correlate and
serves each cluster with one head. Attending alike does not prove doing the
same job, so `redundancy` also asks the model: for every cluster of two or more
heads, the metric with each member ablated alone and with the whole cluster
ablated (at z, zero or mean, `probes.batched` as in `ablation.pruning_curve`),
per prompt, with percentile-bootstrap intervals over prompts (§2.10).

Reading the check: heads that back each other up cost little alone and much
together (`excess`, the whole cluster's harm beyond its costliest member, is
large); heads that add up have `interaction` (whole − sum of singles) near 0;
negative interaction means the harms overlap (the metric saturates).

    result = redundancy(model, prompts)           # capture, cluster, ablate
    result.clusters.layers[1].clusters            # ((0, 3), (1, 2)) on toy-induction
    result.ablations[0].whole_interval()          # harm of ablating the cluster

Cost for P prompts: one captured forward (maps of every head, 4·L·H·P·N² bytes),
one clean forward, and ⌈P·S/batch_size⌉ forwards for the S ablation settings
(S = Σ over checked clusters of size + 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.analyses.clustering import ClusterMethod, HeadClusters, cluster_heads, visible_pairs
from headscope.analyses.uncertainty import Interval, bootstrap_interval
from headscope.errors import InputError
from headscope.experiments.ablation import clean_metric, reference_source
from headscope.experiments.metrics import MetricInfo, default_metric, resolve_metric
from headscope.experiments.scoring import (
    ScoringPrompt,
    check_options,
    deterministic,
    encode_prompt,
    prompt_metric,
)
from headscope.experiments.targets import TargetRule
from headscope.models.loading import HeadscopeModel
from headscope.probes.batched import Sharing, check_batch_size, evaluate_settings
from headscope.probes.capture import capture
from headscope.records.attention import AttentionRecord

REDUNDANCY_MODES: tuple[str, ...] = ("zero", "mean")
#: Map entries (prompt · layer · head · query · key, padded) a call holds at most by
#: default: 400 MB of float32 maps, plus their float64 features on the visible pairs.
MAX_MAP_ENTRIES = 100_000_000
#: What a harm means, for every place that shows one.
HARM_MEANING = "harm: how much worse the metric gets when the heads' z is ablated"


@dataclass(frozen=True)
class ClusterAblation:
    """One cluster's ablation check. `single[m, p]`: the metric on prompt p
    with member `heads[m]` ablated alone; `whole[p]`: with every member
    ablated; `clean[p]`: unablated; `sign` +1 when lower is better. Harms are
    `sign·(ablated − clean)`: positive means ablating hurt."""

    layer: int
    heads: tuple[int, ...]
    single: Float[Tensor, "member prompt"]
    whole: Float[Tensor, " prompt"]
    clean: Float[Tensor, " prompt"]
    sign: float

    @property
    def single_harm(self) -> Float[Tensor, "member prompt"]:
        return self.sign * (self.single - self.clean[None])

    @property
    def whole_harm(self) -> Float[Tensor, " prompt"]:
        return self.sign * (self.whole - self.clean)

    def single_interval(self, level: float = 0.95) -> Interval:
        """Each member's harm alone: mean over prompts `[member]` and its interval."""
        return bootstrap_interval(self.single_harm.T, level=level)

    def whole_interval(self, level: float = 0.95) -> Interval:
        """The whole cluster's harm, mean over prompts, and its interval."""
        return bootstrap_interval(self.whole_harm[:, None], level=level)

    def excess_interval(self, level: float = 0.95) -> Interval:
        """Whole-cluster harm minus the costliest member's harm, per prompt:
        what the members do for each other (large for backups)."""
        return bootstrap_interval(
            (self.whole_harm - self.single_harm.max(0).values)[:, None], level=level
        )

    def interaction_interval(self, level: float = 0.95) -> Interval:
        """Whole-cluster harm minus the sum of the members' harms, per prompt:
        0 when harms add, > 0 for backups, < 0 when they overlap."""
        return bootstrap_interval((self.whole_harm - self.single_harm.sum(0))[:, None], level=level)

    @property
    def name(self) -> str:
        return "{" + ", ".join(f"{self.layer}.{h}" for h in self.heads) + "}"


@dataclass(frozen=True)
class Redundancy:
    """What `redundancy` returns: the clustering (`analyses.clustering`), the
    ablation check of each cluster of at least `min_size` heads, and what the
    check measured: the metric, the target rule asked for, the rule each prompt
    resolved to with its scored tokens, the clean metric per prompt, the
    ablation mode, and the prompts' labels."""

    clusters: HeadClusters
    ablations: tuple[ClusterAblation, ...]
    metric: MetricInfo
    target: str
    prompts: tuple[str, ...]
    prompt_targets: tuple[str, ...]
    target_tokens: tuple[int, ...]
    clean: Float[Tensor, " prompt"]
    mode: str

    @property
    def described(self) -> str:
        """One line: the metric, which way is better, the tokens it scores, the ablation."""
        rules = ", ".join(sorted(set(self.prompt_targets)))
        return (
            f"{self.metric.name} ({self.metric.description}; {self.metric.better}), target "
            f"{self.target!r} → {rules}, {sum(self.target_tokens)} scored tokens over "
            f"{len(self.prompts)} prompts; {self.mode} ablation at z"
        )

    def ablation_of(self, layer: int, head: int) -> ClusterAblation | None:
        """The check of the cluster holding head (layer, head), if it was checked."""
        for item in self.ablations:
            if item.layer == layer and head in item.heads:
                return item
        return None


def capture_maps(
    model: HeadscopeModel, prompts: Sequence[ScoringPrompt | str]
) -> tuple[AttentionRecord, Tensor]:
    """The maps of every head over `prompts` (clean text, BOS as the model
    adds it) as a batched record, and the visible-pair mask `[prompt, query,
    key]` their correlation uses (causal or not, as the model is)."""
    items = [p if isinstance(p, ScoringPrompt) else ScoringPrompt(p) for p in prompts]
    if not items:
        raise InputError("no prompts given")
    rows = [
        encode_prompt(model, item, metric="loss", target=None, label=f"prompt {i}")
        for i, item in enumerate(items)
    ]
    batch = model.batch_from_ids([row.ids for row in rows])
    record = capture(model, batch)
    assert isinstance(record, AttentionRecord)
    return record, visible_pairs(batch.attention_mask, causal=model.spec.causal)


def redundancy(
    model: HeadscopeModel,
    prompts: Sequence[ScoringPrompt | str],
    *,
    method: ClusterMethod = "kmeans",
    k: int | None = None,
    metric: str | None = None,
    target: TargetRule = "auto",
    mode: str = "zero",
    min_size: int = 2,
    ablate: bool = True,
    batch_size: int = 32,
    seed: int = 0,
    max_map_entries: int = MAX_MAP_ENTRIES,
    progress: Callable[[int, int, str], None] | None = None,
) -> Redundancy:
    """Cluster every layer's heads by the correlation of their maps over
    `prompts` (`analyses.clustering.cluster_heads`: k-means at the elbow by
    default, or `method="hierarchical"`, `k` to fix the count) and, with
    `ablate`, check each cluster of at least `min_size` heads by ablation (each
    member alone, then all of them) at z with `mode` ("zero" or "mean").

    `metric` (default: the loss for a model with an LM head, else the
    embedding cosine) and `target` (which tokens the loss scores) mean what
    they mean for `score_heads`. Deterministic: one intra-op thread, seeded.
    InputError when the maps of every head over the (padded) prompts would
    exceed `max_map_entries` floats.
    """
    check_batch_size(batch_size)
    if mode not in REDUNDANCY_MODES:
        raise InputError(f"unknown ablation mode {mode!r}; choose from {REDUNDANCY_MODES}")
    if not isinstance(min_size, int) or min_size < 2:
        raise InputError(f"min_size must be an int >= 2, got {min_size!r}")
    name = metric or default_metric(model.spec.has_lm_head)
    _, info = check_options(model, ("ablation",), name, target)
    items = [p if isinstance(p, ScoringPrompt) else ScoringPrompt(p) for p in prompts]
    if not items:
        raise InputError("no prompts given")
    report = progress or (lambda done, total, label: None)
    rows = [
        encode_prompt(model, item, metric=info.name, target=target, label=f"prompt {i}")
        for i, item in enumerate(items)
    ]
    labels = tuple(item.label or f"prompt-{i}" for i, item in enumerate(items))
    batch = model.batch_from_ids([row.ids for row in rows])
    entries = batch.batch_size * batch.length**2 * model.spec.n_layers * model.spec.n_heads
    if entries > max_map_entries:
        raise InputError(
            f"clustering needs the maps of every head: {entries:,} values for {batch.batch_size} "
            f"prompts of up to {batch.length} tokens, over the limit of {max_map_entries:,}; "
            "use fewer or shorter prompts"
        )
    with deterministic(seed):
        report(0, 100, "capturing maps…")
        record = capture(model, batch)
        assert isinstance(record, AttentionRecord)
        mask = visible_pairs(batch.attention_mask, causal=model.spec.causal)
        report(20, 100, "clustering…")
        clusters = cluster_heads(record.pattern, mask, method=method, k=k, seed=seed)
        bound = resolve_metric(model, prompt_metric(info.name, rows, batch), batch)
        clean = clean_metric(model, batch, metric=bound, batch_size=batch_size)
        groups = [
            (layer.layer, cluster)
            for layer in clusters.layers
            for cluster in layer.clusters
            if len(cluster) >= min_size
        ]
        ablations: list[ClusterAblation] = []
        if ablate and groups:
            spec = model.spec
            settings = []
            for layer, heads in groups:
                for head in heads:
                    settings.append([(layer, head)])
                settings.append([(layer, head) for head in heads])
            amounts = torch.zeros(len(settings), spec.n_layers, spec.n_heads)
            for i, setting in enumerate(settings):
                for layer, head in setting:
                    amounts[i, layer, head] = 1
            generator = torch.Generator().manual_seed(seed)
            source = reference_source(model, batch, mode, None, len(settings), generator)  # type: ignore[arg-type]
            done = [0]
            total = max(1, -(-len(settings) * batch.batch_size // batch_size))

            def step() -> None:
                done[0] += 1
                report(30 + 70 * min(done[0], total) // total, 100, "ablating clusters…")

            values = evaluate_settings(
                model,
                batch,
                bound,
                amounts,
                source,
                batch_size=batch_size,
                sharing=Sharing(),
                on_step=step,
            )
            start = 0
            for layer, heads in groups:
                size = len(heads)
                ablations.append(
                    ClusterAblation(
                        layer=layer,
                        heads=heads,
                        single=values[start : start + size].clone(),
                        whole=values[start + size].clone(),
                        clean=clean.clone(),
                        sign=bound.sign,
                    )
                )
                start += size + 1
    report(100, 100, "done")
    return Redundancy(
        clusters=clusters,
        ablations=tuple(ablations),
        metric=info,
        target=target,
        prompts=labels,
        prompt_targets=tuple(row.rule for row in rows),
        target_tokens=tuple(sum(row.targets) for row in rows),
        clean=clean,
        mode=mode,
    )
