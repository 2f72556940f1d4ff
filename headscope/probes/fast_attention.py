"""Run a transformer-lens bridge with headscope's tiled attention kernel.

    results = {}
    with instrumented_attention(model.bridge, collector=lambda l, r: results.setdefault(l, r)):
        logits = model.bridge(tokens)

Inside the scope every attention layer computes with `kernels.tiled.tiled_attention`
and hands its `TiledAttentionResult` (statistics for all heads, full maps only
for the heads in `maps_for`) to `collector(layer, result)`; nothing holds an
N × N map for all heads. Everything is restored on exit, also after an exception.

Mechanism, and why. transformer-lens 4.x bridges compute attention in one of
two ways, so one seam does not cover both:

1. Bridges that *delegate* to the Hugging Face module (BERT-style encoders,
   GPT-J and OPT via the generic `AttentionBridge`) reach attention through
   transformers' `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`, which
   receives the projected, rotated q/k/v plus `scaling`, `sliding_window` and
   `softcap` (Gemma 2's attention logit softcapping). headscope registers an
   attention function and a mask function under the name `"headscope_tiled"`
   (`AttentionInterface` / `AttentionMaskInterface`) and switches the model's
   configs to it for the scope. The mask function keeps masks structured (the
   flash-attention convention): None or a `[batch, key]` padding mask for causal
   models, the same padding mask carrying its window (`WINDOW_ATTRIBUTE`) for
   sliding-window causal masks, a `[batch, 1, 1, key]` padding mask for
   bidirectional ones, so no `[batch, 1, N, N]` mask is built; other masks
   (chunked, packed sequences, overlays) are materialized as boolean masks and
   honoured as given. Hugging Face modules that delegate but compute attention
   themselves are patched per instance at their attention step
   (`_MODULE_PATCHES`: GPT-Neo's `_attn`, with its unscaled scores and local
   layers).
2. Bridges that *reconstruct* attention themselves, and so ignore the
   registry, are patched per instance. The fused-QKV bridges at their
   `_reconstruct_attention(q, k, v)` step, after the q/k/v sites and before the
   output projection where the z site fires: GPT-2 (`JointQKVAttentionBridge`),
   GPT-NeoX, Phi-3 and Falcon (`JointQKVPositionEmbeddingsAttentionBridge`; the
   bridge's partial rotary is applied first, grouped- and multi-query K/V are
   passed as they are) and BLOOM (`BloomAttentionBridge`; ALiBi goes to the
   kernel as slopes). Llama-style `PositionEmbeddingsAttentionBridge` (RoPE,
   grouped-query, q/k norms, sliding windows, softcapping) by routing its
   forward back through the Hugging Face module, whose q/k/v/o projections are
   the bridge's own LinearBridges — so the q/k/v/z sites fire as before — and
   whose attention call goes through the registry (1). Hugging Face applies
   RoPE exactly as the checkpoint expects; the kernel receives rotated q and k.

`attention_route(layer)` says which of these applies to a layer. Per-instance
patches touch only the bridge in scope (no global monkey-patching of classes),
and the registry entries are inert unless a config names them.
Sites (`probes.sites`): q, k, v, z, attn_in and everything outside attention
keep firing, so head gates and ablations on z work unchanged. The pattern and
scores sites do not fire (the maps are not computed for every head; ask for
them with `maps_for`); on Llama-style bridges the rotary points do not fire
either. Padding given as `attention_mask=` reaches the kernel as a key
padding mask: padded positions are excluded from the statistics.

The kernel is forward-only: calling the model with gradients enabled through
attention raises RuntimeError (use the eager bridge for gradient methods).

Not supported (raises NotImplementedError on entry or at the call): other
attention bridge classes (e.g. Falcon's ALiBi variant, MPT, T5-style relative
biases), learned attention sinks, dropout in training mode, and the bridge
options use_split_qkv_input / use_attn_in / use_attn_result on delegating
bridges. tests/probes/test_families.py checks every supported family against
Hugging Face (docs/models.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from headscope.errors import InputError
from headscope.kernels.reference import visible_keys
from headscope.kernels.tiled import TiledAttentionResult, tiled_attention
from headscope.probes.sites import input_point, output_point

ATTENTION_NAME = "headscope_tiled"
# A sliding-window causal mask travels as a `[batch, key]` padding mask with the
# window in this attribute (see `headscope_mask`).
WINDOW_ATTRIBUTE = "headscope_window"
Collector = Callable[[int, TiledAttentionResult], None]
MapSelection = Iterable[tuple[int, int]] | Mapping[int, Iterable[int]] | None


@dataclass(frozen=True)
class KernelOptions:
    """What the kernel computes for every layer in scope."""

    stats: bool = True
    top_k: int | None = None
    sink_k: int = 1
    query_tile: int | None = None
    distance_bins: int | None = None


@dataclass
class InstrumentedAttention:
    """The live scope: `calls[layer]` counts kernel calls per layer, so callers can
    check that every layer ran through the kernel."""

    n_layers: int
    maps_for: dict[int, tuple[int, ...]]
    options: KernelOptions
    collector: Collector
    calls: dict[int, int] = field(default_factory=dict)

    def run_layer(
        self,
        layer: int,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        causal: bool,
        mask: Tensor | None,
        scale: float | None,
        window: int | None = None,
        softcap: float | None = None,
        alibi_slopes: Tensor | None = None,
    ) -> Tensor:
        """Run the kernel for one layer; returns the output `[batch, head, query, d_head]`.

        `mask` as the model passed it (see `_interpret_mask`); a window carried by
        a headscope sliding-window mask applies when `window` is None."""
        if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
            # The kernel runs without autograd: a silent cut in the graph would give
            # wrong gradients upstream of attention.
            raise RuntimeError(
                "instrumented attention is forward-only: run the model under torch.no_grad() "
                "(gradients through attention need the eager bridge)"
            )
        if window is None:
            window = mask_window(mask)
        key_padding, explicit, causal = _interpret_mask(mask, causal, query.shape[2], key.shape[2])
        if key_padding is not None:
            key_padding = key_padding.expand(query.shape[0], -1)
        options = self.options
        result = tiled_attention(
            query,
            key,
            value,
            causal=causal,
            key_padding_mask=key_padding,
            window=window,
            alibi_slopes=alibi_slopes,
            attn_mask=explicit,
            scale=scale,
            softcap=softcap,
            query_tile=options.query_tile,
            stats=options.stats,
            sink_k=options.sink_k,
            top_k=options.top_k,
            keep_maps_for_heads=self.maps_for.get(layer),
            distance_bins=options.distance_bins,
        )
        self.calls[layer] = self.calls.get(layer, 0) + 1
        self.collector(layer, result)
        return result.output


# id(HF attention module) -> (scope, layer). Only modules of bridges in scope are here.
_ACTIVE: dict[int, tuple[InstrumentedAttention, int]] = {}


def _interpret_mask(
    mask: Tensor | None, causal: bool, n_query: int, n_key: int
) -> tuple[Tensor | None, Tensor | None, bool]:
    """(key padding `[batch, key]`, explicit mask, causal) from what the model passed.

    None / `[batch, key]`: the module's own causality plus key padding (the
    flash-attention convention). `[batch, 1, 1, key]`: bidirectional with key
    padding (headscope's mask function emits this for encoders). Any other 4D
    mask: used as given (bool or additive float), with no causality added; for
    self-attention, keys that no query may see are padding (every Hugging Face
    mask lets a real token see itself), so that padded queries are left out of
    the statistics as with structured masks.
    """
    if mask is None:
        return None, None, causal
    if mask.dim() == 2:
        return mask[:, -n_key:].bool(), None, causal
    if mask.dim() == 4 and mask.shape[-2] == 1 and mask.dtype == torch.bool:
        return mask[:, 0, 0, -n_key:], None, False
    if mask.dim() == 4:
        explicit = mask[..., -n_key:]
        padding = None
        if n_query == n_key:
            seen = visible_keys(explicit).any(dim=-2).any(dim=1)  # [batch or 1, key]
            padding = None if bool(seen.all()) else seen
        return padding, explicit, False
    raise NotImplementedError(f"unsupported attention mask of shape {tuple(mask.shape)}")


def mask_window(mask: Tensor | None) -> int | None:
    """The sliding window a `headscope_mask` padding mask stands for (None: none)."""
    return getattr(mask, WINDOW_ATTRIBUTE, None) if mask is not None else None


def _reject_unsupported(module: torch.nn.Module, dropout: float, kwargs: dict) -> None:
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("the tiled kernel does not implement learned attention sinks")
    if module.training and dropout:
        raise NotImplementedError("instrumented attention runs in eval mode only (dropout > 0)")


def headscope_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers attention-interface entry: q `[batch, head, query, d_head]`, k/v
    `[batch, kv_head, key, d_head]` (not repeated); returns (`[batch, query, head,
    d_head]`, None) like the sdpa and flash implementations."""
    entry = _ACTIVE.get(id(module))
    if entry is None:
        raise RuntimeError(
            f"{type(module).__name__} asked for the {ATTENTION_NAME!r} attention outside an "
            "instrumented_attention() scope"
        )
    scope, layer = entry
    _reject_unsupported(module, dropout, kwargs)
    causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", True))
    window = kwargs.get("sliding_window")
    carried = mask_window(attention_mask)
    if window and carried and int(window) != carried:
        raise NotImplementedError(
            f"{type(module).__name__} asks for a sliding window of {window} with a mask "
            f"built for {carried}"
        )
    softcap = kwargs.get("softcap")
    output = scope.run_layer(
        layer,
        query,
        key,
        value,
        causal=causal,
        mask=attention_mask,
        scale=scaling,
        window=int(window) if window else carried,
        softcap=float(softcap) if softcap else None,
    )
    return output.transpose(1, 2).contiguous(), None


def headscope_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: Any = 0,
    mask_function: Callable | None = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor | None:
    """transformers mask-interface entry: structured masks for plain causal,
    sliding-window causal and bidirectional attention (see the module
    docstring), a boolean `[batch, 1, query, key]` mask for anything else.

    A sliding-window causal mask is returned as the `[batch, key]` padding mask
    (all True without padding) carrying its window in the attribute
    `WINDOW_ATTRIBUTE`, so that attention calls without a `sliding_window`
    argument (bridges that reconstruct attention) still honour it.
    """
    from transformers.masking_utils import (
        bidirectional_mask_function,
        causal_mask_function,
        prepare_padding_mask,
        sdpa_mask,
    )

    mask_function = mask_function or causal_mask_function
    aligned = (
        isinstance(q_offset, int)
        and isinstance(kv_offset, int)
        and q_offset == 0
        and kv_offset == 0
        and q_length == kv_length
    )
    window = _sliding_window_of(mask_function, kwargs, kv_length) if aligned else None
    plain = aligned and mask_function in (causal_mask_function, bidirectional_mask_function)
    if not plain and window is None:
        for name in (
            "allow_is_causal_skip",
            "allow_is_bidirectional_skip",
            "dtype",
            "config",
            "local_size",
        ):
            kwargs.pop(name, None)
        return sdpa_mask(
            batch_size=batch_size,
            q_length=q_length,
            kv_length=kv_length,
            q_offset=q_offset,
            kv_offset=kv_offset,
            mask_function=mask_function,
            attention_mask=attention_mask,
            allow_is_causal_skip=False,
            allow_is_bidirectional_skip=False,
            **kwargs,
        )
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    if padding is not None:
        padding = padding[:, -kv_length:].bool()
    if window is not None:
        if padding is None:
            padding = torch.ones(
                batch_size, kv_length, dtype=torch.bool, device=kwargs.get("device")
            )
        else:
            padding = padding.clone()  # a fresh tensor to carry the window
        setattr(padding, WINDOW_ATTRIBUTE, window)
        return padding
    if mask_function is causal_mask_function:
        return None if padding is None or bool(padding.all()) else padding
    if padding is None:
        padding = torch.ones(batch_size, kv_length, dtype=torch.bool, device=kwargs.get("device"))
    return padding[:, None, None, :]


def _sliding_window_of(mask_function: Callable, kwargs: dict, n: int) -> int | None:
    """The window w when `mask_function` is Hugging Face's sliding-window causal
    mask (key k visible from query q iff q − w < k ≤ q), else None.

    transformers passes the window as `local_size` together with
    `allow_is_causal_skip=True` only for unmodified sliding-window and chunked
    causal masks; probing a few query rows (O(rows · key)) tells the two apart.
    Anything else falls back to a materialized mask, which is always correct.
    """
    window = kwargs.get("local_size")
    if not window or not kwargs.get("allow_is_causal_skip") or kwargs.get("use_vmap"):
        return None
    window = int(window)
    device = kwargs.get("device")
    rows = sorted({0, 1, window - 1, window, window + 1, n // 2, n - 1} & set(range(n)))
    query = torch.tensor(rows, device=device)[:, None]
    key = torch.arange(n, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    try:
        shown = mask_function(zero, zero, query, key)
    except (TypeError, IndexError, RuntimeError):  # not tensor-friendly: materialize
        return None
    expected = (key <= query) & (key > query - window)
    if not isinstance(shown, Tensor) or not torch.equal(shown.expand_as(expected), expected):
        return None
    return window


def register_attention() -> None:
    """Register `headscope_tiled` with transformers (idempotent; inert until a
    model config names it)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, headscope_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, headscope_mask)


# -- per-instance patches ------------------------------------------------------------------------


def _joint_qkv_reconstruct(
    bridge_attention: Any, scope: InstrumentedAttention, layer: int, kind: str = "joint_qkv"
):
    """Replacement for the `_reconstruct_attention(q, k, v)` step of the fused-QKV
    bridges: the same reshapes, rotary, KV cache and output projection as the
    bridge, with the tiled kernel in between. `kind`:

    - "joint_qkv" (GPT-2, JointQKVAttentionBridge): 1/√d_head, divided by
      layer + 1 with `scale_attn_by_inverse_layer_idx`.
    - "joint_qkv_rotary" (GPT-NeoX, Phi-3, Falcon;
      JointQKVPositionEmbeddingsAttentionBridge): the bridge's (partial) rotary
      from the model's `position_embeddings` (its cos/sin sites fire), grouped-
      and multi-query K/V as they are, the Hugging Face module's scale; a
      sliding window travels with the mask (`headscope_mask`).
    - "bloom" (BloomAttentionBridge): ALiBi as the kernel's −slope·|q − k| with
      BLOOM's slopes; BLOOM adds slope·k, which differs by a per-query constant
      that softmax ignores.
    """

    def reconstruct(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> tuple:
        self = bridge_attention
        hf = self.original_component
        n_heads = self.config.n_heads
        n_kv = getattr(self.config, "n_key_value_heads", None) or n_heads
        if kind == "bloom":
            n_kv = n_heads
        q, k, v, batch, n_query, d_head = self._reshape_qkv_to_heads(q, k, v, n_heads, n_kv)
        scale = d_head**-0.5
        slopes = None
        if kind == "joint_qkv":
            if getattr(self.config, "scale_attn_by_inverse_layer_idx", False) and (
                self._layer_idx is not None
            ):
                scale /= float(self._layer_idx + 1)
        elif kind == "joint_qkv_rotary":
            position_embeddings = kwargs.get("position_embeddings")
            if isinstance(position_embeddings, tuple):
                cos, sin = self._apply_position_embedding_hooks(position_embeddings)
                q, k = self._apply_rotary_pos_emb(q, k, cos, sin)
            scale = float(
                getattr(hf, "scaling", None) or getattr(hf, "inv_norm_factor", None) or scale
            )
        elif kind == "bloom" and kwargs.get("alibi") is not None:
            slopes = _bloom_slopes(n_heads, q.device)
        k, v = self._update_kv_cache(k, v, **kwargs)
        dropout = _dropout_of(hf)
        _reject_unsupported(self, dropout, {})
        output = scope.run_layer(
            layer,
            q,
            k,
            v,
            causal=bool(self.is_causal and not getattr(self, "is_cross_attention", False)),
            mask=kwargs.get("attention_mask"),
            scale=scale,
            alibi_slopes=slopes,
        )
        output = self._reshape_attn_output(output, batch, n_query, n_heads, d_head)
        if getattr(self.config, "use_attn_result", False) and self.o.original_component is not None:
            output = input_point(self.o)(output)
            z = output.view(batch, n_query, n_heads, d_head)
            output = self._compute_per_head_result(z, n_heads, d_head)
        else:
            output = self._apply_output_projection(output)
        return (output, None)

    return reconstruct


def _dropout_of(module: Any) -> float:
    """The attention-probability dropout of a Hugging Face attention module."""
    for name in ("attn_dropout", "attention_dropout"):
        value = getattr(module, name, None)
        if isinstance(value, torch.nn.Dropout):
            return float(value.p)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def _bloom_slopes(n_heads: int, device: torch.device) -> Tensor:
    """BLOOM's ALiBi slopes, exactly as its modeling code computes them."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    ones = torch.ones(1, 2, device=device)
    return build_alibi_tensor(ones, n_heads, torch.float32)[:, 0, 1]


def _gpt_neo_attention(module: Any, scope: InstrumentedAttention, layer: int):
    """Replacement for GPTNeoSelfAttention._attn(q, k, v, mask): GPT-Neo does not
    scale its scores, and its "local" layers see the keys q − window < k ≤ q."""

    def attend(query: Tensor, key: Tensor, value: Tensor, attention_mask: Any = None) -> tuple:
        _reject_unsupported(module, _dropout_of(module), {})
        local = getattr(module, "attention_type", "global") == "local"
        output = scope.run_layer(
            layer,
            query,
            key,
            value,
            causal=True,
            mask=attention_mask,
            scale=1.0,
            window=int(module.config.window_size) if local else None,
        )
        return output.to(value.dtype), None

    return attend


#: Hugging Face attention modules that neither use the attention registry nor sit
#: under a reconstructing bridge: class name -> (method to replace, replacement).
_MODULE_PATCHES: dict[str, tuple[str, Callable]] = {
    "GPTNeoSelfAttention": ("_attn", _gpt_neo_attention),
}


def _delegating_forward(bridge_attention: Any):
    """Forward that routes a reconstructing bridge back through its Hugging Face
    module (whose projections are the bridge's LinearBridges, so hooks fire)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        self = bridge_attention
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = input_point(self)(kwargs["hidden_states"])
        else:
            args = (input_point(self)(args[0]), *args[1:])
        output = self.original_component(*args, **kwargs)
        if isinstance(output, tuple):
            return (output_point(self)(output[0]), *output[1:])
        return output_point(self)(output)

    return forward


_JOINT_KINDS = ("joint_qkv", "joint_qkv_rotary", "bloom")


def _attention_kind(bridge_attention: Any) -> str:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    from transformer_lens.model_bridge.generalized_components.bloom_attention import (
        BloomAttentionBridge,
    )
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import (
        JointQKVAttentionBridge,
    )
    from transformer_lens.model_bridge.generalized_components.joint_qkv_position_embeddings_attention import (  # noqa: E501
        JointQKVPositionEmbeddingsAttentionBridge,
    )
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    kinds = {
        JointQKVAttentionBridge: "joint_qkv",
        JointQKVPositionEmbeddingsAttentionBridge: "joint_qkv_rotary",
        BloomAttentionBridge: "bloom",
        PositionEmbeddingsAttentionBridge: "position_embeddings",
        AttentionBridge: "delegating",
    }
    kind = kinds.get(type(bridge_attention))
    if kind is None:
        raise NotImplementedError(
            "instrumented attention supports the fused-QKV (GPT-2, GPT-NeoX, Phi-3, Falcon, "
            "BLOOM), Llama-style and delegating attention bridges; this model uses "
            f"{type(bridge_attention).__name__}"
        )
    return kind


_ROUTES = {
    "joint_qkv": "fused-QKV bridge: its reconstruct step",
    "joint_qkv_rotary": "fused-QKV rotary bridge: its reconstruct step",
    "bloom": "BLOOM bridge: its ALiBi reconstruct step",
    "position_embeddings": "Hugging Face module (routed back): attention registry",
    "delegating": "Hugging Face module: attention registry",
}


def attention_route(bridge_attention: Any) -> str:
    """Where `instrumented_attention` puts the kernel in one attention layer of a
    bridge, in words (for the family matrix and reports). Raises
    NotImplementedError for layers it cannot instrument."""
    kind = _attention_kind(bridge_attention)
    if kind not in _JOINT_KINDS:
        for module in bridge_attention.original_component.modules():
            patch = _MODULE_PATCHES.get(type(module).__name__)
            if patch is not None:
                return f"Hugging Face module: {type(module).__name__}.{patch[0]} patched"
    return _ROUTES[kind]


def _uses_attention_registry(module: torch.nn.Module) -> bool:
    import sys

    source = sys.modules.get(type(module).__module__)
    return source is not None and hasattr(source, "ALL_ATTENTION_FUNCTIONS")


def _configs(model: torch.nn.Module) -> list[Any]:
    """Every distinct config object the model and its modules (and sub-configs) hold."""
    seen: dict[int, Any] = {}
    pending = [getattr(m, "config", None) for m in model.modules()]
    while pending:
        config = pending.pop()
        if config is None or id(config) in seen or not hasattr(config, "_attn_implementation"):
            continue
        seen[id(config)] = config
        for name in getattr(config, "sub_configs", {}) or {}:
            pending.append(getattr(config, name, None))
    return list(seen.values())


def _resolve_maps(
    maps_for: MapSelection, n_layers: int, n_heads: int
) -> dict[int, tuple[int, ...]]:
    if maps_for is None:
        return {}
    pairs = (
        [(layer, head) for layer, heads in maps_for.items() for head in heads]
        if isinstance(maps_for, Mapping)
        else list(maps_for)
    )
    chosen: dict[int, set[int]] = {}
    for layer, head in pairs:
        if not (0 <= int(layer) < n_layers and 0 <= int(head) < n_heads):
            raise InputError(
                f"map head ({layer}, {head}) is out of range: {n_layers} layers × {n_heads} heads"
            )
        chosen.setdefault(int(layer), set()).add(int(head))
    return {layer: tuple(sorted(heads)) for layer, heads in chosen.items()}


@contextmanager
def instrumented_attention(
    bridge: Any,
    *,
    collector: Collector,
    maps_for: MapSelection = None,
    stats: bool = True,
    top_k: int | None = None,
    sink_k: int = 1,
    query_tile: int | None = None,
    distance_bins: int | None = None,
) -> Iterator[InstrumentedAttention]:
    """Within the scope, every attention layer of `bridge` (a transformer-lens
    TransformerBridge) runs the tiled kernel and calls `collector(layer, result)`.

    `maps_for`: (layer, head) pairs, or {layer: heads}, whose full maps the
    kernel keeps (`result.maps`, heads in `result.map_heads`). `stats`, `top_k`,
    `sink_k`, `query_tile`, `distance_bins`: passed to `tiled_attention`.
    The bridge, its configs and the registry are restored on exit, also after an
    exception. Raises NotImplementedError for unsupported attention layers and
    RuntimeError when the bridge is already instrumented.
    Memory per layer call: the kernel's (a few batch·head·query_tile·key float
    buffers) plus whatever the collector keeps.
    """
    register_attention()
    n_layers = len(bridge.blocks)
    n_heads = int(bridge.cfg.n_heads)
    scope = InstrumentedAttention(
        n_layers=n_layers,
        maps_for=_resolve_maps(maps_for, n_layers, n_heads),
        options=KernelOptions(stats, top_k, sink_k, query_tile, distance_bins),
        collector=collector,
    )
    attentions = [block.attn for block in bridge.blocks]
    kinds = [_attention_kind(attention) for attention in attentions]
    split_flags = ("use_split_qkv_input", "use_attn_in", "use_attn_result")
    module_patches: list[tuple[torch.nn.Module, str, Callable]] = []
    for layer, (attention, kind) in enumerate(zip(attentions, kinds, strict=True)):
        if kind in _JOINT_KINDS:
            continue
        if any(getattr(bridge.cfg, flag, False) for flag in split_flags):
            raise NotImplementedError(
                f"{', '.join(split_flags)} are not supported with instrumented attention on "
                f"{type(attention).__name__} layers"
            )
        inner = [m for m in attention.original_component.modules() if _uses_attention_registry(m)]
        patched = [
            (module, *_MODULE_PATCHES[type(module).__name__])
            for module in attention.original_component.modules()
            if type(module).__name__ in _MODULE_PATCHES
        ]
        if not inner and not patched:
            raise NotImplementedError(
                f"{type(attention.original_component).__name__} does not dispatch through "
                "transformers' attention registry"
            )
        module_patches += [
            (module, name, make(module, scope, layer)) for module, name, make in patched
        ]
    modules = {
        id(module): (scope, layer)
        for layer, (attention, kind) in enumerate(zip(attentions, kinds, strict=True))
        if kind not in _JOINT_KINDS
        for module in attention.original_component.modules()
    }
    if (
        any(key in _ACTIVE for key in modules)
        or any("_reconstruct_attention" in vars(a) or "forward" in vars(a) for a in attentions)
        or any(name in vars(module) for module, name, _ in module_patches)
    ):
        raise RuntimeError("this bridge is already instrumented")

    configs = _configs(bridge.original_model)
    previous = [getattr(config, "_attn_implementation_internal", None) for config in configs]
    try:
        for layer, (attention, kind) in enumerate(zip(attentions, kinds, strict=True)):
            # object.__setattr__: bridge components forward unknown attribute writes
            # to the wrapped HF module; the patch must land on this instance only.
            if kind in _JOINT_KINDS:
                patch = _joint_qkv_reconstruct(attention, scope, layer, kind)
                object.__setattr__(attention, "_reconstruct_attention", patch)
            elif kind == "position_embeddings":
                object.__setattr__(attention, "forward", _delegating_forward(attention))
        for module, name, patch in module_patches:
            object.__setattr__(module, name, patch)
        _ACTIVE.update(modules)
        for config in configs:
            config._attn_implementation_internal = ATTENTION_NAME
        yield scope
    finally:
        for config, value in zip(configs, previous, strict=True):
            config._attn_implementation_internal = value
        for key in modules:
            _ACTIVE.pop(key, None)
        for attention in attentions:
            vars(attention).pop("_reconstruct_attention", None)
            vars(attention).pop("forward", None)
        for module, name, _ in module_patches:
            vars(module).pop(name, None)
