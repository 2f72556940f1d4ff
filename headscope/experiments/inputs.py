"""Argument handling shared by the experiments: prompts to a TokenBatch, head
pairs and gate-fitting options checked with one-line InputErrors."""

from __future__ import annotations

from typing import Any

from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel, Inputs
from headscope.models.tokens import TokenBatch
from headscope.probes.batched import check_batch_size

Prompts = Inputs | TokenBatch


def as_batch(model: HeadscopeModel, prompts: Prompts) -> TokenBatch:
    """A TokenBatch as given, or the prompts tokenized (InputError for bad text)."""
    return prompts if isinstance(prompts, TokenBatch) else model.tokenize(prompts)


def check_pairs(model: HeadscopeModel, pairs: Any) -> list[tuple[int, int]]:
    """(layer, head) pairs as ints, each inside the model's grid."""
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


def check_fit_args(seeds: int, steps: int, lr: float, batch_size: int) -> None:
    """Gate-fitting options: positive seeds, steps, learning rate and batch size."""
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"seeds must be a positive int, got {seeds!r}")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr!r}")
    check_batch_size(batch_size)
