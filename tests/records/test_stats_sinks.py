"""HeadStats.sink_scores agrees with analyses.position.sink_scores of the full maps,
NaN included: a key no query sees (padding) has no sink score (docs/methods.md §3.2)."""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.analyses.position import sink_scores

PROMPTS = ["t5 t6 t7 t8 t9 t5 t6 t7", "t11 t12 t13"]


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_streamed_sink_scores_equal_the_maps_and_are_nan_where_unseen(tiny_models, arch):
    model = tiny_models[arch]
    stats = hs.capture(model, PROMPTS, mode="stats")
    maps = hs.capture(model, PROMPTS)
    streamed = stats.sink_scores()
    from_maps = sink_scores(maps)  # causality from the record's spec
    assert streamed.shape == from_maps.shape
    short = maps.lengths[1]
    assert short < from_maps.shape[-1]
    assert torch.isnan(streamed[1, ..., short:]).all()
    assert torch.isfinite(streamed[1, ..., :short]).all()
    torch.testing.assert_close(streamed.double(), from_maps, atol=1e-5, rtol=1e-5, equal_nan=True)
