"""Per-head weights of a loaded model, with the normalization gains folded in.

Row vectors, as in transformer-lens: a head reads the residual stream x as
q = x·W_Q, k = x·W_K, v = x·W_V and writes z·W_O. Which norms are folded is
decided by the caller (`fold_attention`, `fold_unembed`); without them, the
architecture adapter's own flag says whether its norms may be folded.
`headscope.experiments.spectra.head_weights` decides it by running the model
(docs/methods.md §4.1).
"""

# ruff: noqa: N803, N806  (W_Q, W_K, W_V, W_O, W_E, W_U: the transformer-lens weight names)

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError


@dataclass(frozen=True)
class HeadWeights:
    """Per-head weights of a model with the normalization gains folded in (float32).

    - `W_Q`, `W_K`, `W_V`: `[layer, head, d_model, d_head]`, K/V expanded to the query
      heads for grouped-query models; `W_O`: `[layer, head, d_head, d_model]`.
    - `W_E`: `[d_vocab, d_model]` token embedding (no positions); `W_U`: `[d_model,
      d_vocab]`.
    - `folded[l]`: layer l's attention reads ln1's output, whose gain (1 + w for
      offset RMSNorms) was multiplied into the rows of W_Q/W_K/W_V and, for LayerNorm,
      the rows then centred (the normalized input has zero mean, so centring changes
      no output). `unembed_folded`: the same for ln_final into W_U.
    Biases are not kept: spectra and composition scores are about the linear maps.
    """

    W_Q: Float[Tensor, "layer head d_model d_head"]
    W_K: Float[Tensor, "layer head d_model d_head"]
    W_V: Float[Tensor, "layer head d_model d_head"]
    W_O: Float[Tensor, "layer head d_head d_model"]
    W_E: Float[Tensor, "d_vocab d_model"]
    W_U: Float[Tensor, "d_model d_vocab"]
    folded: tuple[bool, ...]
    unembed_folded: bool


@torch.no_grad()
def head_weights(
    model: Any,
    *,
    fold_attention: Sequence[bool] | None = None,
    fold_unembed: bool | None = None,
) -> HeadWeights:
    """Read the per-head weights of a loaded model (`.bridge`, a transformer-lens 4
    TransformerBridge; `.spec` with n_heads) and fold in the normalizations.

    `fold_attention[l]`: fold layer l's ln1 into its W_Q/W_K/W_V (true when the
    attention reads ln1's output: pre-norm models such as GPT-2 and Llama);
    `fold_unembed`: fold ln_final into W_U. None: the adapter's
    `supports_fold_ln` flag for every layer. Post-norm models (BERT) read the
    stored residual directly, so their attention weights are left as stored.
    QK-norms (norms on q and k) are not foldable and are ignored. Every layer
    must have attention. Memory: float32 copies of all head weights.
    """
    bridge = model.bridge
    n_heads = int(model.spec.n_heads)
    W_Q = _stacked(bridge.W_Q)
    n_layers = W_Q.shape[0]
    W_K = _expand_kv(_stacked(bridge.W_K), n_heads)
    W_V = _expand_kv(_stacked(bridge.W_V), n_heads)
    W_O = _stacked(bridge.W_O)
    W_E = bridge.W_E.detach().float().clone()
    W_U = bridge.W_U.detach().float().clone()
    default = bool(getattr(getattr(bridge, "adapter", None), "supports_fold_ln", True))
    attention = [default] * n_layers if fold_attention is None else list(fold_attention)
    if len(attention) != n_layers:
        raise InputError(f"fold_attention has {len(attention)} entries for {n_layers} layers")
    unembed = default if fold_unembed is None else fold_unembed

    folded = []
    for layer in range(n_layers):
        norm = getattr(bridge.blocks[layer], "ln1", None)
        gain = _norm_gain(norm) if attention[layer] else None
        if gain is None:
            folded.append(False)
            continue
        for W in (W_Q, W_K, W_V):
            W[layer] *= gain[None, :, None]
            if not _is_rms(norm):
                W[layer] -= W[layer].mean(-2, keepdim=True)
        folded.append(True)
    final = getattr(bridge, "ln_final", None)
    gain = _norm_gain(final) if unembed else None
    if gain is not None:
        W_U *= gain[:, None]
        if not _is_rms(final):
            W_U -= W_U.mean(0, keepdim=True)
    return HeadWeights(W_Q, W_K, W_V, W_O, W_E, W_U, tuple(folded), gain is not None)


def _stacked(W: Tensor) -> Tensor:
    if W.dim() != 4:
        raise InputError(f"expected stacked per-head weights [layer, head, ., .], got {W.shape}")
    return W.detach().float().clone()


def _expand_kv(W: Float[Tensor, "layer kv_head a b"], n_heads: int) -> Tensor:
    """Query head h reads kv head h // (n_heads // n_kv_heads) (the transformer-lens layout)."""
    n_kv = W.shape[1]
    if n_kv == n_heads:
        return W
    if n_kv < 1 or n_heads % n_kv:
        raise InputError(f"cannot expand {n_kv} key/value heads to {n_heads} query heads")
    return W.repeat_interleave(n_heads // n_kv, dim=1)


def _norm_gain(norm: Any) -> Tensor | None:
    """The per-channel gain a normalization multiplies by (1 + w for offset norms)."""
    if norm is None:
        return None
    weight = getattr(norm, "weight", None)
    if weight is None:
        weight = getattr(getattr(norm, "original_component", None), "weight", None)
    if weight is None:
        return None
    weight = weight.detach().float()
    return 1.0 + weight if getattr(norm, "uses_weight_offset", False) else weight


def _is_rms(norm: Any) -> bool:
    flag = getattr(norm, "uses_rms_norm", None)
    if flag is not None:
        return bool(flag)
    return "RMS" in type(getattr(norm, "original_component", norm)).__name__
