"""Vision figures: the overlay places each patch value over its pixels; the
distance plot draws one dot per head and the uniform baseline; the offset map
is centred on the query's own patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headscope.analyses.vision import PatchGeometry, mean_attention_distance, offset_attention
from headscope.errors import InputError
from headscope.figures.vision import (
    attention_distance_figure,
    head_overlays,
    image_overlay,
    offset_figure,
    overlay_panels,
)

GEOMETRY = PatchGeometry((4, 4), patch_size=4, n_prefix=1)


def _maps(*lead: int) -> torch.Tensor:
    n = GEOMETRY.n_tokens
    return torch.rand(*lead, n, n, generator=torch.Generator().manual_seed(0)).softmax(-1)


def test_overlay_puts_each_patch_over_its_pixels(check_payload):
    image = np.random.default_rng(0).random((16, 16))
    patch_map = np.arange(16, dtype=np.float32).reshape(4, 4)
    figure = image_overlay(image, patch_map, what="rollout from [CLS]")
    check_payload(figure)
    picture, heat = figure.data
    assert picture.type == "image" and heat.type == "heatmap"
    assert np.asarray(picture.z).shape == (16, 16, 3)
    # Patch column c covers pixels 4c..4c+3, whose centre is at 4c + 1.5.
    assert heat.x0 == pytest.approx(1.5) and heat.dx == pytest.approx(4.0)
    assert heat.y0 == pytest.approx(1.5) and heat.dy == pytest.approx(4.0)
    np.testing.assert_array_equal(np.asarray(heat.z), patch_map)
    assert "rollout from [CLS]" in heat.colorbar.title.text


def test_overlay_refuses_a_grid_that_does_not_divide_the_image():
    with pytest.raises(InputError, match="does not divide"):
        image_overlay(np.zeros((15, 16)), np.zeros((4, 4)))


def test_user_text_in_labels_is_escaped():
    figure = image_overlay(np.zeros((8, 8)), np.ones((2, 2)), title="<b>cat</b>", what="<i>x</i>")
    assert "<b>" not in figure.layout.title.text
    assert "<i>" not in figure.data[1].colorbar.title.text


def test_distance_figure_has_one_dot_per_head_and_the_baseline(check_payload):
    distance = mean_attention_distance(_maps(3, 4), GEOMETRY)
    figure = attention_distance_figure(distance, n_images=1)
    check_payload(figure)
    assert len(figure.data) == 4  # one series per head index, a dot per layer
    for head, trace in enumerate(figure.data):
        np.testing.assert_allclose(trace.y, distance.distance[:, head].numpy(), rtol=1e-6)
    (line,) = figure.layout.shapes
    assert line.y0 == pytest.approx(distance.uniform)
    assert "16 patch queries" in figure.layout.yaxis.title.text


def test_offset_figure_is_centred_on_the_query_patch(check_payload):
    offsets = offset_attention(_maps(2), GEOMETRY)
    one = type(offsets)(offsets.mass[1], offsets.support, offsets.uniform, offsets.grid)
    figure = offset_figure(one, layer=0, head=1)
    check_payload(figure)
    (heat,) = figure.data
    z = np.asarray(heat.z)
    assert z.shape == (7, 7)
    assert list(heat.x) == list(range(-3, 4))
    assert z[3, 3] == pytest.approx(float(one.at(0, 0)), rel=1e-6)
    relative = offset_figure(one, relative=True)
    assert np.asarray(relative.data[0].z)[3, 3] == pytest.approx(
        float(one.at(0, 0) / one.uniform[3, 3]), rel=1e-5
    )


def test_head_grid_and_panels_build(check_payload):
    image = np.random.default_rng(1).random((16, 16, 3))
    maps = np.random.default_rng(2).random((2, 3, 4, 4))
    grid = head_overlays(image, maps)
    check_payload(grid)
    assert len(grid.data) == 2 * 2 * 3  # an image and a heat map per head
    panels = overlay_panels(image, {"rollout": maps[0, 0], "relevance": maps[1, 1]})
    assert len(panels.data) == 4
