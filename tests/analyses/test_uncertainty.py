"""Bootstrap intervals: coverage on known distributions, exactness where the
answer is known, determinism and one-line errors."""

from __future__ import annotations

import math

import pytest
import torch

from headscope.analyses.uncertainty import bootstrap_interval
from headscope.errors import InputError


def test_constant_units_give_a_zero_width_interval_at_their_value():
    values = torch.full((7, 2, 3), 0.25, dtype=torch.float64)
    interval = bootstrap_interval(values)
    assert torch.equal(interval.mean, interval.low) and torch.equal(interval.low, interval.high)
    assert bool(interval.significant.all()) and interval.n == 7


def test_one_unit_has_no_interval():
    interval = bootstrap_interval(torch.ones(1, 2, 2))
    assert torch.isnan(interval.low).all() and torch.isnan(interval.high).all()
    assert not bool(interval.significant.any())


def test_coverage_of_a_normal_mean_is_close_to_the_level():
    generator = torch.Generator().manual_seed(0)
    # 400 independent experiments of 30 units each, as 400 cells of one grid.
    values = torch.randn(30, 400, generator=generator, dtype=torch.float64) + 1.0
    interval = bootstrap_interval(values, level=0.9, resamples=1000)
    covered = ((interval.low <= 1.0) & (interval.high >= 1.0)).double().mean()
    assert 0.82 < float(covered) < 0.95  # percentile bootstrap under-covers a little at n = 30
    # Its width is close to the normal-theory width 2·z·σ/√n.
    width = (interval.high - interval.low).mean()
    expected = 2 * 1.6449 / math.sqrt(30)
    assert abs(float(width) - expected) < 0.1 * expected


def test_effects_around_zero_are_not_significant_and_shifted_ones_are():
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    values = noise + torch.tensor([0.0, 2.0], dtype=torch.float64)
    interval = bootstrap_interval(values - values.mean(0, keepdim=True) * torch.tensor([1.0, 0.0]))
    assert interval.significant.tolist() == [False, True]


def test_the_draw_is_seeded_and_the_inputs_checked():
    values = torch.randn(10, 3, generator=torch.Generator().manual_seed(2))
    a, b = bootstrap_interval(values, seed=3), bootstrap_interval(values, seed=3)
    assert torch.equal(a.low, b.low) and torch.equal(a.high, b.high)
    with pytest.raises(InputError, match="NaN"):
        bootstrap_interval(torch.tensor([[float("nan")], [1.0]]))
    with pytest.raises(InputError, match="level"):
        bootstrap_interval(values, level=1.5)
    with pytest.raises(InputError, match="at least one unit"):
        bootstrap_interval(torch.zeros(0, 3))
