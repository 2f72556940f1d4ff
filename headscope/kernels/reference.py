"""The readable fp32 attention oracle that every fast kernel is tested against.

    pattern = softmax(cap(q·kᵀ·scale) + bias + mask) over visible keys,  out = pattern · v

where cap(s) = softcap·tanh(s / softcap) with attention logit softcapping
(Gemma 2) and cap(s) = s without.

Written for clarity, not speed: it repeats K/V for grouped-query attention and
materializes the full `[batch, head, query, key]` pattern (4·B·H·Nq·Nk bytes).
RoPE and any other positional rotation are applied to q and k by the model
before attention, so there is nothing positional here beyond `bias`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError


def visible_keys(mask: Tensor | None) -> Tensor | None:
    """Boolean view of a mask: True where a key is visible.

    Boolean masks are used as given. For additive float masks, −inf and the
    dtype's most negative finite value (Hugging Face's eager convention) mark
    invisible keys; every other value is a finite bias added to the score.
    """
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min


def attention_reference(
    q: Float[Tensor, "batch head query d_head"],
    k: Float[Tensor, "batch kv_head key d_head"],
    v: Float[Tensor, "batch kv_head key d_head"],
    mask: Tensor | None = None,
    scale: float | None = None,
    *,
    bias: Float[Tensor, "*batch head query key"] | None = None,
    softcap: float | None = None,
) -> tuple[Float[Tensor, "batch head query d_head"], Float[Tensor, "batch head query key"]]:
    """Attention output and pattern, computed in float32 whatever the input dtype.

    - Grouped-query attention: query head h reads kv head h // (head / kv_head).
    - `mask`: bool `[batch or 1, 1 or head, query, key]`, True = may attend, or an
      additive float mask of that shape (see `visible_keys` for what counts as
      masked).
    - `bias`: additive float `[head, query, key]`, `[batch·head, query, key]` or
      `[batch, head, query, key]` (ALiBi-style), added before the mask.
    - `scale`: defaults to 1/√d_head.
    - `softcap`: the scaled scores s become softcap·tanh(s / softcap) before
      `bias` and `mask` are added (Hugging Face's Gemma 2 order).

    Invariants: pattern rows sum to 1 over visible keys and are 0 elsewhere; a
    query row that can see no key gets an all-zero pattern row and a zero output
    (not NaN, not a uniform row).
    """
    n_heads, d_head = q.shape[1], q.shape[3]
    n_kv_heads = k.shape[1]
    if n_heads % n_kv_heads:
        raise InputError(f"{n_heads} query heads do not divide into {n_kv_heads} kv heads")
    group = n_heads // n_kv_heads
    q, k, v = q.float(), k.float(), v.float()
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = d_head**-0.5 if scale is None else scale

    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        if not softcap > 0:
            raise InputError(f"softcap must be > 0, got {softcap}")
        scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        bias = bias.float()
        if bias.dim() == 3 and bias.shape[0] != n_heads:  # [batch·head, query, key]
            bias = bias.reshape(-1, n_heads, *bias.shape[1:])
        scores = scores + (bias if bias.dim() == 4 else bias[None])
    visible = torch.ones_like(scores, dtype=torch.bool)
    if mask is not None:
        if mask.dtype != torch.bool:
            scores = scores + torch.where(visible_keys(mask), mask.float(), 0.0)
        visible = visible & visible_keys(mask)
    scores = scores.masked_fill(~visible, float("-inf"))
    sees_any = visible.any(dim=-1, keepdim=True)
    # A row of all −inf softmaxes to NaN; such queries attend to nothing.
    scores = torch.where(sees_any, scores, 0.0)
    pattern = torch.softmax(scores, dim=-1) * sees_any
    out = torch.matmul(pattern, v)
    return out, pattern
