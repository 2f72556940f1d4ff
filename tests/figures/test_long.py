"""Long-context figures: block reductions with the factor stated, strips,
distance histograms, sinks over position, and the tiled map's two traces."""

from __future__ import annotations

import base64

import numpy as np
import plotly.graph_objects as go
import pytest

from headscope.errors import InputError
from headscope.figures.long import (
    block_reduce,
    colour_cap,
    detail_note,
    distance_bin_labels,
    distance_histograms,
    head_labels,
    map_detail,
    map_title,
    position_strip,
    sinks_over_position,
    tiled_map,
    typed_array,
)

XSS = "<img src=x onerror=alert(1)>"


def test_block_reduce_mean_max_partial_blocks_and_nan():
    values = np.arange(10, dtype=np.float32)[None]
    np.testing.assert_array_equal(block_reduce(values, 4, "max"), [[3, 7, 9]])
    np.testing.assert_allclose(block_reduce(values, 4, "mean"), [[1.5, 5.5, 8.5]])
    with_nan = np.array([np.nan, 1.0, np.nan, np.nan], dtype=np.float32)
    reduced = block_reduce(with_nan, 2, "mean")
    assert reduced[0] == 1.0 and np.isnan(reduced[1])
    np.testing.assert_array_equal(block_reduce(values, 1), values)
    with pytest.raises(InputError, match="reduce"):
        block_reduce(values, 2, "median")


def test_position_strip_states_its_reduction(check_payload):
    labels = head_labels(range(2), range(3))
    assert labels[:2] == ["L0.H0", "L0.H1"] and len(labels) == 6
    values = np.random.default_rng(0).random((6, 5000)).astype(np.float32)
    figure = position_strip(
        values, labels, title="Entropy", colorbar_title="nats", reduce="max", max_columns=1000
    )
    assert isinstance(figure, go.Figure)
    assert figure.layout.meta == {"factor": 5, "reduce": "max", "n": 5000}
    assert "block max over 5 positions" in figure.layout.title.text
    z = np.asarray(figure.data[0].z)
    assert z.shape == (6, 1000)
    np.testing.assert_array_equal(z[2, 0], values[2, :5].max())
    assert figure.data[0].x0 == 2 and figure.data[0].dx == 5  # block centres in positions
    check_payload(figure)
    short = position_strip(values[:, :100], labels, title="Sink mass", colorbar_title="mass")
    assert short.layout.meta["factor"] == 1 and "block" not in short.layout.title.text
    selected = position_strip(values, labels, title="x", colorbar_title="y", selected=4)
    assert selected.layout.shapes[0].y0 == 3.5
    with pytest.raises(InputError, match="6 rows"):
        position_strip(values[:5], labels, title="x", colorbar_title="y")


def test_distance_histograms_are_fractions_per_head(check_payload):
    edges = (0, 1, 2, 4, 8)
    assert distance_bin_labels(edges) == ["0", "1", "2–3", "4–7"]
    histogram = np.array([[1, 1, 2, 0], [0, 0, 0, 0]], dtype=np.float32)
    figure = distance_histograms(histogram, edges, ["L0.H0", "L0.H1"])
    z = np.asarray(figure.data[0].z)
    np.testing.assert_allclose(z[0], [0.25, 0.25, 0.5, 0.0])
    np.testing.assert_array_equal(z[1], 0)  # a head with no mass is not NaN
    check_payload(figure)


def test_sinks_over_position_reduces_and_escapes_tokens(check_payload):
    n = 3000
    alpha = np.full(n, 1e-3, dtype=np.float32)
    alpha[0] = 0.6
    alpha[1501] = 0.2
    sink = np.linspace(0, 1, n, dtype=np.float32)
    tokens = [XSS, *[f"w{i}" for i in range(1, n)]]
    figure = sinks_over_position(alpha, sink, tokens, head="1.3", max_points=1000)
    assert figure.layout.meta == {"factor": 3, "n": n}
    assert "block max / mean over 3 positions" in figure.layout.title.text
    a, s = np.asarray(figure.data[0].y), np.asarray(figure.data[1].y)
    assert a.shape == s.shape == (1000,)
    assert a[0] == pytest.approx(0.6) and a[500] == pytest.approx(0.2)  # block max keeps sinks
    assert s[1] == pytest.approx(sink[3:6].mean())
    assert XSS not in str(figure.to_plotly_json())  # the token is escaped
    assert "&lt;img" in figure.data[0].customdata[0]
    assert figure.layout.yaxis.type == "log"
    check_payload(figure)
    with pytest.raises(InputError, match="3000 positions"):
        sinks_over_position(alpha[:10], sink, tokens, head="1.3")


def test_tiled_map_overview_and_detail_share_token_coordinates(check_payload):
    overview = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    figure = tiled_map(overview, n_tokens=1000, factor=16, reduce="max", head="1.2", revision="r")
    assert len(figure.data) == 2 and figure.data[1].visible is False
    trace = figure.data[0]
    # cell c covers tokens 16c .. 16c + 15: its centre is at 16c + 7.5
    assert (trace.x0, trace.dx, trace.y0, trace.dy) == (7.5, 16, 7.5, 16)
    assert figure.layout.coloraxis.cmax == pytest.approx(np.quantile(overview, 0.995))
    assert colour_cap(np.zeros((2, 2))) == 1.0
    assert colour_cap(np.array([0.0, 0.5, np.nan]), np.array([1.0]), quantile=1.0) == 1.0
    assert figure.layout.uirevision == "r"
    assert figure.layout.title.text == map_title(1000, "1.2", 16, "max")
    assert "block max over 16×16 tokens" in figure.layout.title.text
    assert tuple(figure.layout.yaxis.range) == (999.5, -0.5)  # queries down
    check_payload(figure)
    detail = map_detail(np.ones((3, 4)), row0=10, col0=20, factor=4, reduce="mean")
    assert (detail["x0"], detail["dx"], detail["y0"], detail["dy"]) == (81.5, 4, 41.5, 4)
    assert detail["visible"] is True and detail["z"].dtype == np.float32
    figure.data[1].update(detail)
    assert figure.data[1].visible is True
    exact = map_detail(np.ones((2, 2)), row0=5, col0=6, factor=1, reduce="max")
    assert (exact["x0"], exact["y0"], exact["dx"]) == (6, 5, 1)
    assert "weight" in exact["hovertemplate"]
    assert "exact weights, queries 5–6" in detail_note(1, "max", (5, 7), (6, 8))
    assert "block mean over 4×4" in detail_note(4, "mean", (40, 52), (80, 96))
    spec = typed_array(np.arange(6).reshape(2, 3))
    assert spec["dtype"] == "f4" and spec["shape"] == "2, 3"
    assert np.frombuffer(base64.b64decode(spec["bdata"]), np.float32).tolist() == list(range(6))
    full = tiled_map(overview[:10, :10], n_tokens=10, factor=1, reduce="max", head="0.0")
    assert "overview" not in full.layout.title.text
