"""Token-level views: attention lines (one head, every head of a layer), the
per-cell readout of the head-grid thumbnails, and log axes labelled by decade."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from headscope.errors import InputError
from headscope.figures.maps import grid_head, head_grid
from headscope.figures.position import influence_by_distance
from headscope.figures.spectral import singular_spectra
from headscope.figures.tokens import LEVELS, MAX_LINE_TOKENS, attention_lines, head_color

XSS = "<img src=x onerror=alert(1)>"


def causal_uniform(n: int) -> torch.Tensor:
    mask = torch.tril(torch.ones(n, n))
    return mask / mask.sum(-1, keepdim=True)


def segments(figure: go.Figure) -> list[tuple[int, int, float, str]]:
    """(query, key, opacity, colour) of every line drawn."""
    found = []
    for trace in figure.data:
        if trace.mode != "lines" or trace.x is None or len(trace.x) < 3:
            continue
        x, y = np.asarray(trace.x), np.asarray(trace.y)
        assert np.isnan(x[2::3]).all() and (x[0::3] == 0).all() and (x[1::3] == 1).all()
        for q, k in zip(y[0::3], y[1::3], strict=True):
            found.append((int(q), int(k), float(trace.opacity), trace.line.color))
    return found


def test_lines_of_one_head_have_the_weights_as_opacity(check_payload):
    tokens = ["<bos>", "red", "cat", "red", "cat"]
    pattern = torch.zeros(5, 5)
    pattern[:, 0] = 1.0
    pattern[3] = torch.tensor([0.1, 0.0, 0.9, 0.0, 0.0])  # induction-like: red → cat
    pattern[4] = torch.tensor([0.52, 0.0, 0.0, 0.46, 0.02])  # 0.02: under half a step
    figure = attention_lines(pattern, tokens, title="L1 H3")
    check_payload(figure)
    drawn = {(q, k): opacity for q, k, opacity, _ in segments(figure)}
    assert drawn == {
        (0, 0): 1.0,
        (1, 0): 1.0,
        (2, 0): 1.0,
        (3, 0): 0.1,
        (3, 2): 0.9,
        (4, 0): 0.5,
        (4, 3): 0.5,
    }
    assert figure.layout.showlegend is False and figure.layout.meta["levels"] == LEVELS
    queries, keys = figure.data[-2], figure.data[-1]
    assert list(queries.text) == list(keys.text) == ["&lt;bos&gt;", "red", "cat", "red", "cat"]
    assert queries.textposition == "middle left" and keys.textposition == "middle right"
    # hover: a query's strongest keys, a key's strongest queries
    assert queries.hovertext[3].startswith("query 3 red<br>top keys: 2 cat 0.900, 0 ")
    assert keys.hovertext[2] == "key 2 cat<br>top queries: 3 red 0.900"
    assert figure.layout.yaxis.range == (4.5, -0.5)  # the first token on top


def test_lines_of_every_head_of_a_layer_one_colour_each():
    maps = torch.stack([causal_uniform(4), torch.eye(4), torch.eye(4).roll(-1, 1).tril()])
    figure = attention_lines(maps, list("abcd"), heads=["head 0", "head 1", XSS])
    assert figure.layout.showlegend is True
    legend = [trace for trace in figure.data if trace.showlegend is not False]
    assert [trace.name for trace in legend] == [
        "head 0",
        "head 1",
        "&lt;img src=x onerror=alert(1)&gt;",
    ]
    assert [trace.line.color for trace in legend] == [head_color(i) for i in range(3)]
    lines = segments(figure)
    assert {(q, k) for q, k, _, c in lines if c == head_color(1)} == {(i, i) for i in range(4)}
    assert {(q, k) for q, k, _, c in lines if c == head_color(2)} == {(1, 0), (2, 1), (3, 2)}
    # the hover of a token lists every head
    assert figure.data[-2].hovertext[2].count("<br>") == 3
    assert len({head_color(i) for i in range(16)}) == 16


def test_lines_refuse_bad_shapes_and_skip_long_prompts():
    with pytest.raises(InputError, match="square maps matching 3 tokens"):
        attention_lines(torch.ones(4, 4), ["a", "b", "c"])
    with pytest.raises(InputError, match=r"\[query, key\] or \[head, query, key\]"):
        attention_lines(torch.ones(2, 2, 3, 3), ["a", "b", "c"])
    with pytest.raises(InputError, match="2 head names for 3 maps"):
        attention_lines(torch.ones(3, 2, 2), ["a", "b"], heads=["x", "y"])
    n = MAX_LINE_TOKENS + 1
    figure = attention_lines(causal_uniform(n), [f"t{i}" for i in range(n)])
    message = figure.layout.annotations[0].text.replace("<br>", " ")
    assert not figure.data and f"up to {MAX_LINE_TOKENS} tokens; this one has {n}" in message


# -- the overview thumbnails answer hover per cell ---------------------------------------------


def test_head_grid_cells_name_query_key_and_weight(check_payload):
    tokens = ["<bos>", "red", XSS, "red"]
    pattern = causal_uniform(4).expand(2, 3, 4, 4).clone()
    pattern[1, 2] *= 0.5  # a head whose max is 0.5: z is scaled to 1, the weight is not
    figure = head_grid(pattern, tokens=tokens, hover=[["x"] * 3, ["y"] * 3])
    check_payload(figure)
    canvas = figure.data[0]
    pitch = figure.layout.meta["pitch"]
    # the axes are the cells' names: layer / head, then query / key and its token
    assert canvas.y[pitch + 2] == "layer 1 · query 2 &lt;img␣src=x␣onerror=alert(1)&gt;"
    assert canvas.x[2 * pitch + 1] == "head 2 · key 1 red"
    assert canvas.x[4].startswith("gap ")
    row, col = pitch + 3, 2 * pitch + 1
    assert canvas.customdata[row, col] == pytest.approx(0.125)
    assert canvas.z[row, col] == pytest.approx(0.25)  # 0.125 over the head's max 0.5
    assert "%{customdata:.4f}" in canvas.hovertemplate and "%{z:.0%}" in canvas.hovertemplate
    assert canvas.hoverongaps is False
    assert list(figure.layout.xaxis.categoryarray) == list(canvas.x)
    assert grid_head(canvas.x[col], canvas.y[row]) == (1, 2)
    assert grid_head("gap 1.0", canvas.y[row]) is None and grid_head(None, 3) is None
    # the centre markers keep the head, but the cells answer hover and clicks
    markers = figure.data[1]
    assert markers.hoverinfo == "skip" and list(markers.customdata[-1]) == [1, 2]


def test_head_grid_cells_of_a_reduced_map_are_blocks():
    pattern = causal_uniform(100).expand(1, 2, 100, 100)
    figure = head_grid(pattern, thumb=40, head_index=[4, 7])
    canvas = figure.data[0]
    assert canvas.x[0] == "head 4 · keys 0–2" and canvas.y[-1] == "layer 0 · queries 99–99"
    assert "block max" in canvas.hovertemplate
    with pytest.raises(InputError, match="3 tokens for maps of 100"):
        head_grid(pattern, tokens=["a", "b", "c"])


# -- log axes: powers of ten, no SI prefixes, no bare minor digits -------------------------------


def test_log_axes_are_labelled_by_decade_in_powers():
    spectra = singular_spectra({"QK": np.geomspace(2, 1e-4, 16)}, highlight=["QK"])
    influence = influence_by_distance(np.geomspace(1, 1e-5, 12)[None], log_y=True)
    for axis in (spectra.layout.yaxis, influence.layout.yaxis):
        assert axis.type == "log"
        assert axis.exponentformat == "power" and axis.minorloglabels == "none"
    assert singular_spectra({"QK": [2.0, 1.0]}, log_y=False).layout.yaxis.type == "linear"
