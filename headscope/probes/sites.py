"""The one typed vocabulary for places in a model, and the only module that knows
their transformer-lens hook-point names.

A `Site` names where a probe reads or writes: a layer, a component and
optionally one head. Per-layer components need a layer; model-level components
(`embed`, `final_norm`, `unembed_in`) take `layer=None`. `point_name(site)`
turns a site into the transformer-lens 4.x hook-point string; `probes.run` is
the only caller that turns it into a hook.

Shapes (transformer-lens 4.x, batch first):

| component | shape | head axis |
| --- | --- | --- |
| q | `[batch, position, head, d_head]` (before RoPE) | 2 |
| k, v | `[batch, position, kv_head, d_head]` | 2 |
| z | `[batch, position, head, d_head]`, each head's output before W_O | 2 |
| pattern | `[batch, head, query, key]`, attention probabilities | 1 |
| scores | `[batch, head, query, key]`, pre-softmax scores | 1 |
| attn_in | `[batch, position, d_model]`, what the attention layer reads | — |
| ln1_out | `[batch, position, d_model]`, the first norm's output | — |
| attn_out, mlp_out | `[batch, position, d_model]`, the block's attention / MLP output | — |
| resid_pre, resid_post | `[batch, position, d_model]`, residual entering / leaving | — |
| embed | `[batch, position, d_model]`, token embedding | — |
| final_norm | `[batch, position, d_model]`, the final norm's output | — |
| unembed_in | `[batch, position, d_model]`, what the unembedding reads | — |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from headscope.errors import InputError

Component = Literal[
    "q",
    "k",
    "v",
    "z",
    "pattern",
    "scores",
    "attn_in",
    "ln1_out",
    "attn_out",
    "mlp_out",
    "resid_pre",
    "resid_post",
    "embed",
    "final_norm",
    "unembed_in",
]

_POINTS: dict[str, str] = {
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "scores": "blocks.{layer}.attn.hook_attn_scores",
    "attn_in": "blocks.{layer}.attn.hook_in",
    "ln1_out": "blocks.{layer}.ln1.hook_out",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_post": "blocks.{layer}.hook_out",
    "embed": "hook_embed",
    "final_norm": "ln_final.hook_out",
    "unembed_in": "unembed.hook_in",
}

COMPONENTS: tuple[str, ...] = tuple(_POINTS)
#: Components with one value per model, not per layer (`Site(None, ...)`).
MODEL_LEVEL: frozenset[str] = frozenset({"embed", "final_norm", "unembed_in"})
#: Components with a head axis, and where it is.
HEAD_AXIS: dict[str, int] = {"q": 2, "k": 2, "v": 2, "z": 2, "pattern": 1, "scores": 1}


@dataclass(frozen=True, order=True)
class Site:
    """A place in the model: a layer (None for model-level components), a
    component, and optionally one head (only for components with a head axis;
    for k and v the head is a kv head)."""

    layer: int | None
    component: Component
    head: int | None = None

    def __post_init__(self) -> None:
        if self.component not in _POINTS:
            raise InputError(f"unknown component {self.component!r}; choose from {COMPONENTS}")
        if self.component in MODEL_LEVEL:
            if self.layer is not None:
                raise InputError(f"{self.component!r} is model-level: use layer=None")
        elif not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise InputError(f"layer must be an int >= 0, got {self.layer!r}")
        if self.head is not None:
            if self.component not in HEAD_AXIS:
                raise InputError(f"{self.component!r} has no head axis; use head=None")
            if not isinstance(self.head, int) or isinstance(self.head, bool) or self.head < 0:
                raise InputError(f"head must be an int >= 0 or None, got {self.head!r}")

    @property
    def point(self) -> str:
        """The transformer-lens hook-point name (the head is not part of it)."""
        return point_name(self)

    @property
    def hook_name(self) -> str:
        """Alias of `point`, kept for callers of headscope 0.1."""
        return point_name(self)

    @property
    def head_axis(self) -> int | None:
        return HEAD_AXIS.get(self.component)

    def whole(self) -> Site:
        """The same site without its head (the tensor the hook point carries)."""
        return Site(self.layer, self.component)


def point_name(site: Site) -> str:
    """The transformer-lens hook-point name of `site`."""
    return _POINTS[site.component].format(layer=site.layer)


def input_point(component: Any) -> Any:
    """A bridge component's own input hook point (a module to call on its input
    when a patched forward replaces the component's, so hooks keep firing)."""
    return component.hook_in


def output_point(component: Any) -> Any:
    """A bridge component's own output hook point (see `input_point`)."""
    return component.hook_out


def available(model: Any, site: Site) -> bool:
    """Whether the model's bridge exposes `site` (a hook point of that name)."""
    return point_name(site) in model.bridge.hook_dict


def layer_sites(component: Component, n_layers: int) -> list[Site]:
    """`Site(layer, component)` for every layer."""
    return [Site(layer, component) for layer in range(n_layers)]


def missing(model: Any, sites: Iterable[Site]) -> list[Site]:
    """The sites the model's bridge does not expose."""
    return [site for site in sites if not available(model, site)]
