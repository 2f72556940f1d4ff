"""Model diffing: two models of the same shape, head by head (docs/methods.md §2.14).

- `score_deltas`: per head, the mean over prompts of the paired difference
  B − A of a per-prompt score, with its percentile-bootstrap interval over
  prompts (`uncertainty.bootstrap_interval`, §2.10). The same prompts run
  through both models, so the difference is paired and the prompt-to-prompt
  spread that both share cancels.
- `map_similarity`: per layer, the Pearson correlation between every head of A
  and every head of B of their attention maps, over the (query, key) entries
  each query may see, pooled over prompts (the map similarity of CHAI,
  Agarwal et al. 2024, across two models instead of within one).
- `match_heads`: per layer, the one-to-one matching of A's heads to B's that
  maximises the summed similarity (the Hungarian algorithm, Kuhn 1955, via
  `scipy.optimize.linear_sum_assignment`). Heads are only defined up to a
  permutation within a layer (permuting the heads of a layer, with their
  rows of W_Q, W_K, W_V and columns of W_O, leaves the function unchanged),
  so head 3 of one checkpoint need not be head 3 of another.
- `matching_margin`: per matched pair, the summed similarity the best matching
  *without* that pair loses. Near 0 the maps do not decide the pair (e.g. the
  near-uniform heads of a randomly initialised model): another matching is as
  good, and the pair is reported as ambiguous (below `AMBIGUOUS_MARGIN`).

Pure: tensors in, no model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from headscope.analyses.uncertainty import Interval, bootstrap_interval
from headscope.errors import InputError

#: A matched pair whose matching margin (summed correlation) is below this is ambiguous.
AMBIGUOUS_MARGIN = 0.05


@dataclass(frozen=True)
class ModelDiff:
    """Model B against model A, head by head.

    - `deltas`: category (and "importance" when scored) → the per-head mean
      B − A over `prompts` prompts with its 95% bootstrap interval (an
      `Interval`; `.significant` where it excludes 0);
    - `scores_a`, `scores_b`: the two models' mean scores `[layer, head]`;
    - `labels_a`, `labels_b`: primary taxonomy labels `[layer][head]`;
      `label_changed`: where they differ;
    - `similarity`: `[layer, head_a, head_b]` map correlation (`map_similarity`);
    - `matching`: `[layer, head_a]` the head of B matched to each head of A
      (`match_heads`); `matched_similarity` its correlation.
    """

    name_a: str
    name_b: str
    prompts: int
    deltas: dict[str, Interval]
    scores_a: dict[str, Float[Tensor, "layer head"]]
    scores_b: dict[str, Float[Tensor, "layer head"]]
    labels_a: tuple[tuple[str, ...], ...]
    labels_b: tuple[tuple[str, ...], ...]
    similarity: Float[Tensor, "layer head head"]
    matching: Int[Tensor, "layer head"]
    matched_similarity: Float[Tensor, "layer head"]

    @property
    def label_changed(self) -> Bool[Tensor, "layer head"]:
        return torch.tensor(
            [
                [a != b for a, b in zip(row_a, row_b, strict=True)]
                for row_a, row_b in zip(self.labels_a, self.labels_b, strict=True)
            ],
            dtype=torch.bool,
        )

    @cached_property
    def matching_margin(self) -> Float[Tensor, "layer head"]:
        """Per head of A, how much summed similarity the best matching without its
        pair loses (`matching_margin`); below AMBIGUOUS_MARGIN the pair is ambiguous."""
        return matching_margin(self.similarity, self.matching)

    @property
    def ambiguous(self) -> Bool[Tensor, "layer head"]:
        """Matched pairs that the maps do not decide (margin below AMBIGUOUS_MARGIN)."""
        return self.matching_margin < AMBIGUOUS_MARGIN

    @property
    def identity_matched(self) -> bool:
        """True when every head of A is matched to the same head of B."""
        n_heads = self.matching.shape[1]
        return bool((self.matching == torch.arange(n_heads)[None]).all())


def score_deltas(
    values_a: Mapping[str, Tensor],
    values_b: Mapping[str, Tensor],
    *,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Per key (`[prompt, layer, head]` values of each model on the same
    prompts), the paired difference B − A over prompts: mean and bootstrap
    interval per head. Prompts where either value is NaN (a category
    undefined there) are left out of that key; a key defined on no prompt gets
    NaN. Equal inputs give zero deltas with zero-width intervals.
    Memory: 2000 resamples × heads float64 per key."""
    out: dict[str, Interval] = {}
    for key in values_a:
        if key not in values_b:
            continue
        a, b = values_a[key].double(), values_b[key].double()
        if a.shape != b.shape:
            raise InputError(f"{key}: shapes differ, {list(a.shape)} vs {list(b.shape)}")
        difference = b - a
        defined = ~torch.isnan(difference).flatten(1).any(1)
        kept = difference[defined]
        if kept.shape[0] == 0:
            nan = torch.full(a.shape[1:], float("nan"), dtype=torch.float64)
            out[key] = Interval(nan, nan.clone(), nan.clone(), 0, level)
        else:
            out[key] = bootstrap_interval(kept, level=level, seed=seed)
    return out


