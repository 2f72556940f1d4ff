"""Streaming attention per head, mixed with full attention by a gate (DuoAttention,
Xiao et al. 2024, "DuoAttention: Efficient Long-Context LLM Inference with Retrieval
and Streaming Heads"; docs/methods.md §2.15).

    with stream_heads(model, gates, sink=1, window=4):   # gates [layer, head] in [0, 1]
        out = run(model, batch).output

Each head's output before W_O becomes z' = α·z_full + (1 − α)·z_stream, where
z_stream = softmax(scores restricted to the first `sink` keys and the `window` most
recent keys)·v: the head's output had it seen only the attention sink and a recent
window. α = 1 keeps full attention, α = 0 makes the head a streaming head. Both
outputs come from the same forward (the layer's pre-softmax scores and values are
read at their sites on the way to z), so gates of lower layers change what upper
layers see, as in DuoAttention; gradients flow to `gates`.

Memory: one layer's scores `[batch, head, query, key]` and values held until that
layer's z fires, plus one streaming map of the same size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel
from headscope.probes.interventions import check_gates
from headscope.probes.run import editing
from headscope.probes.sites import Site


def streaming_mask(n: int, sink: int, window: int) -> Bool[Tensor, "query key"]:
    """True where a causal query may attend under streaming attention: keys k < sink
    or q − window < k ≤ q."""
    if sink < 0 or window < 1:
        raise InputError(f"need sink >= 0 and window >= 1, got sink={sink}, window={window}")
    position = torch.arange(n)
    q, k = position[:, None], position[None, :]
    return (k <= q) & ((k < sink) | (k > q - window))


def streaming_pattern(
    scores: Float[Tensor, "batch head query key"], sink: int, window: int
) -> Float[Tensor, "batch head query key"]:
    """softmax of pre-softmax `scores` (already causally masked by the model) with
    every key outside sink ∪ recent window masked out; rows sum to 1."""
    keep = streaming_mask(scores.shape[-1], sink, window).to(scores.device)
    masked = scores.float().masked_fill(~keep, torch.finfo(torch.float32).min)
    return torch.softmax(masked, dim=-1)


@contextmanager
def stream_heads(
    model: HeadscopeModel, gates: Tensor, *, sink: int = 1, window: int = 8
) -> Iterator[Tensor]:
    """Mix each head's full-attention z with its streaming z by its gate inside the
    `with` block (see the module docstring). `gates`: `[layer, head]` or `[batch, layer,
    head]`, values in [0, 1]. Causal models only. Yields the validated gates."""
    gates = check_gates(model, gates)
    if not model.spec.causal:
        raise InputError("streaming attention (sink + recent window) needs a causal model")
    streaming_mask(1, sink, window)  # validates sink and window
    n_heads, n_kv = model.spec.n_heads, model.spec.n_kv_heads
    held: dict[tuple[int, str], Tensor] = {}

    def keep(layer: int, name: str):
        def edit(tensor: Tensor) -> Tensor:
            held[(layer, name)] = tensor
            return tensor

        return edit

    def mix(layer: int):
        def edit(z: Tensor) -> Tensor:
            # z: [batch, position, head, d_head]; v: [batch, position, kv_head, d_head]
            if (layer, "scores") not in held or (layer, "v") not in held:
                raise InputError(
                    f"layer {layer} did not expose its pre-softmax scores and values before "
                    "its output: streaming attention cannot be mixed in on this model"
                )
            scores, v = held.pop((layer, "scores")), held.pop((layer, "v"))
            v = v.repeat_interleave(n_heads // n_kv, dim=2) if n_kv != n_heads else v
            pattern = streaming_pattern(scores, sink, window)
            stream = torch.einsum("bhqk,bkhd->bqhd", pattern, v.float()).to(z.dtype)
            g = gates[..., layer, :].to(z.device, z.dtype)
            g = g[None, None, :, None] if g.dim() == 1 else g[:, None, :, None]
            return g * z + (1 - g) * stream

        return edit

    edits = {}
    for layer in range(model.spec.n_layers):
        edits[Site(layer, "scores")] = keep(layer, "scores")
        edits[Site(layer, "v")] = keep(layer, "v")
        edits[Site(layer, "z")] = mix(layer)
    try:
        with editing(model, edits):
            yield gates
    finally:
        held.clear()
