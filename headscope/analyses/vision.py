"""Attention over image patches (docs/methods.md §7): the geometry of a vision
transformer's tokens, mean attention distance per head, attention to relative
patch offsets, and rollout / flow from [CLS] to the patches.

Pure functions of attention maps and a `PatchGeometry`. Tokens are
`n_prefix` prefix tokens ([CLS], and DeiT's distillation token) followed by
the patches of a `rows × columns` grid in row-major order; patch `(r, c)`
covers pixels `[r·p, (r+1)·p) × [c·p, (c+1)·p)` for patch size p, and its
position is its centre. Distances are Euclidean, in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from headscope.analyses.flow import attention_flow, rollout
from headscope.errors import InputError


@dataclass(frozen=True)
class PatchGeometry:
    """A patch grid of `grid` = (rows, columns) patches of `patch_size` pixels,
    after `n_prefix` prefix tokens."""

    grid: tuple[int, int]
    patch_size: int
    n_prefix: int = 1

    def __post_init__(self) -> None:
        rows, cols = self.grid
        for name, value in (("rows", rows), ("columns", cols), ("patch_size", self.patch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.n_prefix, int) or self.n_prefix < 0:
            raise InputError(f"n_prefix must be a whole number >= 0, got {self.n_prefix!r}")

    @classmethod
    def of(cls, spec: Any) -> PatchGeometry:
        """The geometry of a vision model's `ModelSpec` (or of a record's `spec`)."""
        if not getattr(spec, "is_vision", False):
            raise InputError(f"{getattr(spec, 'name', spec)!r} is not a vision model")
        return cls(tuple(spec.patch_grid), spec.patch_size, spec.n_prefix_tokens)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    def cells(self) -> Float[Tensor, "patch 2"]:
        """(row, column) of every patch, row-major, as float64."""
        rows, cols = self.grid
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        return torch.stack([r.flatten(), c.flatten()], -1).double()

    def centres(self) -> Float[Tensor, "patch 2"]:
        """(y, x) pixel centre of every patch, row-major, float64."""
        return (self.cells() + 0.5) * self.patch_size

    def distances(self) -> Float[Tensor, "patch patch"]:
        """Euclidean pixel distance between patch centres, `[query patch, key patch]`."""
        return torch.cdist(self.centres(), self.centres())

    def to_grid(self, values: Float[Tensor, "... token"]) -> Float[Tensor, "... rows columns"]:
        """Per-token values `[..., token]` (prefix then patches) or per-patch values
        `[..., patch]` as a `[..., rows, columns]` map (prefix tokens dropped)."""
        n = values.shape[-1]
        if n == self.n_tokens:
            values = values[..., self.n_prefix :]
        elif n != self.n_patches:
            raise InputError(
                f"expected {self.n_tokens} tokens or {self.n_patches} patches on the last "
                f"axis, got {n}"
            )
        return values.reshape(*values.shape[:-1], *self.grid)


def _check_maps(pattern: Tensor, geometry: PatchGeometry) -> None:
    if not isinstance(pattern, Tensor) or pattern.dim() < 2:
        raise InputError("pattern must be a tensor [..., query, key]")
    n = geometry.n_tokens
    if tuple(pattern.shape[-2:]) != (n, n):
        raise InputError(
            f"pattern must end in [{n}, {n}] ({geometry.n_prefix} prefix tokens + "
            f"{geometry.n_patches} patches), got {tuple(pattern.shape)}"
        )


@dataclass(frozen=True)
class AttentionDistance:
    """Mean attention distance (pixels) per map, `distance[...]`, and what it rests
    on: `prefix_mass[...]` (mean attention of patch queries to prefix tokens,
    which carries no distance), `uniform` (the distance under uniform attention
    over the patches, the content-free baseline), and `n_queries` (patch queries
    averaged per map)."""

    distance: Float[Tensor, "*maps"]
    prefix_mass: Float[Tensor, "*maps"]
    uniform: float
    n_queries: int
    renormalized: bool


def mean_attention_distance(
    pattern: Float[Tensor, "... query key"],
    geometry: PatchGeometry,
    *,
    renormalize: bool = False,
) -> AttentionDistance:
    """Mean attention distance (Dosovitskiy et al. 2021, "An Image is Worth 16x16
    Words", Fig. 7): for each patch query q, Σ_k A[q, k]·‖pos(q) − pos(k)‖ over the
    patch keys k (pixels between patch centres), averaged over the patch queries.
    Prefix tokens are excluded: their rows are not averaged and their columns
    carry no distance (the attention they receive is reported as `prefix_mass`).
    `renormalize=True` divides each query's patch weights by their sum first
    (the distance given that the query attends to patches).

    Invariants: 0 ≤ distance ≤ the grid's diagonal; a head attending each patch
    to itself has distance 0; uniform attention over the patches gives
    `uniform`. Memory: O(P²) for the distance matrix plus one product of
    `pattern`'s size.
    """
    _check_maps(pattern, geometry)
    p0 = geometry.n_prefix
    patches = pattern[..., p0:, p0:].double()
    dist = geometry.distances().to(patches.device)
    prefix = pattern[..., p0:, :p0].double().sum(-1)
    if renormalize:
        total = patches.sum(-1, keepdim=True)
        patches = torch.where(total > 0, patches / total.clamp_min(1e-300), patches)
    per_query = (patches * dist).sum(-1)
    uniform = float(dist.mean())
    return AttentionDistance(
        distance=per_query.mean(-1),
        prefix_mass=prefix.mean(-1),
        uniform=uniform,
        n_queries=geometry.n_patches,
        renormalized=renormalize,
    )


@dataclass(frozen=True)
class OffsetAttention:
    """Attention to relative patch offsets: `mass[..., dy, dx]` is the mean, over
    patch queries, of the attention a query at (r, c) pays to the patch at
    (r + dy, c + dx), offsets from −(rows−1) to rows−1 (axis index dy + rows − 1)
    and likewise for columns. `support[dy, dx]`: how many queries have a patch
    at that offset; `uniform[dy, dx]`: the mass under uniform attention over
    the patches (the baseline, support / P²)."""

    mass: Float[Tensor, "... dy dx"]
    support: Float[Tensor, "dy dx"]
    uniform: Float[Tensor, "dy dx"]
    grid: tuple[int, int]

    def at(self, dy: int, dx: int) -> Float[Tensor, "*maps"]:
        """The mass at offset (dy, dx) (rows down, columns right)."""
        rows, cols = self.grid
        if not (abs(dy) < rows and abs(dx) < cols):
            raise InputError(f"offset ({dy}, {dx}) is outside the {rows}×{cols} grid")
        return self.mass[..., dy + rows - 1, dx + cols - 1]

    def peak(self) -> tuple[Tensor, Tensor]:
        """(dy, dx) of the largest mass of every map, each `[...]`."""
        rows, cols = self.grid
        flat = self.mass.flatten(-2).argmax(-1)
        width = 2 * cols - 1
        return flat // width - (rows - 1), flat % width - (cols - 1)


def offset_attention(
    pattern: Float[Tensor, "... query key"], geometry: PatchGeometry
) -> OffsetAttention:
    """Attention by relative patch offset (which heads attend to a fixed
    neighbour; the positional view of Li et al. 2023, "How Does Attention Work
    in Vision Transformers? A Visual Analytics Attempt"). For every map, the
    patch-to-patch attention is summed per offset (key cell − query cell) and
    divided by the number of patch queries, so `mass` sums over offsets to the
    mean patch-to-patch mass (1 minus the mass on prefix tokens). Memory: the
    `[..., (2R−1)(2C−1)]` result plus a float64 copy of the patch block.
    """
    _check_maps(pattern, geometry)
    rows, cols = geometry.grid
    p0 = geometry.n_prefix
    cells = geometry.cells().long()
    offset = cells[None, :, :] - cells[:, None, :]  # [query, key, 2]
    index = ((offset[..., 0] + rows - 1) * (2 * cols - 1) + offset[..., 1] + cols - 1).flatten()
    patches = pattern[..., p0:, p0:].double()
    flat = patches.reshape(*patches.shape[:-2], -1)
    n_bins = (2 * rows - 1) * (2 * cols - 1)
    sums = torch.zeros(*flat.shape[:-1], n_bins, dtype=torch.float64, device=flat.device)
    sums.index_add_(-1, index.to(flat.device), flat)
    support = torch.zeros(n_bins, dtype=torch.float64).index_add_(
        0, index, torch.ones(index.numel(), dtype=torch.float64)
    )
    p = geometry.n_patches
    shape = (2 * rows - 1, 2 * cols - 1)
    return OffsetAttention(
        mass=(sums / p).reshape(*flat.shape[:-1], *shape),
        support=support.reshape(shape),
        uniform=(support / (p * p)).reshape(shape),
        grid=geometry.grid,
    )


@dataclass(frozen=True)
class ClassTokenMap:
    """How much each token feeds [CLS] after the last layer: `values[token]`
    (prefix tokens then patches), `patch_map[rows, columns]` (the patches), the
    method ("rollout" or "flow") and `prefix_share` (the part of the row on
    prefix tokens, [CLS] itself included)."""

    values: Float[Tensor, " token"]
    patch_map: Float[Tensor, "rows columns"]
    method: str
    prefix_share: float


def class_token_rollout(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    geometry: PatchGeometry,
    *,
    residual: float = 0.5,
    cls_index: int = 0,
) -> ClassTokenMap:
    """Attention rollout (Abnar & Zuidema 2020) from [CLS] after the last layer to
    every input token: row `cls_index` of `analyses.flow.rollout`'s last
    layer, the map of the classic ViT rollout figure. Invariant: `values` sums
    to 1 over [CLS] and the patches (a row of a product of row-stochastic
    matrices). Memory and time: those of `rollout` (O(L·N²), O(L·N³))."""
    _check_maps(pattern, geometry)
    row = rollout(pattern, residual)[-1, cls_index]
    return _class_map(row, geometry, "rollout")


def class_token_flow(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"],
    geometry: PatchGeometry,
    *,
    residual: float = 0.5,
    cls_index: int = 0,
) -> ClassTokenMap:
    """Attention flow (Abnar & Zuidema 2020) from [CLS] to every input token:
    row `cls_index` of `analyses.flow.attention_flow` (max-flow per pair, rows
    normalised to sum to 1). Cost: that of `attention_flow` (exact max-flow for
    every pair; seconds for a few hundred tokens)."""
    _check_maps(pattern, geometry)
    row = attention_flow(pattern, residual)[cls_index]
    return _class_map(row, geometry, "flow")


def _class_map(row: Tensor, geometry: PatchGeometry, method: str) -> ClassTokenMap:
    row = row.double()
    return ClassTokenMap(
        values=row,
        patch_map=geometry.to_grid(row),
        method=method,
        prefix_share=float(row[: geometry.n_prefix].sum()),
    )


def region_share(
    patch_map: Float[Tensor, "rows columns"], region: Bool[Tensor, "rows columns"]
) -> float:
    """The share of a non-negative patch map's total inside `region` (a boolean
    mask of patches): how concentrated relevance or rollout is there.
    Uniform maps give the region's fraction of the patches."""
    if patch_map.shape != region.shape:
        raise InputError(f"map {tuple(patch_map.shape)} and region {tuple(region.shape)} differ")
    values = patch_map.double().clamp_min(0)
    total = float(values.sum())
    if total <= 0:
        raise InputError("the map is zero everywhere: no share to compute")
    return float(values[region.bool()].sum()) / total