def map_similarity(
    maps_a: Float[Tensor, "batch layer head query key"],
    maps_b: Float[Tensor, "batch layer head query key"],
    lengths: Int[Tensor, " batch"] | None = None,
    *,
    causal: bool = True,
) -> Float[Tensor, "layer head head"]:
    """Pearson correlation between head i of A and head j of B, per layer, of
    their attention weights over every entry a query may see (k ≤ q when
    causal; real queries and keys only, `lengths` per prompt), pooled over
    the batch. Identical maps give 1; a head whose weights are constant over
    those entries has no defined correlation and gets 0. Memory: two
    `[head, entries]` float64 matrices per layer."""
    if maps_a.shape != maps_b.shape or maps_a.dim() != 5:
        raise InputError(
            "maps must both be [batch, layer, head, query, key] of one shape, got "
            f"{list(maps_a.shape)} and {list(maps_b.shape)}"
        )
    n_batch, n_layers, _, n, _ = maps_a.shape
    if lengths is None:
        lengths = torch.full((n_batch,), n, dtype=torch.long)
    position = torch.arange(n)
    real = position[None] < torch.as_tensor(lengths)[:, None]  # [batch, position]
    entries = real[:, :, None] & real[:, None, :]
    if causal:
        entries = entries & (position[None, :] <= position[:, None])[None]
    layers = []
    for layer in range(n_layers):
        # [head, batch, q, k] -> [head, entries]
        a = maps_a[:, layer].double().permute(1, 0, 2, 3)[:, entries]
        b = maps_b[:, layer].double().permute(1, 0, 2, 3)[:, entries]
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
        scale = norm_a[:, None] * norm_b[None, :]
        corr = (a @ b.T) / scale.clamp_min(1e-300)
        layers.append(torch.where(scale > 0, corr, torch.zeros_like(corr)).clamp(-1, 1))
    return torch.stack(layers)


def match_heads(
    similarity: Float[Tensor, "layer head head"],
) -> tuple[Int[Tensor, "layer head"], Float[Tensor, "layer head"]]:
    """Per layer, the permutation `matching[layer, i]` (a head of B for each
    head i of A) maximising Σ_i similarity[layer, i, matching[i]]
    (`scipy.optimize.linear_sum_assignment`, exact, O(head³) per layer), and
    the similarity of each matched pair."""
    if similarity.dim() != 3 or similarity.shape[1] != similarity.shape[2]:
        raise InputError(f"similarity must be [layer, head, head], got {list(similarity.shape)}")
    matching = torch.empty(similarity.shape[:2], dtype=torch.long)
    matched = torch.empty(similarity.shape[:2], dtype=torch.float64)
    for layer, grid in enumerate(similarity.double()):
        values = np.nan_to_num(grid.cpu().numpy(), nan=-1.0)
        rows, columns = linear_sum_assignment(values, maximize=True)
        matching[layer, torch.as_tensor(rows)] = torch.as_tensor(columns, dtype=torch.long)
        matched[layer, torch.as_tensor(rows)] = torch.as_tensor(values[rows, columns])
    return matching, matched


def matching_margin(
    similarity: Float[Tensor, "layer head head"], matching: Int[Tensor, "layer head"]
) -> Float[Tensor, "layer head"]:
    """Per layer and head i of A, the summed similarity of the matching minus that
    of the best matching that does not pair i with `matching[layer, i]` (>= 0 up
    to rounding when `matching` is optimal; +inf with one head, which has no
    alternative). A margin near 0 means the maps do not decide the pair. One
    Hungarian solve per head: O(head⁴) per layer."""
    if similarity.dim() != 3 or similarity.shape[1] != similarity.shape[2]:
        raise InputError(f"similarity must be [layer, head, head], got {list(similarity.shape)}")
    if tuple(matching.shape) != tuple(similarity.shape[:2]):
        raise InputError(
            f"matching must be [layer, head] = {list(similarity.shape[:2])}, "
            f"got {list(matching.shape)}"
        )
    n_layers, n_heads, _ = similarity.shape
    margin = torch.full((n_layers, n_heads), float("inf"), dtype=torch.float64)
    if n_heads < 2:
        return margin
    # a forbidden pair costs more than any matching can gain (similarities lie in [-1, 1])
    forbidden = -2.0 * (n_heads + 1)
    for layer in range(n_layers):
        values = np.nan_to_num(similarity[layer].double().cpu().numpy(), nan=-1.0)
        chosen = matching[layer].cpu().numpy()
        total = float(values[np.arange(n_heads), chosen].sum())
        for head in range(n_heads):
            masked = values.copy()
            masked[head, chosen[head]] = forbidden
            rows, columns = linear_sum_assignment(masked, maximize=True)
            margin[layer, head] = total - float(masked[rows, columns].sum())
    return margin
