"""Per-head summary of attention maps: the numbers the CLI's head table shows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.analyses.checks import check_pattern


@dataclass(frozen=True)
class HeadSummary:
    """Means over queries, per `[layer, head]`: entropy (nats), max weight,
    mass on the first token (key 0), previous-token mass (queries q ≥ 1, key q−1)."""

    entropy: Float[Tensor, "layer head"]
    max_weight: Float[Tensor, "layer head"]
    first_token: Float[Tensor, "layer head"]
    previous_token: Float[Tensor, "layer head"]


def head_summary(pattern: Float[Tensor, "layer head query key"]) -> HeadSummary:
    """Summarize one prompt's maps. Memory: one `[layer, head, query, key]` temporary."""
    check_pattern(pattern, min_dims=4)
    p = pattern.double()
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean(-1)
    n = p.shape[-1]
    q = torch.arange(1, n)
    previous = p[..., q, q - 1].mean(-1) if n > 1 else torch.zeros(p.shape[:2], dtype=p.dtype)
    return HeadSummary(
        entropy=entropy.float(),
        max_weight=p.amax(-1).mean(-1).float(),
        first_token=p[..., 0].mean(-1).float(),
        previous_token=previous.float(),
    )
