"""Head interventions on z, each head's output before W_O.

z is where Michel et al. 2019 ("Are Sixteen Heads Really Better than One?"),
Causal Head Gating (Nam et al. 2025) and transformer-lens's z hook point meet:
scaling a head's z scales its whole contribution to the residual stream.

    with gate_heads(model, gates):            # gates [layer, head] or [batch, layer, head]
        out = model.forward(batch)

z' = g·z + (1 − g)·z_ref, where z_ref is 0 (mode "zero"), the mean of z over a
reference set per position (mode "mean"), or z of a reference prompt (mode
"resample", one reference prompt per batch row). g = 1 keeps a head, 0
ablates it, values between scale it. Gradients flow to `gates`, so they can be
learned. Hooks are removed on exit, also after an exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel, Inputs
from headscope.models.tokens import TokenBatch
from headscope.probes.run import editing, reading
from headscope.probes.sites import Site, layer_sites

AblationMode = Literal["zero", "mean", "resample"]
ABLATION_MODES: tuple[str, ...] = ("zero", "mean", "resample")


def check_gates(model: HeadscopeModel, gates: Tensor) -> Tensor:
    """Validate a gate tensor `[layer, head]` or `[batch, layer, head]`."""
    if not isinstance(gates, Tensor):
        raise InputError(f"gates must be a torch.Tensor, got {type(gates).__name__}")
    spec = model.spec
    if gates.dim() not in (2, 3) or tuple(gates.shape[-2:]) != (spec.n_layers, spec.n_heads):
        raise InputError(
            f"gates must have shape [layer, head] = [{spec.n_layers}, {spec.n_heads}] "
            f"(or [batch, {spec.n_layers}, {spec.n_heads}]), got {list(gates.shape)}"
        )
    if not torch.is_floating_point(gates):
        raise InputError(f"gates must be floating point, got {gates.dtype}")
    if not bool(torch.isfinite(gates.detach()).all()):
        raise InputError("gates must be finite (no NaN or infinity)")
    return gates


@torch.no_grad()
def reference_z(
    model: HeadscopeModel, reference: Inputs | TokenBatch
) -> tuple[list[Float[Tensor, "batch position head d_head"]], TokenBatch]:
    """z of every layer on the reference prompts (`[batch, position, head, d_head]` each)."""
    batch = reference if isinstance(reference, TokenBatch) else model.tokenize(reference)
    sites = layer_sites("z", model.spec.n_layers)
    store = reading(model, batch, sites)
    return [store[site] for site in sites], batch


def mean_z(zs: list[Tensor], batch: TokenBatch) -> list[Float[Tensor, "position head d_head"]]:
    """Per-position mean of z over the real (unpadded) reference tokens."""
    weights = batch.attention_mask.to(zs[0].dtype)[:, :, None, None].to(zs[0].device)
    counts = weights.sum(0).clamp_min(1)
    return [(z * weights).sum(0) / counts for z in zs]


@contextmanager
def gate_heads(
    model: HeadscopeModel,
    gates: Tensor,
    *,
    mode: AblationMode = "zero",
    reference: Inputs | TokenBatch | None = None,
    seed: int = 0,
) -> Iterator[Tensor]:
    """Scale each head's z by its gate inside the `with` block (see module docs).

    `gates`: `[layer, head]` (all rows) or `[batch, layer, head]` (one gate set
    per batch row: many masks evaluated in one forward). `mode="mean"` needs
    `reference` prompts at least as long as the gated input (per-position means);
    `mode="resample"` draws one reference prompt per batch row (seeded).
    Yields the validated gates. Memory: one z-sized temporary per layer.
    """
    gates = check_gates(model, gates)
    if mode not in ABLATION_MODES:
        raise InputError(f"unknown ablation mode {mode!r}; choose from {ABLATION_MODES}")
    if reference is not None and not isinstance(reference, (str, list, tuple, Tensor, TokenBatch)):
        raise InputError(
            "reference must be a prompt string, a list of prompts, a token-id tensor or a "
            f"TokenBatch, got {type(reference).__name__}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be a whole number, got {seed!r:.40}")
    replacement: list[Tensor] | None = None
    if mode != "zero":
        if reference is None:
            raise InputError(f"mode {mode!r} needs reference prompts")
        zs, ref_batch = reference_z(model, reference)
        replacement = mean_z(zs, ref_batch) if mode == "mean" else zs
    generator = torch.Generator().manual_seed(seed)
    # One draw of reference rows per batch size, shared by every layer so that
    # a resampled forward uses the same reference prompt throughout.
    resample_rows: dict[int, Tensor] = {}

    def gate_edit(layer: int):
        def edit(z: Tensor) -> Tensor:
            # z: [batch, position, head, d_head]
            g = gates[..., layer, :].to(z.device, z.dtype)
            g = g[None, None, :, None] if g.dim() == 1 else g[:, None, :, None]
            if g.shape[0] not in (1, z.shape[0]):
                raise InputError(
                    f"gates have {g.shape[0]} rows but the input batch has {z.shape[0]} prompts"
                )
            if replacement is None:
                return z * g
            ref = _replacement_for(layer, z)
            return g * z + (1 - g) * ref

        return edit

    def _replacement_for(layer: int, z: Tensor) -> Tensor:
        assert replacement is not None
        ref = replacement[layer]
        positions = z.shape[1]
        if mode == "mean":
            if ref.shape[0] < positions:
                raise InputError(
                    f"mean ablation needs reference prompts at least {positions} tokens long "
                    f"(the longest reference has {ref.shape[0]})"
                )
            return ref[None, :positions]
        if ref.shape[1] < positions:
            raise InputError(
                f"resample ablation needs reference prompts at least {positions} tokens long"
            )
        if z.shape[0] not in resample_rows:
            resample_rows[z.shape[0]] = torch.randint(
                0, ref.shape[0], (z.shape[0],), generator=generator
            )
        return ref[resample_rows[z.shape[0]].to(ref.device), :positions]

    edits = {Site(layer, "z"): gate_edit(layer) for layer in range(model.spec.n_layers)}
    with editing(model, edits):
        yield gates
