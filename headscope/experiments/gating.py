"""Causal Head Gating (Nam et al. 2025, "Causal Head Gating: A Framework for
Interpreting Roles of Attention Heads in Transformers"; docs/methods.md §2.4):
learned gates G = σ(θ) on each head's z, fitted with a regulariser pushing
them up (G⁺) or down (G⁻), and the contrastive variant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.experiments.inputs import Prompts, as_batch, check_fit_args
from headscope.experiments.metrics import Metric, MetricLike, resolve_metric
from headscope.experiments.progress import ProgressCallback, Tracker, tracking
from headscope.models.loading import HeadscopeModel
from headscope.models.tokens import TokenBatch
from headscope.probes.batched import Source, clean_values, evaluate_settings, prompt_chunks
from headscope.probes.interventions import gate_heads
from headscope.probes.run import run

Role = Literal["facilitating", "interfering", "irrelevant", "ambiguous", "mixed"]
_CLIP = 4.0  # CHG clips θ to [−4, 4] in the regulariser: σ(4) ≈ 0.982


@dataclass(frozen=True)
class CHGResult:
    """Causal Head Gating fits (Nam et al. 2025), one per seed.

    - `g_fit`: gates fitted with λ = 0 from G ~ U(0, 1) `[seed, layer, head]`.
    - `g_plus`: refit from `g_fit` with λ > 0 (gates pushed up): the heads that
      remain low hurt the metric when kept (interfering).
    - `g_minus`: refit with λ < 0 (gates pushed down): the heads that remain
      high are needed (facilitating).
    - Scores per seed: facilitation = G⁻, interference = 1 − G⁺,
      irrelevance = G⁺·(1 − G⁻); the properties without `_per_seed` are their
      means over seeds (irrelevance is averaged after the product).
    - `seed_roles[seed][layer][head]`, with `threshold` (0.5 by default):
      "facilitating" (G⁺ ≥ t and G⁻ ≥ t), "interfering" (G⁺ < t and G⁻ < t),
      "irrelevant" (G⁺ ≥ t, G⁻ < t), "ambiguous" (G⁺ < t ≤ G⁻, not expected).
    - `roles[layer][head]`: the role a strict majority of seeds gives, else "mixed".
    - `objective`: the fitted objective (metric to minimize, without the
      regulariser) at the last step, `[phase, seed]` for phases (fit, plus, minus);
      `clean_objective`: the same objective with every gate at 1 (the baseline).
    - `warning`: None for an informative fit; otherwise why the fit says
      nothing (see `diagnose`), and then `roles` must not be shown as findings.
    """

    g_fit: Float[Tensor, "seed layer head"]
    g_plus: Float[Tensor, "seed layer head"]
    g_minus: Float[Tensor, "seed layer head"]
    lam: float
    threshold: float
    metric: str
    seed_roles: tuple[tuple[tuple[Role, ...], ...], ...]
    roles: tuple[tuple[Role, ...], ...]
    objective: Float[Tensor, "phase seed"] = field(repr=False)
    clean_objective: float | None = None
    warning: str | None = None

    @property
    def degenerate(self) -> bool:
        return self.warning is not None

    @property
    def facilitation_per_seed(self) -> Float[Tensor, "seed layer head"]:
        return self.g_minus

    @property
    def interference_per_seed(self) -> Float[Tensor, "seed layer head"]:
        return 1 - self.g_plus

    @property
    def irrelevance_per_seed(self) -> Float[Tensor, "seed layer head"]:
        return self.g_plus * (1 - self.g_minus)

    @property
    def facilitation(self) -> Float[Tensor, "layer head"]:
        return self.facilitation_per_seed.mean(0)

    @property
    def interference(self) -> Float[Tensor, "layer head"]:
        return self.interference_per_seed.mean(0)

    @property
    def irrelevance(self) -> Float[Tensor, "layer head"]:
        return self.irrelevance_per_seed.mean(0)


@dataclass(frozen=True)
class ContrastiveResult:
    """Contrastive Causal Head Gating: one gate set per seed that keeps the
    retain metric good and makes the forget metric bad (Nam et al. 2025).
    Heads with low gates are needed for the forget set but not the retain set.
    `retain_value`, `forget_value`: each metric (mean over its prompts) with the
    fitted gates, `[seed]`; `clean_retain`, `clean_forget`: without gates."""

    gates: Float[Tensor, "seed layer head"]
    lam: float
    retain_value: Float[Tensor, " seed"]
    forget_value: Float[Tensor, " seed"]
    clean_retain: float
    clean_forget: float

    @property
    def mean_gates(self) -> Float[Tensor, "layer head"]:
        return self.gates.mean(0)


@dataclass(frozen=True)
class _Term:
    """One part of a gate-fitting objective: weight · mean over prompts of the metric objective."""

    batch: TokenBatch
    metric: Metric
    weight: float


def _initial_theta(
    seeds: int, n_layers: int, n_heads: int, seed: int
) -> Float[Tensor, "seed layer head"]:
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(seeds, n_layers, n_heads, generator=generator, dtype=torch.float64)
    return torch.logit(uniform.clamp(1e-4, 1 - 1e-4)).float()


def _fit_gates(
    model: HeadscopeModel,
    terms: Sequence[_Term],
    theta: Float[Tensor, "set layer head"],
    lams: Float[Tensor, " set"],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    tracker: Tracker,
) -> tuple[Tensor, Tensor]:
    """Adam on θ (all gate sets at once: Adam is elementwise, so this equals
    one optimiser per set). Loss per set: Σ_terms weight·mean_prompts objective
    − λ·mean(clip(θ, −4, 4)); the sets' losses are summed. Returns (θ, the
    last step's objective per set, without the regulariser)."""
    theta = theta.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    n_sets = theta.shape[0]
    last = torch.zeros(n_sets, dtype=torch.float64)
    for _ in range(steps):
        gradient = torch.zeros_like(theta)
        last = torch.zeros(n_sets, dtype=torch.float64)
        for term in terms:
            size = term.batch.batch_size
            per_forward = max(term.metric.group, batch_size // n_sets)
            for rows in prompt_chunks(size, per_forward, term.metric.group):
                prompt_rows = rows.repeat(n_sets)
                tiled = term.batch.select(prompt_rows)
                with torch.enable_grad():
                    gates = torch.sigmoid(theta).repeat_interleave(len(rows), 0)
                    with gate_heads(model, gates):
                        output = run(model, tiled, embedding=term.metric.needs_embedding).output
                    objective = term.metric.objective(output, tiled, prompt_rows)
                    per_set = objective.reshape(n_sets, len(rows)).sum(1) / size
                    (part,) = torch.autograd.grad(term.weight * per_set.sum(), theta)
                gradient += part
                last += term.weight * per_set.detach().double().cpu()
        with torch.enable_grad():
            penalty = -(lams.to(theta)[:, None, None] * theta.clamp(-_CLIP, _CLIP)).mean((1, 2))
            (part,) = torch.autograd.grad(penalty.sum(), theta)
        optimizer.zero_grad(set_to_none=True)
        theta.grad = gradient + part
        optimizer.step()
        with torch.no_grad():
            # Projected Adam: θ stays where the clipped regulariser has a
            # gradient. A head that drifted past ±4 in the λ = 0 fit would
            # otherwise never be pulled back by ±λ (dead heads would come
            # out "facilitating").
            theta.clamp_(-_CLIP, _CLIP)
        tracker.step()
    return theta.detach(), last


def _roles(g_plus: Tensor, g_minus: Tensor, threshold: float) -> tuple[tuple[Role, ...], ...]:
    plus, minus = g_plus >= threshold, g_minus >= threshold
    out = []
    for layer in range(g_plus.shape[0]):
        row: list[Role] = []
        for head in range(g_plus.shape[1]):
            up, down = bool(plus[layer, head]), bool(minus[layer, head])
            if up and down:
                row.append("facilitating")
            elif not up and not down:
                row.append("interfering")
            elif up:
                row.append("irrelevant")
            else:
                row.append("ambiguous")
        out.append(tuple(row))
    return tuple(out)


def _majority(
    seed_roles: Sequence[tuple[tuple[Role, ...], ...]],
) -> tuple[tuple[Role, ...], ...]:
    n_seeds = len(seed_roles)
    out = []
    for layer in range(len(seed_roles[0])):
        row: list[Role] = []
        for head in range(len(seed_roles[0][layer])):
            votes: dict[Role, int] = {}
            for roles in seed_roles:
                votes[roles[layer][head]] = votes.get(roles[layer][head], 0) + 1
            role, count = max(votes.items(), key=lambda item: item[1])
            row.append(role if count * 2 > n_seeds else "mixed")
        out.append(tuple(row))
    return tuple(out)


#: A gate within this of σ(±4) sits at the bound of the clipped regulariser.
BOUND_TOLERANCE = 1e-3


def diagnose(
    g_plus: Float[Tensor, "seed layer head"],
    g_minus: Float[Tensor, "seed layer head"],
    objective: Float[Tensor, "phase seed"],
    clean_objective: float,
    lam: float,
) -> str | None:
    """Why a CHG fit says nothing, or None when it is informative.

    A fit is degenerate when, in every seed, the −λ refit switches every head
    off (every G⁻ at the floor σ(−4): "no head is needed", which a model whose
    metric gets worse without its heads contradicts), or the +λ refit keeps
    every head off (every G⁺ at the floor: "every head interferes"). Either
    way the regulariser, not the metric, set the gates: the metric is nearly
    flat in the gates at this λ (e.g. a loss over tokens no head can predict).
    """
    floor = float(torch.sigmoid(torch.tensor(-_CLIP))) + BOUND_TOLERANCE
    minus_off = bool((g_minus <= floor).flatten(1).all(1).all())
    plus_off = bool((g_plus <= floor).flatten(1).all(1).all())
    if not (minus_off or plus_off):
        return None
    which = "−λ refit switched every head off (G⁻ at the floor σ(−4))"
    if plus_off:
        which = "+λ refit kept every head off (G⁺ at the floor σ(−4))"
    worst = float(objective[2 if minus_off else 1].mean())
    return (
        f"degenerate fit: in every seed the {which}, so the gates reflect the "
        f"regulariser (λ = {lam:g}), not the metric. The metric moves from "
        f"{clean_objective:.4g} with all heads to {worst:.4g} with the fitted gates. "
        "Likely cause: the metric scores tokens no head can help predict (choose a "
        "target span), or λ is too large for it. No roles are given."
    )


def causal_head_gating(
    model: HeadscopeModel,
    prompts: Prompts,
    *,
    metric: MetricLike = "loss",
    seeds: int = 5,
    lam: float = 1.0,
    steps: int = 100,
    lr: float = 1.0,
    threshold: float = 0.5,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    callback: ProgressCallback | None = None,
) -> CHGResult:
    """Causal Head Gating (Nam et al. 2025, docs/methods.md §2.4) on a frozen model.

    Gates G = σ(θ) scale each head's z. Loss = metric objective (NLL on target
    tokens for "loss"; −value for higher-is-better metrics) − λ·mean(clip(θ, −4,
    4)) over all heads. For each seed: fit λ = 0 from G ~ U(0, 1) (θ = logit of
    uniform draws), then from that solution fit +λ (gates pushed up: G⁺) and
    −λ (gates pushed down: G⁻). λ > 0 raises gates (one public fork has the
    sign inverted). Adam, `lr` 1.0, `steps` full-batch steps per phase. `lam`
    weighs the mean over heads, so its effect per head shrinks with the head
    count; roles are thresholded at `threshold` and combined over seeds by
    strict majority (see CHGResult).

    All seeds (and the +λ / −λ fits) run in the same forwards: gates
    `[sets·prompts, layer, head]`. Cost: 2·steps forward+backward passes over
    seeds·prompts (first phase) and 2·seeds·prompts (second) sequences, in
    chunks of batch_size rows. `progress` shows a tqdm bar; `callback(step,
    total)` is called after every step, and returning False raises
    AnalysisCancelledError.
    """
    check_fit_args(seeds, steps, lr, batch_size)
    batch = as_batch(model, prompts)
    resolved = resolve_metric(model, metric, batch)
    spec = model.spec
    terms = [_Term(batch, resolved, 1.0)]
    theta = _initial_theta(seeds, spec.n_layers, spec.n_heads, seed)
    with tracking(2 * steps, progress, callback, "causal head gating") as tracker:
        fitted, fit_objective = _fit_gates(
            model,
            terms,
            theta,
            torch.zeros(seeds),
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            tracker=tracker,
        )
        lams = torch.cat([torch.full((seeds,), float(lam)), torch.full((seeds,), -float(lam))])
        refit, refit_objective = _fit_gates(
            model,
            terms,
            fitted.repeat(2, 1, 1),
            lams,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            tracker=tracker,
        )
    g_fit = torch.sigmoid(fitted).double()
    g_plus, g_minus = torch.sigmoid(refit[:seeds]).double(), torch.sigmoid(refit[seeds:]).double()
    seed_roles = tuple(_roles(g_plus[s], g_minus[s], threshold) for s in range(seeds))
    objective = torch.stack([fit_objective, refit_objective[:seeds], refit_objective[seeds:]])
    clean = clean_values(model, batch, resolved, batch_size)
    clean_objective = float(clean.mean()) * (1.0 if resolved.direction == "minimize" else -1.0)
    return CHGResult(
        g_fit=g_fit,
        g_plus=g_plus,
        g_minus=g_minus,
        lam=float(lam),
        threshold=float(threshold),
        metric=resolved.name,
        seed_roles=seed_roles,
        roles=_majority(seed_roles),
        objective=objective,
        clean_objective=clean_objective,
        warning=diagnose(g_plus, g_minus, objective, clean_objective, float(lam)),
    )


def contrastive_head_gating(
    model: HeadscopeModel,
    retain_prompts: Prompts,
    forget_prompts: Prompts,
    *,
    metric: MetricLike = "loss",
    forget_metric: MetricLike | None = None,
    seeds: int = 5,
    lam: float = 1.0,
    steps: int = 100,
    lr: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    callback: ProgressCallback | None = None,
) -> ContrastiveResult:
    """Contrastive Causal Head Gating (Nam et al. 2025): one gate set
    G = σ(θ) that keeps the metric good on `retain_prompts` and bad on
    `forget_prompts`. Loss = objective(retain) − objective(forget) −
    λ·mean(clip(θ, −4, 4)), λ > 0 keeping every head that the forget set does
    not need. `forget_metric` defaults to `metric` (a Metric with per-prompt
    data must match its prompt set, so pass both when they carry data). Fitted
    from G ~ U(0, 1) per seed; Adam, `steps` full-batch steps; `progress` and
    `callback` as in `causal_head_gating`.
    """
    check_fit_args(seeds, steps, lr, batch_size)
    retain = as_batch(model, retain_prompts)
    forget = as_batch(model, forget_prompts)
    retain_metric = resolve_metric(model, metric, retain)
    forget_like = metric if forget_metric is None else forget_metric
    forget_resolved = resolve_metric(model, forget_like, forget)
    spec = model.spec
    terms = [_Term(retain, retain_metric, 1.0), _Term(forget, forget_resolved, -1.0)]
    theta = _initial_theta(seeds, spec.n_layers, spec.n_heads, seed)
    with tracking(steps, progress, callback, "contrastive head gating") as tracker:
        fitted, _ = _fit_gates(
            model,
            terms,
            theta,
            torch.full((seeds,), float(lam)),
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            tracker=tracker,
        )
    gates = torch.sigmoid(fitted)
    retain_value = _gated_mean(model, retain, retain_metric, gates, batch_size)
    forget_value = _gated_mean(model, forget, forget_resolved, gates, batch_size)
    return ContrastiveResult(
        gates=gates.double(),
        lam=float(lam),
        retain_value=retain_value,
        forget_value=forget_value,
        clean_retain=float(clean_values(model, retain, retain_metric, batch_size).mean()),
        clean_forget=float(clean_values(model, forget, forget_resolved, batch_size).mean()),
    )


def _gated_mean(
    model: HeadscopeModel, batch: TokenBatch, metric: Metric, gates: Tensor, batch_size: int
) -> Float[Tensor, " set"]:
    values = evaluate_settings(model, batch, metric, 1 - gates, Source(), batch_size=batch_size)
    return values.mean(1)
