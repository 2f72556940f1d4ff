"""The one typed vocabulary for hook sites.

A `Site` names where in the model a probe reads or writes; `hook_name` turns it
into the transformer-lens 4.x hook-point string. Hook-name strings live only
in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Component = Literal[
    "q",  # queries per head, after projection (before RoPE) [batch, position, head, d_head]
    "k",  # keys per kv head [batch, position, kv_head, d_head]
    "v",  # values per kv head [batch, position, kv_head, d_head]
    "z",  # each head's output before W_O [batch, position, head, d_head]
    "pattern",  # attention probabilities [batch, head, query, key]
    "scores",  # attention scores (pre-softmax where the bridge exposes them)
    "attn_out",  # attention block output [batch, position, d_model]
    "resid_pre",  # residual stream entering the block [batch, position, d_model]
    "resid_post",  # residual stream leaving the block [batch, position, d_model]
]

_HOOKS: dict[str, str] = {
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "scores": "blocks.{layer}.attn.hook_attn_scores",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_post": "blocks.{layer}.hook_out",
}

COMPONENTS: tuple[str, ...] = tuple(_HOOKS)


@dataclass(frozen=True, order=True)
class Site:
    """A place in the model: a layer, a component, and optionally one head."""

    layer: int
    component: Component
    head: int | None = None

    def __post_init__(self) -> None:
        if self.component not in _HOOKS:
            raise ValueError(f"unknown component {self.component!r}; choose from {COMPONENTS}")
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.head is not None and self.head < 0:
            raise ValueError(f"head must be >= 0 or None, got {self.head}")

    @property
    def hook_name(self) -> str:
        return hook_name(self)


def hook_name(site: Site) -> str:
    """The transformer-lens hook-point name for a site (the head is not part of it)."""
    return _HOOKS[site.component].format(layer=site.layer)
