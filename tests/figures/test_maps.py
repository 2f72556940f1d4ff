"""Attention maps and the head grid: labels, downsampling, exact values, escaping."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from headscope.figures.arrays import block_max, float32, reduction_factor
from headscope.figures.maps import attention_map, head_grid, map_block
from headscope.figures.style import display_token, plotly_text

XSS = "<img src=x onerror=alert(1)>"


def causal_uniform(n: int) -> torch.Tensor:
    mask = torch.tril(torch.ones(n, n))
    return mask / mask.sum(-1, keepdim=True)


def test_float32_converts_tensors_and_lists():
    assert float32(torch.ones(2, 2, dtype=torch.float64)).dtype == np.float32
    assert float32(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert float32([1, 2]).dtype == np.float32


def test_block_max_known_answer_and_partial_blocks():
    matrix = np.arange(25, dtype=np.float32).reshape(5, 5)
    reduced = block_max(matrix, 2)
    assert reduced.shape == (3, 3)
    np.testing.assert_array_equal(reduced[0], [6, 8, 9])
    np.testing.assert_array_equal(reduced[2], [21, 23, 24])
    assert reduction_factor(600, 512) == 2
    assert reduction_factor(512, 512) == 1


def test_block_max_ignores_nan_unless_whole_block():
    matrix = np.array([[np.nan, 1.0], [np.nan, np.nan]], dtype=np.float32)
    assert block_max(matrix, 2)[0, 0] == 1.0
    assert np.isnan(block_max(np.full((2, 2), np.nan), 2)[0, 0])


def test_attention_map_labels_hover_and_payload(check_payload):
    tokens = ["<bos>", "the", "cat", "the", "cat"]
    figure = attention_map(causal_uniform(5), tokens, title="L0 H1")
    check_payload(figure)
    heatmap = figure.data[0]
    assert isinstance(heatmap, go.Heatmap)
    assert heatmap.z.dtype == np.float32 and heatmap.z.shape == (5, 5)
    # repeated tokens stay separate rows: category names carry the position
    assert len(set(heatmap.x)) == 5
    assert heatmap.x[1] == "1 the" and heatmap.x[3] == "3 the"
    assert "query %{y}" in heatmap.hovertemplate and "weight %{z" in heatmap.hovertemplate
    assert list(figure.layout.xaxis.ticktext) == ["&lt;bos&gt;", "the", "cat", "the", "cat"]
    assert figure.layout.yaxis.autorange == "reversed"
    assert figure.layout.meta == {"factor": 1, "n": 5}


def test_attention_map_escapes_markup_in_tokens_and_title():
    figure = attention_map(causal_uniform(2), ["a", XSS], title=XSS)
    text = figure.to_json()
    assert "<img" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text


def test_attention_map_downsamples_large_maps_and_click_gives_exact_values(check_payload):
    n = 600
    pattern = causal_uniform(n)
    tokens = [f"t{i}" for i in range(n)]
    figure = attention_map(pattern, tokens, max_size=512)
    check_payload(figure)
    assert figure.data[0].z.shape == (300, 300)
    assert figure.layout.meta == {"factor": 2, "n": n}
    assert "downsampled ×2" in figure.layout.title.text
    assert len(figure.layout.xaxis.tickvals) <= 48
    entries = map_block(pattern, tokens, row=0, col=0, factor=2)
    assert entries[0][:4] == (0, "t0", 0, "t0") and entries[0][4] == pytest.approx(1.0)
    assert {(q, k) for q, _, k, _, _ in entries} == {(0, 0), (1, 0), (1, 1), (0, 1)}


def test_attention_map_outlines_the_query_row():
    figure = attention_map(causal_uniform(4), list("abcd"), query=2)
    (shape,) = figure.layout.shapes
    assert (shape.y0, shape.y1) == (1.5, 2.5)


def test_attention_map_rejects_mismatched_tokens():
    with pytest.raises(ValueError, match="square"):
        attention_map(causal_uniform(3), ["a", "b"])


def test_head_grid_geometry_click_targets_and_selection(check_payload):
    pattern = causal_uniform(10).expand(2, 3, 10, 10)
    figure = head_grid(pattern, selected=(1, 2), hover=[["x"] * 3, ["y"] * 3])
    check_payload(figure)
    canvas, markers = figure.data
    pitch = figure.layout.meta["pitch"]
    assert canvas.z.shape == (2 * pitch - (pitch - 10), 3 * pitch - (pitch - 10))
    assert np.nanmax(canvas.z) == pytest.approx(1.0)  # each thumbnail scaled to its max
    assert [list(c) for c in markers.customdata] == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert "layer 1, head 2" in markers.hovertext[-1]
    assert figure.layout.hoverdistance == -1
    assert len(figure.layout.shapes) == 1


def test_head_grid_reduces_long_prompts():
    pattern = causal_uniform(100).expand(1, 2, 100, 100)
    figure = head_grid(pattern, thumb=40)
    assert figure.layout.meta["factor"] == 3 and figure.layout.meta["size"] == 34


def test_display_token_shows_whitespace_and_plotly_text_escapes():
    assert display_token(" the\n") == "␣the↵"
    assert display_token("") == "∅"
    assert plotly_text("a<b>&c") == "a&lt;b&gt;&amp;c"
