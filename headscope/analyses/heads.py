"""Head importance: ablation, gradient importance, Causal Head Gating, patching, pruning.

Every method acts on z, each head's output before W_O (METHODS.md §2), and
measures a per-prompt metric (`headscope.analyses.metrics`): next-token loss
on target tokens, logit difference, an embedding cosine, or a callable.

- `ablation_scores`: metric(ablated) − metric(clean) with one head ablated at a
  time (zero, mean or resample).
- `gradient_importance`: Michel et al. 2019, "Are Sixteen Heads Really Better
  than One?": I_h = E_x |∂L/∂ξ_h| with gates ξ = 1 on z.
- `causal_head_gating`, `contrastive_head_gating`: Nam et al. 2025, "Causal Head
  Gating: A Framework for Interpreting Roles of Attention Heads in Transformers".
- `activation_patching`, `attribution_patching`, `patch_heads`: clean z put into
  a corrupted run, exactly or to first order (attribution patching: Nanda 2023;
  Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery").
- `pruning_curve`, `rank_heads`: for reports.

Many interventions share one forward: the prompts are repeated once per head
mask, each row carries its own mask (`[masks·prompts, layer, head]`), and the
rows are chunked to `batch_size` sequences. Layers below the first intervened
layer compute the same thing for every mask, so they run once on the plain
prompts and the batch is tiled on entering that layer (exact; it falls back to
repeating the prompts from the start where an architecture refuses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.analyses.metrics import Metric, MetricLike, resolve_metric
from headscope.errors import HeadscopeError, InputError
from headscope.models.loading import HeadscopeModel, Inputs
from headscope.models.tokens import TokenBatch
from headscope.probes.interventions import ABLATION_MODES, AblationMode, gate_heads, mean_z
from headscope.probes.sites import Site

Prompts = Inputs | TokenBatch
HeadSet = Sequence[tuple[int, int]] | Float[Tensor, "layer head"] | Float[Tensor, "set layer head"]
HeadOrder = Float[Tensor, "layer head"] | Sequence[tuple[int, int]]
ProgressCallback = Callable[[int, int], bool | None]
Absolute = Literal["per_example", "after_mean"]
Role = Literal["facilitating", "interfering", "irrelevant", "ambiguous", "mixed"]

DEFAULT_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(11))
_CLIP = 4.0  # CHG clips θ to [−4, 4] in the regulariser: σ(4) ≈ 0.982


class AnalysisCancelledError(HeadscopeError):
    """A progress callback asked a long analysis to stop (returned False)."""


# -- progress ---------------------------------------------------------------------------------


class _Tracker:
    """tqdm bar plus the dashboard's `callback(step, total)`; False from it cancels."""

    def __init__(
        self, total: int, progress: bool, callback: ProgressCallback | None, desc: str
    ) -> None:
        from tqdm.auto import tqdm

        self.total, self.done, self.callback = total, 0, callback
        self.bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)

    def step(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.callback is not None and self.callback(self.done, self.total) is False:
            raise AnalysisCancelledError(f"cancelled after {self.done} of {self.total} steps")

    def close(self) -> None:
        self.bar.close()


@contextmanager
def _tracking(
    total: int, progress: bool, callback: ProgressCallback | None, desc: str
) -> Iterator[_Tracker]:
    tracker = _Tracker(total, progress, callback, desc)
    try:
        yield tracker
    finally:
        tracker.close()


# -- batches ----------------------------------------------------------------------------------


def _tokens(model: HeadscopeModel, prompts: Prompts) -> TokenBatch:
    return prompts if isinstance(prompts, TokenBatch) else model.tokenize(prompts)


def _select(batch: TokenBatch, rows: Int[Tensor, " row"]) -> TokenBatch:
    """The batch's rows `rows` (repeats allowed), as a new TokenBatch."""
    index = rows.tolist()
    return TokenBatch(
        batch.ids[rows],
        batch.attention_mask[rows],
        tuple(batch.lengths[i] for i in index),
        tuple(batch.tokens[i] for i in index),
        False,
        None if batch.texts is None else tuple(batch.texts[i] for i in index),
        batch.prepended_bos,
    )


def _prompt_chunks(size: int, chunk: int, group: int) -> list[Tensor]:
    """Consecutive prompt index ranges of at most `chunk` prompts, whole groups each."""
    chunk = max(group, chunk // group * group)
    return [torch.arange(i, min(i + chunk, size)) for i in range(0, size, chunk)]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")


# -- many head interventions per forward ------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """What an intervened z moves towards: zeros (`zs` None), or, for setting s
    and prompt b, `zs[layer][index[s, b]]` (a reference prompt's z, a mean, or
    the clean run's z). Each `zs[layer]` is `[source, position, head, d_head]`."""

    zs: list[Tensor] | None = None
    index: Tensor | None = None


@dataclass
class _Sharing:
    """Whether layers below the first intervened layer may run once per chunk."""

    enabled: bool = True


def _blend_hooks(
    model: HeadscopeModel,
    amounts: Float[Tensor, "row layer head"],
    source: _Source,
    setting_rows: Tensor,
    prompt_rows: Tensor,
) -> list[tuple[str, Any]]:
    """z ← z + a·(z_source − z) per row and head, hooked only on layers where
    some amount is nonzero. With a zero source this is `gate_heads` with gate
    1 − a; with the clean z it is activation patching."""
    hooks = []
    for layer in range(model.spec.n_layers):
        amount = amounts[:, layer]
        if not bool((amount != 0).any()):
            continue

        def hook(z: Tensor, hook: Any, layer: int = layer, amount: Tensor = amount) -> Tensor:
            if z.shape[0] != amount.shape[0]:
                raise RuntimeError(
                    f"layer {layer}: z has {z.shape[0]} rows, the masks {amount.shape[0]}"
                )
            a = amount.to(z.device, z.dtype)[:, None, :, None]
            if source.zs is None:
                return z - a * z
            assert source.index is not None
            pick = source.index[setting_rows, prompt_rows]
            target = source.zs[layer][pick.to(source.zs[layer].device), : z.shape[1]]
            return z + a * (target.to(z.device, z.dtype) - z)

        hooks.append((Site(layer, "z").hook_name, hook))
    return hooks


def _tile_value(value: Any, size: int, copies: int) -> Any:
    if isinstance(value, Tensor) and value.dim() >= 2 and value.shape[0] == size:
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_tile_value(v, size, copies) for v in value)
    if isinstance(value, list):
        return [_tile_value(v, size, copies) for v in value]
    return value


@contextmanager
def _tile_from_layer(model: HeadscopeModel, start: int, copies: int) -> Iterator[None]:
    """From block `start` on, run `copies` tiled copies of the batch (row
    i·size + j is copy i of prompt j): the hidden state entering `start` and
    every batch-sized tensor handed to later blocks (attention masks, rotary
    tables) are repeated. Blocks below `start` run once, at the original size.
    A tensor of the wrong size left untiled fails loudly (no silent broadcast
    unless the original batch has one row, where broadcasting is exact)."""
    blocks = model.bridge.blocks
    state: dict[str, int] = {}

    def pre_hook(index: int):
        def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if index == start:
                hidden = args[0] if args else kwargs["hidden_states"]
                state["size"] = int(hidden.shape[0])
            size = state["size"]
            tiled_args = tuple(_tile_value(a, size, copies) for a in args)
            tiled_kwargs = {k: _tile_value(v, size, copies) for k, v in kwargs.items()}
            return tiled_args, tiled_kwargs

        return hook

    handles = [
        blocks[i].register_forward_pre_hook(pre_hook(i), with_kwargs=True)
        for i in range(start, len(blocks))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _first_layer(amounts: Float[Tensor, "setting layer head"]) -> list[int | None]:
    active = (amounts != 0).any(-1)  # [setting, layer]
    return [int(row.nonzero()[0]) if bool(row.any()) else None for row in active]


def _evaluate_settings(
    model: HeadscopeModel,
    batch: TokenBatch,
    metric: Metric,
    amounts: Float[Tensor, "setting layer head"],
    source: _Source,
    *,
    batch_size: int,
    sharing: _Sharing,
    tracker: _Tracker | None = None,
) -> Float[Tensor, "setting prompt"]:
    """The metric under every setting (one intervention mask per setting) for
    every prompt, without gradients.

    Settings that first intervene at the same layer are evaluated together:
    `copies` settings × `p` prompts per forward (≤ batch_size rows, p ≥ the
    metric's group). Memory: one forward of batch_size sequences (logits
    batch_size·N·d_vocab floats) plus the source z.
    """
    n_settings, size = amounts.shape[0], batch.batch_size
    values = torch.empty(n_settings, size, dtype=torch.float64)
    for start, settings, prompt_chunk in _plan(amounts, size, metric.group, batch_size):
        copies = len(settings)
        setting_ids = torch.tensor(settings)
        prompt_rows = prompt_chunk.repeat(copies)
        setting_rows = setting_ids.repeat_interleave(len(prompt_chunk))
        row_amounts = amounts[setting_ids].repeat_interleave(len(prompt_chunk), 0)
        tiled = _select(batch, prompt_rows)
        hooks = _blend_hooks(model, row_amounts, source, setting_rows, prompt_rows)
        output = None
        with torch.no_grad():
            if sharing.enabled and copies > 1 and start and not metric.needs_embedding:
                try:
                    with _tile_from_layer(model, start, copies):
                        output = model.forward(_select(batch, prompt_chunk), hooks=hooks)
                    if output.logits.shape[0] != len(prompt_rows):
                        raise RuntimeError("the tiled forward returned the wrong batch size")
                except (RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError):
                    # This architecture passes some batch-sized state that the
                    # tiling did not reach: repeat the prompts from the start.
                    sharing.enabled = False
                    output = None
            if output is None:
                output = model.forward(tiled, embedding=metric.needs_embedding, hooks=hooks)
            chunk_values = metric(output, tiled, prompt_rows).double().cpu()
        values[setting_rows, prompt_rows] = chunk_values
        if tracker is not None:
            tracker.step()
    return values


def _plan(
    amounts: Tensor, size: int, group: int, batch_size: int
) -> list[tuple[int | None, list[int], Tensor]]:
    """(first layer, settings, prompts) per forward: settings grouped by their
    first intervened layer, as many settings per forward as fit (the shared
    lower layers then run on few prompts)."""
    starts = _first_layer(amounts)
    groups: dict[int | None, list[int]] = {}
    for index, start in enumerate(starts):
        groups.setdefault(start, []).append(index)
    plan = []
    for start in sorted(groups, key=lambda s: -1 if s is None else s):
        members = groups[start]
        copies = max(1, min(len(members), batch_size // group))
        per_forward = max(group, batch_size // copies)
        chunks = _prompt_chunks(size, per_forward, group)
        for i in range(0, len(members), copies):
            for prompt_chunk in chunks:
                plan.append((start, members[i : i + copies], prompt_chunk))
    return plan


def _clean_values(
    model: HeadscopeModel, batch: TokenBatch, metric: Metric, batch_size: int
) -> Float[Tensor, " prompt"]:
    values = []
    with torch.no_grad():
        for rows in _prompt_chunks(batch.batch_size, batch_size, metric.group):
            sub = _select(batch, rows)
            output = model.forward(sub, embedding=metric.needs_embedding)
            values.append(metric(output, sub, rows).double().cpu())
    return torch.cat(values)


@torch.no_grad()
def _run_keeping_z(
    model: HeadscopeModel, batch: TokenBatch, metric: Metric
) -> tuple[Float[Tensor, " prompt"], list[Tensor]]:
    """Metric per prompt and z of every layer `[prompt, position, head, d_head]`."""
    store: dict[int, Tensor] = {}

    def keeper(layer: int):
        def keep(z: Tensor, hook: Any) -> Tensor:
            store[layer] = z.detach()
            return z

        return keep

    hooks = [(Site(layer, "z").hook_name, keeper(layer)) for layer in range(model.spec.n_layers)]
    output = model.forward(batch, embedding=metric.needs_embedding, hooks=hooks)
    values = metric(output, batch).double().cpu()
    return values, [store[layer] for layer in range(model.spec.n_layers)]


def _reference_source(
    model: HeadscopeModel,
    batch: TokenBatch,
    mode: AblationMode,
    reference: Prompts | None,
    n_settings: int,
    generator: torch.Generator,
) -> _Source:
    if mode not in ABLATION_MODES:
        raise InputError(f"unknown ablation mode {mode!r}; choose from {ABLATION_MODES}")
    if mode == "zero":
        return _Source()
    from headscope.probes.interventions import reference_z

    ref_batch = batch if reference is None else _tokens(model, reference)
    if ref_batch.length < batch.length:
        raise InputError(
            f"{mode} ablation needs reference prompts at least {batch.length} tokens long "
            f"(the longest reference has {ref_batch.length})"
        )
    zs, ref_batch = reference_z(model, ref_batch)
    if mode == "mean":
        means = mean_z(zs, ref_batch)
        return _Source([m[None] for m in means], torch.zeros(n_settings, batch.batch_size).long())
    shape = (n_settings, batch.batch_size)
    index = torch.randint(0, ref_batch.batch_size, shape, generator=generator)
    return _Source(zs, index)


# -- ablation ---------------------------------------------------------------------------------


def ablation_scores(
    model: HeadscopeModel,
    prompts: Prompts,
    *,
    metric: MetricLike = "loss",
    mode: AblationMode = "zero",
    reference: Prompts | None = None,
    draws: int = 3,
    batch_size: int = 16,
    per_prompt: bool = False,
    seed: int = 0,
    reuse_lower_layers: bool = True,
    progress: bool = False,
    callback: ProgressCallback | None = None,
) -> Float[Tensor, "layer head"] | Float[Tensor, "prompt layer head"]:
    """metric(one head ablated) − metric(clean), for every head.

    Positive scores mean ablating the head raises the metric (for a loss: the
    head helps; for a higher-is-better metric such as logit difference the
    important heads score negative). `mode` (the caller records it with the
    scores): "zero" (z ← 0), "mean" (z ← per-position mean of z over
    `reference`), "resample" (z ← z of a random `reference` prompt, a fresh draw
    per ablated row, averaged over `draws` draws). `reference` defaults to the
    prompts themselves and must be at least as long.

    Returns `[layer, head]` (mean over prompts, float64) or, with
    `per_prompt=True`, `[prompt, layer, head]`. One forward per chunk of
    `batch_size` sequences, each row with its own mask; the layers below the
    ablated layer run once per chunk (`reuse_lower_layers`, exact). Memory: one
    forward of batch_size sequences plus, for mean/resample, the reference z of
    every layer.
    """
    _check_batch_size(batch_size)
    batch = _tokens(model, prompts)
    resolved = resolve_metric(model, metric, batch)
    n_layers, n_heads = model.spec.n_layers, model.spec.n_heads
    n_draws = draws if mode == "resample" else 1
    if n_draws < 1:
        raise InputError(f"draws must be >= 1, got {draws}")
    single = torch.eye(n_layers * n_heads).reshape(-1, n_layers, n_heads)
    amounts = single.repeat(n_draws, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    source = _reference_source(model, batch, mode, reference, amounts.shape[0], generator)
    clean = _clean_values(model, batch, resolved, batch_size)
    plan_length = len(_plan(amounts, batch.batch_size, resolved.group, batch_size))
    with _tracking(plan_length, progress, callback, "ablation") as tracker:
        ablated = _evaluate_settings(
            model,
            batch,
            resolved,
            amounts,
            source,
            batch_size=batch_size,
            sharing=_Sharing(reuse_lower_layers),
            tracker=tracker,
        )
    ablated = ablated.reshape(n_draws, n_layers * n_heads, -1).mean(0)
    scores = (ablated - clean[None]).T.reshape(-1, n_layers, n_heads)
    return scores if per_prompt else scores.mean(0)


# -- gradient importance (Michel et al. 2019) --------------------------------------------------


def gradient_importance(
    model: HeadscopeModel,
    prompts: Prompts,
    *,
    metric: MetricLike = "loss",
    absolute: Absolute = "per_example",
    normalize: bool = True,
    batch_size: int = 16,
) -> Float[Tensor, "layer head"]:
    """Head importance of Michel et al. 2019 ("Are Sixteen Heads Really Better
    than One?"): I_h = E_x |∂L_x/∂ξ_h| with a gate ξ_h = 1 on each head's z.

    `absolute`: "per_example" (default, the paper's): the absolute value of each
    prompt's gradient, then the mean over prompts; "after_mean": the absolute
    value of the mean gradient (signed effects of different prompts cancel).
    `normalize`: divide each layer's scores by their L2 norm over the layer's
    heads (the paper's per-layer normalisation; a layer of zeros stays zero).
    L_x is the metric's value on prompt x (the sign is irrelevant under |·|).

    Per-example gradients come from one backward: gates `[prompt, layer, head]`
    requiring grad, one row per prompt. Memory: the autograd graph of one
    forward of batch_size prompts. Returns float64.
    """
    if absolute not in ("per_example", "after_mean"):
        raise InputError(f"absolute must be 'per_example' or 'after_mean', got {absolute!r}")
    _check_batch_size(batch_size)
    batch = _tokens(model, prompts)
    resolved = resolve_metric(model, metric, batch)
    spec = model.spec
    total = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.float64)
    for rows in _prompt_chunks(batch.batch_size, batch_size, resolved.group):
        sub = _select(batch, rows)
        gates = torch.ones(len(rows), spec.n_layers, spec.n_heads, requires_grad=True)
        with torch.enable_grad():
            with gate_heads(model, gates):
                output = model.forward(sub, embedding=resolved.needs_embedding)
            values = resolved(output, sub, rows)
            (gradient,) = torch.autograd.grad(values.sum(), gates)
        gradient = gradient.double()
        total += gradient.abs().sum(0) if absolute == "per_example" else gradient.sum(0)
    importance = total / batch.batch_size
    if absolute == "after_mean":
        importance = importance.abs()
    if normalize:
        norms = importance.norm(dim=1, keepdim=True)
        importance = torch.where(norms > 0, importance / norms.clamp_min(1e-300), importance)
    return importance


# -- Causal Head Gating (Nam et al. 2025) ------------------------------------------------------


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
      regulariser) at the last step, `[phase, seed]` for phases (fit, plus, minus).
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
    tracker: _Tracker,
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
            for rows in _prompt_chunks(size, per_forward, term.metric.group):
                prompt_rows = rows.repeat(n_sets)
                tiled = _select(term.batch, prompt_rows)
                with torch.enable_grad():
                    gates = torch.sigmoid(theta).repeat_interleave(len(rows), 0)
                    with gate_heads(model, gates):
                        output = model.forward(tiled, embedding=term.metric.needs_embedding)
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


def _check_fit_args(seeds: int, steps: int, lr: float, batch_size: int) -> None:
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"seeds must be a positive int, got {seeds!r}")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr!r}")
    _check_batch_size(batch_size)


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
    """Causal Head Gating (Nam et al. 2025, METHODS.md §2) on a frozen model.

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
    _check_fit_args(seeds, steps, lr, batch_size)
    batch = _tokens(model, prompts)
    resolved = resolve_metric(model, metric, batch)
    spec = model.spec
    terms = [_Term(batch, resolved, 1.0)]
    theta = _initial_theta(seeds, spec.n_layers, spec.n_heads, seed)
    with _tracking(2 * steps, progress, callback, "causal head gating") as tracker:
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
    _check_fit_args(seeds, steps, lr, batch_size)
    retain = _tokens(model, retain_prompts)
    forget = _tokens(model, forget_prompts)
    retain_metric = resolve_metric(model, metric, retain)
    forget_like = metric if forget_metric is None else forget_metric
    forget_resolved = resolve_metric(model, forget_like, forget)
    spec = model.spec
    terms = [_Term(retain, retain_metric, 1.0), _Term(forget, forget_resolved, -1.0)]
    theta = _initial_theta(seeds, spec.n_layers, spec.n_heads, seed)
    with _tracking(steps, progress, callback, "contrastive head gating") as tracker:
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
        clean_retain=float(_clean_values(model, retain, retain_metric, batch_size).mean()),
        clean_forget=float(_clean_values(model, forget, forget_resolved, batch_size).mean()),
    )


def _gated_mean(
    model: HeadscopeModel, batch: TokenBatch, metric: Metric, gates: Tensor, batch_size: int
) -> Float[Tensor, " set"]:
    values = _evaluate_settings(
        model, batch, metric, 1 - gates, _Source(), batch_size=batch_size, sharing=_Sharing()
    )
    return values.mean(1)


# -- patching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PatchSetup:
    clean: TokenBatch
    corrupted: TokenBatch
    metric: Metric
    clean_z: list[Tensor]
    clean_value: float
    corrupted_value: float

    @property
    def difference(self) -> float:
        return self.clean_value - self.corrupted_value


def _patch_setup(
    model: HeadscopeModel, clean: Prompts, corrupted: Prompts, metric: MetricLike
) -> _PatchSetup:
    clean_batch, corrupted_batch = _tokens(model, clean), _tokens(model, corrupted)
    if clean_batch.batch_size != corrupted_batch.batch_size:
        raise InputError(
            f"{clean_batch.batch_size} clean prompts but {corrupted_batch.batch_size} "
            "corrupted ones; patching pairs them one to one"
        )
    for i, (a, b) in enumerate(zip(clean_batch.lengths, corrupted_batch.lengths, strict=True)):
        if a != b:
            raise InputError(
                f"clean prompt {i} has {a} tokens and its corrupted prompt {b}; patching "
                "needs equal token lengths (z is patched position by position)"
            )
    resolved = resolve_metric(model, metric, clean_batch)
    clean_values, clean_z = _run_keeping_z(model, clean_batch, resolved)
    with torch.no_grad():
        output = model.forward(corrupted_batch, embedding=resolved.needs_embedding)
        corrupted_values = resolved(output, corrupted_batch).double().cpu()
    setup = _PatchSetup(
        clean_batch,
        corrupted_batch,
        resolved,
        clean_z,
        float(clean_values.mean()),
        float(corrupted_values.mean()),
    )
    scale = max(1.0, abs(setup.clean_value), abs(setup.corrupted_value))
    if abs(setup.difference) <= 1e-6 * scale:
        raise InputError(
            f"the metric is the same on the clean ({setup.clean_value:.6g}) and corrupted "
            f"({setup.corrupted_value:.6g}) prompts, so patching has nothing to restore"
        )
    return setup


def _patch_values(
    model: HeadscopeModel,
    setup: _PatchSetup,
    amounts: Float[Tensor, "setting layer head"],
    *,
    batch_size: int,
    tracker: _Tracker | None = None,
) -> Float[Tensor, " setting"]:
    size = setup.corrupted.batch_size
    index = torch.arange(size).expand(amounts.shape[0], size)
    values = _evaluate_settings(
        model,
        setup.corrupted,
        setup.metric,
        amounts,
        _Source(setup.clean_z, index),
        batch_size=batch_size,
        sharing=_Sharing(),
        tracker=tracker,
    )
    return (values.mean(1) - setup.corrupted_value) / setup.difference


def _head_sets(model: HeadscopeModel, heads: Any) -> Float[Tensor, "setting layer head"]:
    spec = model.spec
    if isinstance(heads, Tensor):
        sets = heads.float()
        if sets.dim() == 2:
            sets = sets[None]
        if sets.dim() != 3 or tuple(sets.shape[1:]) != (spec.n_layers, spec.n_heads):
            raise InputError(
                f"head masks must have shape [layer, head] = [{spec.n_layers}, {spec.n_heads}] "
                f"or [set, layer, head], got {list(heads.shape)}"
            )
        if bool(((sets < 0) | (sets > 1)).any()):
            raise InputError("head masks must lie in [0, 1] (1 patches the head)")
        return sets
    mask = torch.zeros(1, spec.n_layers, spec.n_heads)
    for layer, head in _check_pairs(model, heads):
        mask[0, layer, head] = 1
    return mask


def _check_pairs(model: HeadscopeModel, pairs: Any) -> list[tuple[int, int]]:
    spec = model.spec
    try:
        out = [(int(layer), int(head)) for layer, head in pairs]
    except (TypeError, ValueError):
        raise InputError("heads must be (layer, head) pairs or a [layer, head] mask") from None
    for layer, head in out:
        if not (0 <= layer < spec.n_layers and 0 <= head < spec.n_heads):
            raise InputError(
                f"head ({layer}, {head}) is out of range: the model has {spec.n_layers} "
                f"layers of {spec.n_heads} heads"
            )
    return out


def patch_heads(
    model: HeadscopeModel,
    clean: Prompts,
    corrupted: Prompts,
    heads: HeadSet,
    metric: MetricLike,
    *,
    batch_size: int = 16,
) -> Float[Tensor, ""] | Float[Tensor, " set"]:
    """Patch a set of heads at once: run `corrupted`, put the clean z of the
    chosen heads back (at every position), and return (M_patch − M_corr) /
    (M_clean − M_corr), the metric averaged over prompts before the ratio.

    `heads`: (layer, head) pairs, a `[layer, head]` mask (values in [0, 1]
    interpolate z) or `[set, layer, head]` masks (one value per set). Returns a
    0-d tensor for one set, `[set]` otherwise. Patching no head gives 0.
    Patching every head gives exactly 1 when the metric reads only positions
    whose own tokens are the same in both prompts (information from other
    positions reaches them only through attention); at positions whose tokens
    differ, the embedding path is not patched.
    """
    _check_batch_size(batch_size)
    sets = _head_sets(model, heads)
    setup = _patch_setup(model, clean, corrupted, metric)
    values = _patch_values(model, setup, sets, batch_size=batch_size)
    many = isinstance(heads, Tensor) and heads.dim() == 3
    return values if many else values[0]


def activation_patching(
    model: HeadscopeModel,
    clean: Prompts,
    corrupted: Prompts,
    metric: MetricLike,
    *,
    batch_size: int = 16,
    progress: bool = False,
    callback: ProgressCallback | None = None,
) -> Float[Tensor, "layer head"]:
    """Activation patching per head: run `corrupted`, put one head's clean z
    back (every position), report (M_patch − M_corr)/(M_clean − M_corr) with the
    metric averaged over prompts before the ratio (1: the head alone restores
    the clean metric; 0: no effect).

    `clean` and `corrupted` pair up prompt by prompt and must have equal token
    lengths (InputError otherwise). The metric is resolved on the clean prompts
    (per-prompt data, clean embeddings) and scores each run's own batch: for a
    loss on a corrupted continuation, pass `next_token_loss(labels=clean_ids)`.
    Many heads per forward, as in `ablation_scores`. Memory: the clean z of
    every layer (L·prompts·N·H·d_head floats) plus one forward of batch_size
    sequences. Returns float64.
    """
    _check_batch_size(batch_size)
    setup = _patch_setup(model, clean, corrupted, metric)
    spec = model.spec
    amounts = torch.eye(spec.n_layers * spec.n_heads).reshape(-1, spec.n_layers, spec.n_heads)
    steps = len(_plan(amounts, setup.corrupted.batch_size, setup.metric.group, batch_size))
    with _tracking(steps, progress, callback, "activation patching") as tracker:
        values = _patch_values(model, setup, amounts, batch_size=batch_size, tracker=tracker)
    return values.reshape(spec.n_layers, spec.n_heads)


def attribution_patching(
    model: HeadscopeModel, clean: Prompts, corrupted: Prompts, metric: MetricLike
) -> Float[Tensor, "layer head"]:
    """Attribution patching (Nanda 2023; Syed et al. 2023): the first-order
    estimate of activation patching, (z_clean − z_corr)·∂M/∂z summed over
    positions and d_head, with ∂M/∂z taken on the corrupted run and M the
    metric averaged over prompts; divided by M_clean − M_corr like
    `activation_patching`. Exact when the metric is linear in the head's z.

    Two forwards (clean, corrupted) and one backward for all heads. Memory:
    the clean z of every layer plus the autograd graph of the corrupted
    forward over all prompts. Returns float64.
    """
    setup = _patch_setup(model, clean, corrupted, metric)
    leaves: dict[int, Tensor] = {}
    kept: dict[int, Tensor] = {}

    def perturb(layer: int):
        def hook(z: Tensor, hook: Any) -> Tensor:
            # A zero leaf added to z: its gradient is ∂M/∂z, and unlike a
            # detached z it keeps the paths from lower heads through this one.
            leaf = torch.zeros_like(z, requires_grad=True)
            leaves[layer], kept[layer] = leaf, z.detach()
            return z + leaf

        return hook

    n_layers = model.spec.n_layers
    hooks = [(Site(layer, "z").hook_name, perturb(layer)) for layer in range(n_layers)]
    with torch.enable_grad():
        output = model.forward(setup.corrupted, embedding=setup.metric.needs_embedding, hooks=hooks)
        value = setup.metric(output, setup.corrupted).mean()
        gradients = torch.autograd.grad(
            value, [leaves[layer] for layer in range(n_layers)], allow_unused=True
        )
    scores = []
    for layer, gradient in enumerate(gradients):
        if gradient is None:
            scores.append(torch.zeros(model.spec.n_heads, dtype=torch.float64))
            continue
        delta = setup.clean_z[layer].to(gradient) - kept[layer]
        scores.append((delta * gradient).double().sum((0, 1, 3)).cpu())
    return torch.stack(scores) / setup.difference


# -- pruning and ranking ----------------------------------------------------------------------


def rank_heads(
    scores: Float[Tensor, "layer head"], *, descending: bool = True
) -> list[tuple[int, int, float]]:
    """(layer, head, score) sorted by score, most important (highest) first;
    ties keep (layer, head) order. NaN scores are rejected."""
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise InputError("scores must be a [layer, head] tensor")
    if bool(torch.isnan(scores).any()):
        raise InputError("scores contain NaN")
    flat = scores.detach().double().cpu().flatten()
    order = torch.sort(flat, descending=descending, stable=True).indices.tolist()
    n_heads = scores.shape[1]
    return [(i // n_heads, i % n_heads, float(flat[i])) for i in order]


def _ranking(model: HeadscopeModel, order: HeadOrder) -> list[tuple[int, int]]:
    spec = model.spec
    if isinstance(order, Tensor):
        if tuple(order.shape) != (spec.n_layers, spec.n_heads):
            raise InputError(
                f"importance must have shape [layer, head] = [{spec.n_layers}, {spec.n_heads}], "
                f"got {list(order.shape)}"
            )
        return [(layer, head) for layer, head, _ in rank_heads(order)]
    pairs = _check_pairs(model, [item[:2] for item in order])
    if len(set(pairs)) != len(pairs) or len(pairs) != spec.n_layers * spec.n_heads:
        raise InputError(
            f"a ranked order must list each of the {spec.n_layers * spec.n_heads} heads once"
        )
    return pairs


def pruning_curve(
    model: HeadscopeModel,
    prompts: Prompts,
    order: HeadOrder,
    *,
    metric: MetricLike = "loss",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    mode: AblationMode = "zero",
    reference: Prompts | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> tuple[Float[Tensor, " fraction"], Float[Tensor, " fraction"]]:
    """Greedy pruning curve (Michel et al. 2019): for each fraction p, ablate
    the round(p·L·H) least important heads and evaluate the metric (mean over
    prompts). `order`: an importance tensor `[layer, head]` (higher = more
    important) or a ranked list of (layer, head), most important first (as
    `rank_heads` returns; every head once). All fractions run batched, as in
    `ablation_scores`. Returns (fractions, values), float64.
    """
    _check_batch_size(batch_size)
    ranking = _ranking(model, order)
    fraction_tensor = torch.tensor([float(f) for f in fractions], dtype=torch.float64)
    if fraction_tensor.numel() == 0 or bool(((fraction_tensor < 0) | (fraction_tensor > 1)).any()):
        raise InputError("fractions must be a non-empty list of values in [0, 1]")
    batch = _tokens(model, prompts)
    resolved = resolve_metric(model, metric, batch)
    spec = model.spec
    total = spec.n_layers * spec.n_heads
    amounts = torch.zeros(len(fraction_tensor), spec.n_layers, spec.n_heads)
    for i, fraction in enumerate(fraction_tensor.tolist()):
        for layer, head in ranking[::-1][: round(fraction * total)]:
            amounts[i, layer, head] = 1
    generator = torch.Generator().manual_seed(seed)
    source = _reference_source(model, batch, mode, reference, len(amounts), generator)
    values = _evaluate_settings(
        model, batch, resolved, amounts, source, batch_size=batch_size, sharing=_Sharing()
    )
    return fraction_tensor, values.mean(1)


def top_heads(scores: Float[Tensor, "layer head"], k: int) -> list[tuple[int, int]]:
    """The k highest-scoring (layer, head) pairs, best first."""
    return [(layer, head) for layer, head, _ in rank_heads(scores)[:k]]


def clean_metric(
    model: HeadscopeModel, prompts: Prompts, *, metric: MetricLike = "loss", batch_size: int = 16
) -> Float[Tensor, " prompt"]:
    """The metric on the unmodified model, per prompt (float64)."""
    batch = _tokens(model, prompts)
    return _clean_values(model, batch, resolve_metric(model, metric, batch), batch_size)


__all__ = [
    "DEFAULT_FRACTIONS",
    "AnalysisCancelledError",
    "CHGResult",
    "ContrastiveResult",
    "ablation_scores",
    "activation_patching",
    "attribution_patching",
    "causal_head_gating",
    "clean_metric",
    "contrastive_head_gating",
    "gradient_importance",
    "patch_heads",
    "pruning_curve",
    "rank_heads",
    "top_heads",
]
