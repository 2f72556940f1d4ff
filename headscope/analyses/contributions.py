"""The residual contribution graph of one token (docs/methods.md §6), the view of
the LLM Transparency Tool (Tufanov et al. 2024) built from the information-flow
routes of Ferrando & Voita 2024 ("Information Flow Routes: Automatically
Interpreting Language Models at Scale").

In a pre-norm transformer each block adds to the residual stream:
mid_l = resid_l + Σ_h head_{l,h} + b_O[l] and resid_{l+1} = mid_l + MLP_l. Each
node that is such a sum gets one incoming edge per part, weighted by the part's
proximity share (Ferrando et al. 2022, ALTI):

    share_i = max(0, ‖x‖₁ − ‖x − p_i‖₁) / Σ_j max(0, ‖x‖₁ − ‖x − p_j‖₁)

for the whole x = Σ_j p_j. A part close to the whole gets a large share, a part
pointing away from it none; the shares into a node sum to 1 (0 everywhere when no
part is closer to the whole than the origin). Unlike a projection the share is
never negative, and unlike a norm share it discounts a large part that the
others cancel. Edges below `min_share` are dropped (the LLM Transparency Tool's
threshold); nodes are kept.

Pure: tensors in, a networkx DiGraph out. Memory: O(layers · heads · d_model).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import InputError


def proximity_shares(
    parts: Float[Tensor, "part d_model"], whole: Float[Tensor, " d_model"]
) -> Float[Tensor, " part"]:
    """Each part's proximity share of `whole` (module docstring): non-negative,
    summing to 1, or all 0 when no part is closer to the whole than the origin.
    The parts are expected to sum to the whole (not checked: the share is
    defined for any parts, as in ALTI)."""
    if parts.shape[-1] != whole.shape[-1]:
        raise InputError(f"parts have width {parts.shape[-1]}, the whole {whole.shape[-1]}")
    whole64, parts64 = whole.double(), parts.double()
    closeness = (whole64.abs().sum() - (whole64 - parts64).abs().sum(-1)).clamp_min(0.0)
    total = closeness.sum()
    return closeness / total if total > 0 else torch.zeros_like(closeness)


@dataclass(frozen=True)
class ContributionGraph:
    """The contribution graph of one token (`contribution_graph`).

    `graph`: nodes `residual/<stage>` (stage 0: after the embeddings; stage l+1:
    after layer l), `mid/<l>` (after layer l's attention), `head/<l>/<h>`,
    `bias/<l>` (layer l's b_O) and `mlp/<l>`, each with `kind`, `layer`, `head`
    and `label`; edges part → whole with `share` ≥ `min_share`. The full share
    tensors (before the threshold): `residual_to_mid[l]`, `head_to_mid[l, h]`,
    `bias_to_mid[l]`, `mid_to_residual[l]`, `mlp_to_residual[l]`."""

    graph: nx.DiGraph
    residual_to_mid: Float[Tensor, " layer"]
    head_to_mid: Float[Tensor, "layer head"]
    bias_to_mid: Float[Tensor, " layer"]
    mid_to_residual: Float[Tensor, " layer"]
    mlp_to_residual: Float[Tensor, " layer"]
    min_share: float

    @property
    def n_layers(self) -> int:
        return int(self.head_to_mid.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.head_to_mid.shape[1])


def residual_node(stage: int) -> str:
    return f"residual/{stage}"


def mid_node(layer: int) -> str:
    return f"mid/{layer}"


def head_node(layer: int, head: int) -> str:
    return f"head/{layer}/{head}"


def bias_node(layer: int) -> str:
    return f"bias/{layer}"


def mlp_node(layer: int) -> str:
    return f"mlp/{layer}"


def contribution_graph(
    embeddings: Float[Tensor, " d_model"],
    heads: Float[Tensor, "layer head d_model"],
    attention_bias: Float[Tensor, "layer d_model"],
    mlps: Float[Tensor, "layer d_model"],
    *,
    min_share: float = 0.04,
) -> ContributionGraph:
    """The contribution graph of one token from the parts of its residual stream:
    `embeddings` (token plus positions: the residual entering layer 0), each head's
    output `heads[l, h]` (z·W_O), each layer's output bias and MLP output. The
    residual after each block is rebuilt as the running sum (module docstring)."""
    if not 0.0 <= min_share <= 1.0:
        raise InputError(f"min_share must lie in [0, 1], got {min_share!r}")
    n_layers, n_heads, _ = heads.shape
    if attention_bias.shape[0] != n_layers or mlps.shape[0] != n_layers:
        raise InputError("heads, attention_bias and mlps must have one entry per layer")
    graph = nx.DiGraph()
    graph.add_node(residual_node(0), kind="residual", layer=-1, head=None, label="embeddings")
    residual = embeddings.double()
    to_mid, head_share, bias_share, from_mid, mlp_share = [], [], [], [], []
    for layer in range(n_layers):
        mid = residual + heads[layer].double().sum(0) + attention_bias[layer].double()
        parts = torch.cat(
            [residual[None], heads[layer].double(), attention_bias[layer].double()[None]]
        )
        shares = proximity_shares(parts, mid)
        to_mid.append(shares[0])
        head_share.append(shares[1:-1])
        bias_share.append(shares[-1])
        after = mid + mlps[layer].double()
        block = proximity_shares(torch.stack([mid, mlps[layer].double()]), after)
        from_mid.append(block[0])
        mlp_share.append(block[1])

        graph.add_node(
            mid_node(layer), kind="mid", layer=layer, head=None, label=f"after attention {layer}"
        )
        graph.add_node(
            residual_node(layer + 1),
            kind="residual",
            layer=layer,
            head=None,
            label=f"after layer {layer}",
        )
        graph.add_node(bias_node(layer), kind="bias", layer=layer, head=None, label=f"b_O {layer}")
        graph.add_node(mlp_node(layer), kind="mlp", layer=layer, head=None, label=f"MLP {layer}")
        incoming = [(residual_node(layer), float(shares[0])), (bias_node(layer), float(shares[-1]))]
        for head in range(n_heads):
            graph.add_node(
                head_node(layer, head),
                kind="head",
                layer=layer,
                head=head,
                label=f"L{layer}H{head}",
            )
            incoming.append((head_node(layer, head), float(shares[1 + head])))
        for source, share in incoming:
            if share >= min_share and share > 0:
                graph.add_edge(source, mid_node(layer), share=share)
        for source, share in (
            (mid_node(layer), float(block[0])),
            (mlp_node(layer), float(block[1])),
        ):
            if share >= min_share and share > 0:
                graph.add_edge(source, residual_node(layer + 1), share=share)
        residual = after
    return ContributionGraph(
        graph=graph,
        residual_to_mid=torch.stack(to_mid).float(),
        head_to_mid=torch.stack(head_share).float(),
        bias_to_mid=torch.stack(bias_share).float(),
        mid_to_residual=torch.stack(from_mid).float(),
        mlp_to_residual=torch.stack(mlp_share).float(),
        min_share=float(min_share),
    )
