"""capture(): run a model on prompts and keep per-head attention as a record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel, Inputs
from headscope.models.tokens import TokenBatch
from headscope.probes.sites import Site
from headscope.records.attention import AttentionRecord
from headscope.records.provenance import Provenance

HeadSelection = Sequence[int] | Sequence[tuple[int, int]] | None


def resolve_heads(
    spec: Any, layers: Sequence[int] | None, heads: HeadSelection
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...] | None]:
    """(layer_index, head_index, requested pairs) for a capture request.

    `heads` is None (all), a list of head indices (in every kept layer), or a
    list of (layer, head) pairs (the grid is their layers × their heads, and
    only the pairs are filled). Raises InputError for out-of-range indices.
    """
    n_layers, n_heads = spec.n_layers, spec.n_heads
    layer_list = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    pairs: list[tuple[int, int]] | None = None
    if heads is None:
        head_list = list(range(n_heads))
    else:
        items = list(heads)
        if not items:
            raise InputError("heads must name at least one head")
        if all(isinstance(h, (tuple, list)) and len(h) == 2 for h in items):
            pairs = sorted({(int(a), int(b)) for a, b in items})
            if layers is None:
                layer_list = sorted({a for a, _ in pairs})
            else:
                pairs = [p for p in pairs if p[0] in layer_list]
                if not pairs:
                    raise InputError("none of the requested (layer, head) pairs is in `layers`")
            head_list = sorted({b for _, b in pairs})
        elif all(isinstance(h, int) for h in items):
            head_list = sorted({int(h) for h in items})
        else:
            raise InputError("heads must be a list of head indices or of (layer, head) pairs")
    if not layer_list:
        raise InputError("layers must name at least one layer")
    for layer in layer_list:
        if not 0 <= layer < n_layers:
            raise InputError(f"layer {layer} is out of range: the model has {n_layers} layers")
    for head in head_list:
        if not 0 <= head < n_heads:
            raise InputError(
                f"head {head} is out of range: the model has {n_heads} heads per layer"
            )
    layer_list = sorted(set(layer_list))
    requested = tuple(pairs) if pairs is not None else None
    if requested is not None and len(requested) == len(layer_list) * len(head_list):
        requested = None  # the pairs fill the grid: nothing is missing
    return tuple(layer_list), tuple(head_list), requested


def padding_mask(batch: TokenBatch) -> Tensor:
    """`[batch, query, key]` True where both query and key are real tokens."""
    real = batch.attention_mask
    return real[:, :, None] & real[:, None, :]


@torch.no_grad()
def capture(
    model: HeadscopeModel,
    inputs: Inputs | TokenBatch,
    *,
    layers: Sequence[int] | None = None,
    heads: HeadSelection = None,
    mode: Literal["maps"] = "maps",
) -> AttentionRecord:
    """Run `model` on `inputs` and return an AttentionRecord of the chosen heads.

    `inputs`: a string, a list of strings (right-padded; padding masked out and
    per-prompt lengths kept) or a token-id tensor (`[position]` or `[batch,
    position]`, used as given). `layers` / `heads` restrict what is kept (see
    `resolve_heads`). Grouped-query models give one map per query head.
    Memory: 4·kept_layers·kept_heads·batch·N² bytes for the result; the
    transformer-lens bridge computes attention eagerly, one layer at a time.
    """
    if mode != "maps":
        raise InputError(f"unknown capture mode {mode!r}")
    batch = inputs if isinstance(inputs, TokenBatch) else model.tokenize(inputs)
    layer_index, head_index, requested = resolve_heads(model.spec, layers, heads)
    heads_tensor = torch.tensor(head_index)
    kept: dict[int, Tensor] = {}

    def keeper(layer: int):
        def keep(pattern: Tensor, hook: Any) -> Tensor:
            kept[layer] = pattern.detach()[:, heads_tensor.to(pattern.device)].float().cpu()
            return pattern

        return keep

    hooks = [(Site(layer, "pattern").hook_name, keeper(layer)) for layer in layer_index]
    model.forward(batch, hooks=hooks)
    missing = [layer for layer in layer_index if layer not in kept]
    if missing:
        raise RuntimeError(f"the attention pattern hook did not fire for layers {missing}")
    pattern = torch.stack([kept[layer] for layer in layer_index], dim=1)  # [b, l, h, q, k]
    pattern = pattern * padding_mask(batch)[:, None, None].to(pattern.dtype)
    if requested is not None:
        wanted = torch.zeros(len(layer_index), len(head_index), dtype=torch.bool)
        for layer, head in requested:
            wanted[layer_index.index(layer), head_index.index(head)] = True
        pattern = pattern.masked_fill(~wanted[None, :, :, None, None], float("nan"))
    provenance = Provenance.now(
        model_name=model.spec.name,
        weights_hash=model.weights_hash,
        headscope_version=_version(),
        torch_version=torch.__version__,
        kernel="eager",
        prepended_bos=batch.prepended_bos,
        texts=batch.texts,
    )
    single = batch.single
    return AttentionRecord(
        pattern=pattern[0] if single else pattern,
        token_ids=batch.ids[0] if single else batch.ids,
        tokens=batch.tokens[0] if single else batch.tokens,
        lengths=None if single else batch.lengths,
        layer_index=layer_index,
        head_index=head_index,
        spec=model.spec,
        provenance=provenance,
        requested=requested,
    )


def _version() -> str:
    from headscope import __version__

    return __version__
