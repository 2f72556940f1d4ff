"""Vision analyses: mean attention distance, relative offsets and [CLS] rollout
against closed forms and brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch

from headscope.analyses.vision import (
    PatchGeometry,
    class_token_flow,
    class_token_rollout,
    mean_attention_distance,
    offset_attention,
    region_share,
)
from headscope.errors import InputError

GEOMETRY = PatchGeometry((3, 4), patch_size=5, n_prefix=1)  # 12 patches + [CLS]


def _random_maps(*shape: int, n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, n, n, generator=generator, dtype=torch.float64).softmax(-1)


def _shift_map(geometry: PatchGeometry, dy: int, dx: int, cls_mass: float = 0.0) -> torch.Tensor:
    """Each patch query puts `cls_mass` on [CLS] and the rest on the patch at
    (r + dy, c + dx), or on itself when that patch is outside the grid."""
    rows, cols = geometry.grid
    p0, n = geometry.n_prefix, geometry.n_tokens
    pattern = torch.zeros(n, n, dtype=torch.float64)
    pattern[:p0, 0] = 1.0
    for r in range(rows):
        for c in range(cols):
            q = p0 + r * cols + c
            rr, cc = r + dy, c + dx
            k = p0 + (rr * cols + cc if 0 <= rr < rows and 0 <= cc < cols else r * cols + c)
            pattern[q, 0] += cls_mass
            pattern[q, k] += 1.0 - cls_mass
    return pattern


def test_identity_attention_has_distance_zero():
    pattern = torch.eye(GEOMETRY.n_tokens, dtype=torch.float64)
    result = mean_attention_distance(pattern, GEOMETRY)
    assert float(result.distance) == 0.0
    assert float(result.prefix_mass) == 0.0


@pytest.mark.parametrize("cls_mass", [0.0, 0.3])
def test_right_neighbour_attention_matches_its_closed_form(cls_mass):
    """A query attends to its right neighbour (one patch = 5 px away) unless it
    is in the last column (then to itself, 0 px): (cols-1)/cols of the queries
    move 5 px, each with weight 1 - cls_mass."""
    _, cols = GEOMETRY.grid
    result = mean_attention_distance(_shift_map(GEOMETRY, 0, 1, cls_mass), GEOMETRY)
    expected = (1 - cls_mass) * GEOMETRY.patch_size * (cols - 1) / cols
    assert float(result.distance) == pytest.approx(expected, abs=1e-12)
    assert float(result.prefix_mass) == pytest.approx(cls_mass, abs=1e-12)
    renormalized = mean_attention_distance(
        _shift_map(GEOMETRY, 0, 1, cls_mass), GEOMETRY, renormalize=True
    )
    assert float(renormalized.distance) == pytest.approx(
        GEOMETRY.patch_size * (cols - 1) / cols, abs=1e-12
    )


def test_diagonal_neighbour_distance_is_the_patch_diagonal():
    rows, cols = GEOMETRY.grid
    result = mean_attention_distance(_shift_map(GEOMETRY, 1, 1), GEOMETRY)
    moved = (rows - 1) * (cols - 1) / (rows * cols)
    assert float(result.distance) == pytest.approx(moved * 5 * math.sqrt(2), abs=1e-12)


def test_uniform_attention_over_patches_gives_the_uniform_baseline():
    n, p0 = GEOMETRY.n_tokens, GEOMETRY.n_prefix
    pattern = torch.zeros(n, n, dtype=torch.float64)
    pattern[:, p0:] = 1.0 / GEOMETRY.n_patches
    result = mean_attention_distance(pattern, GEOMETRY)
    # Brute force: the mean pixel distance between patch centres over all pairs.
    rows, cols = GEOMETRY.grid
    centres = [((r + 0.5) * 5, (c + 0.5) * 5) for r in range(rows) for c in range(cols)]
    pairs = [math.dist(a, b) for a in centres for b in centres]
    assert result.uniform == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert float(result.distance) == pytest.approx(result.uniform, abs=1e-12)


def test_distance_of_random_maps_equals_a_loop():
    pattern = _random_maps(2, 3, n=GEOMETRY.n_tokens)
    result = mean_attention_distance(pattern, GEOMETRY)
    _, cols = GEOMETRY.grid
    for layer in range(2):
        for head in range(3):
            total = 0.0
            for q in range(GEOMETRY.n_patches):
                for k in range(GEOMETRY.n_patches):
                    a = pattern[layer, head, 1 + q, 1 + k]
                    d = 5 * math.dist(divmod(q, cols), divmod(k, cols))
                    total += float(a) * d
            assert float(result.distance[layer, head]) == pytest.approx(
                total / GEOMETRY.n_patches, rel=1e-12
            )
    assert result.distance.shape == (2, 3)
    assert result.n_queries == 12


def test_offset_attention_of_a_fixed_neighbour_head():
    rows, cols = GEOMETRY.grid
    offsets = offset_attention(_shift_map(GEOMETRY, 1, 0), GEOMETRY)
    assert float(offsets.at(1, 0)) == pytest.approx((rows - 1) / rows)
    assert float(offsets.at(0, 0)) == pytest.approx(1 / rows)
    dy, dx = offsets.peak()
    assert (int(dy), int(dx)) == (1, 0)
    assert float(offsets.mass.sum()) == pytest.approx(1.0)
    assert float(offsets.uniform.sum()) == pytest.approx(1.0)
    assert float(offsets.support[rows - 1, cols - 1]) == rows * cols  # offset (0, 0)
    assert float(offsets.support[0, 0]) == 1  # offset (-(rows-1), -(cols-1))


def test_offset_attention_of_random_maps_equals_a_loop():
    pattern = _random_maps(2, n=GEOMETRY.n_tokens, seed=3)
    offsets = offset_attention(pattern, GEOMETRY)
    rows, cols = GEOMETRY.grid
    expected = torch.zeros(2, 2 * rows - 1, 2 * cols - 1, dtype=torch.float64)
    for h in range(2):
        for q in range(GEOMETRY.n_patches):
            for k in range(GEOMETRY.n_patches):
                (qr, qc), (kr, kc) = divmod(q, cols), divmod(k, cols)
                expected[h, kr - qr + rows - 1, kc - qc + cols - 1] += pattern[h, 1 + q, 1 + k]
    torch.testing.assert_close(offsets.mass, expected / GEOMETRY.n_patches)
    patch_mass = pattern[:, 1:, 1:].sum((-1, -2)) / GEOMETRY.n_patches
    torch.testing.assert_close(offsets.mass.sum((-1, -2)), patch_mass)


def test_class_token_rollout_rows_sum_to_one_over_cls_and_patches():
    pattern = _random_maps(3, 4, n=GEOMETRY.n_tokens, seed=5)
    result = class_token_rollout(pattern, GEOMETRY)
    assert float(result.values.sum()) == pytest.approx(1.0, abs=1e-12)
    assert result.patch_map.shape == GEOMETRY.grid
    assert float(result.patch_map.sum()) + result.prefix_share == pytest.approx(1.0, abs=1e-12)


def test_class_token_rollout_of_uniform_maps_has_its_closed_form():
    """Uniform J/n in every layer: rollout = 0.5^L·I + (1 − 0.5^L)·J/n."""
    n, layers = GEOMETRY.n_tokens, 3
    pattern = torch.full((layers, 2, n, n), 1.0 / n, dtype=torch.float64)
    result = class_token_rollout(pattern, GEOMETRY)
    rest = (1 - 0.5**layers) / n
    assert float(result.values[0]) == pytest.approx(0.5**layers + rest)
    torch.testing.assert_close(
        result.patch_map, torch.full(GEOMETRY.grid, rest, dtype=torch.float64)
    )


def test_class_token_flow_sums_to_one():
    pattern = _random_maps(2, 2, n=GEOMETRY.n_tokens, seed=7)
    result = class_token_flow(pattern, GEOMETRY)
    assert float(result.values.sum()) == pytest.approx(1.0, abs=1e-9)
    assert result.method == "flow"


def test_to_grid_is_row_major_and_drops_the_prefix():
    values = torch.arange(GEOMETRY.n_tokens, dtype=torch.float64)
    grid = GEOMETRY.to_grid(values)
    assert grid.shape == (3, 4)
    assert float(grid[1, 2]) == 1 + 1 * 4 + 2


def test_region_share():
    patch_map = torch.ones(3, 4, dtype=torch.float64)
    region = torch.zeros(3, 4, dtype=torch.bool)
    region[0, :2] = True
    assert region_share(patch_map, region) == pytest.approx(2 / 12)


def test_maps_of_the_wrong_size_are_refused(unchecked):
    with unchecked(), pytest.raises(InputError, match="13, 13"):
        mean_attention_distance(torch.eye(5), GEOMETRY)
