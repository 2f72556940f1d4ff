"""Head, flow, position, spectral and prediction figures: shapes, scales, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headscope.figures.flow import first_token_note, flow_comparison
from headscope.figures.heads import (
    importance_heatmap,
    label_grid,
    layer_head_heatmap,
    pruning_curve,
)
from headscope.figures.position import influence_by_distance, sink_scores
from headscope.figures.predictions import next_token_bars, similarity_bars
from headscope.figures.spectral import (
    composition_matrix,
    marchenko_pastur,
    marchenko_pastur_density,
    singular_spectra,
)
from headscope.figures.style import message_figure


def test_layer_head_heatmap_axes_are_model_indices(check_payload):
    values = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    figure = layer_head_heatmap(values, colorbar_title="nats", selected=(1, 2))
    check_payload(figure)
    heatmap = figure.data[0]
    assert heatmap.z.dtype == np.float32
    assert heatmap.x.tolist() == [0, 1, 2] and heatmap.y.tolist() == [0, 1]
    assert heatmap.texttemplate == "%{z:.2f}"
    assert figure.layout.yaxis.autorange == "reversed"
    (outline,) = figure.layout.shapes
    assert (outline.x0, outline.y0) == (1.5, 0.5)


def test_signed_heatmap_is_centred_on_zero():
    figure = layer_head_heatmap(torch.tensor([[-0.5, 2.0]]), signed=True)
    assert figure.data[0].zmin == -2.0 and figure.data[0].zmax == 2.0
    assert importance_heatmap(torch.tensor([[-1.0, 0.5]]), title="t").data[0].zmin == -1.0
    assert importance_heatmap(torch.tensor([[0.0, 0.5]]), title="t").data[0].zmin == 0.0


def test_label_grid_has_one_colour_band_per_label_and_a_legend():
    labels = [["induction", "none"], ["previous_token", "induction"]]
    figure = label_grid(labels, scores=torch.tensor([[0.9, 0.1], [0.8, 0.95]]))
    heatmap = figure.data[0]
    assert heatmap.z.tolist() == [[0, 1], [2, 0]]
    assert heatmap.zmin == -0.5 and heatmap.zmax == 2.5
    assert heatmap.text[0][0] == "induct<br>0.90"
    assert [trace.name for trace in figure.data[1:]] == ["induction", "none", "previous token"]


def test_pruning_curve_in_percent_with_baseline(check_payload):
    fractions = torch.linspace(0, 1, 11, dtype=torch.float64)
    figure = pruning_curve(fractions, {"by gradient": torch.linspace(0.1, 4.0, 11)}, baseline=0.1)
    check_payload(figure)
    assert figure.data[0].x[-1] == pytest.approx(100.0)
    assert figure.layout.shapes[0].y0 == pytest.approx(0.1)


def test_flow_comparison_one_row_per_method_with_baselines(check_payload):
    tokens = ["<bos>", "a", "b"]
    series = {"raw": [0.5, 0.5, 0.0], "rollout": torch.tensor([0.6, 0.3, 0.1])}
    figure = flow_comparison(tokens, 1, series, {"rollout": [0.5, 0.25, 0.25]})
    check_payload(figure)
    bars = [trace for trace in figure.data if trace.type == "bar"]
    lines = [trace for trace in figure.data if trace.type == "scatter"]
    assert len(bars) == 2 and len(lines) == 1
    assert bars[0].marker.color[1] != bars[0].marker.color[0]  # the query is highlighted
    with pytest.raises(ValueError, match="shape"):
        flow_comparison(tokens, 0, {"raw": [1.0, 0.0]})


def test_flow_comparison_shows_a_message_in_place_of_a_missing_result(check_payload):
    tokens = ["<bos>", "a", "b"]
    series = {"rollout": [0.6, 0.3, 0.1], "relevance": "not available for <model>"}
    figure = flow_comparison(tokens, 2, series, y_titles={"rollout": "share"})
    check_payload(figure)
    assert [trace.type for trace in figure.data] == ["bar", "scatter"]
    # The message row holds an invisible trace: plotly draws no axes for a row without
    # one, and then put the message in the first row and widened the shared x range.
    placeholder = figure.data[1]
    assert (placeholder.xaxis, placeholder.yaxis) == ("x2", "y2")
    assert placeholder.marker.opacity == 0 and placeholder.hoverinfo == "skip"
    assert figure.layout.xaxis.range == figure.layout.xaxis2.range == (-0.5, 2.5)
    texts = [annotation.text for annotation in figure.layout.annotations]
    assert "not available for &lt;model&gt;" in texts  # escaped: plotly shows it literally
    message = figure.layout.annotations[texts.index("not available for &lt;model&gt;")]
    assert (message.xref, message.yref) == ("x2 domain", "y2 domain")  # in its own row
    assert figure.layout.yaxis.title.text == "share" and figure.layout.yaxis2.visible is False


def test_first_token_note_compares_key_0_with_the_baseline():
    uniform = [0.25, 0.25, 0.25, 0.25]
    # key 0 holds the largest share apart from the query (key 3, larger still)
    row = [0.3, 0.1, 0.05, 0.55]
    note = first_token_note("rollout", row, [0.4, 0.2, 0.2, 0.2], 3, "<bos>")
    assert note.startswith("rollout puts 0.30 on key 0 <bos>")
    assert "alone puts 0.40 there: the mask explains it" in note
    note = first_token_note("flow", torch.tensor(row), uniform, 3, "<bos>", mask="bidirectional")
    assert "uniform bidirectional attention alone puts 0.25 there" in note
    assert f"{0.3 / 0.25:.1f}× the mask's share" in note and "explains" not in note
    assert "no content-free baseline" in first_token_note("relevance", row, None, 3, "<bos>")
    # no note when another key beats key 0, for query 0, or for an all-zero history
    assert first_token_note("rollout", [0.2, 0.3, 0.0, 0.5], uniform, 3, "<bos>") is None
    assert first_token_note("rollout", [1.0, 0.0, 0.0, 0.0], uniform, 0, "<bos>") is None
    assert first_token_note("rollout", [0.0, 0.0, 0.0, 1.0], uniform, 3, "<bos>") is None


def test_sink_scores_marks_cells_above_threshold(check_payload):
    scores = torch.zeros(1, 2, 4)
    scores[0, 1, 0] = 0.9
    figure = sink_scores(scores, ["<bos>", "a", "b", "c"], threshold=0.3)
    check_payload(figure)
    heatmap, marks = figure.data
    assert heatmap.z.shape == (2, 4)
    assert list(marks.y) == ["L0.H1"] and list(marks.x) == ["0 &lt;bos&gt;"]


def test_influence_by_distance_draws_model_and_mask_lines(check_payload):
    curves = torch.rand(3, 5)
    figure = influence_by_distance(curves, torch.rand(3, 5))
    check_payload(figure)
    assert len(figure.data) == 6
    assert figure.data[1].line.dash == "dash"
    only_last = influence_by_distance(curves, torch.rand(5))
    assert len(only_last.data) == 4 and only_last.data[-1].line.dash == "dash"


def test_marchenko_pastur_density_integrates_to_one():
    x = np.linspace(0.0, 4.0, 200_001)
    density = marchenko_pastur_density(x, sigma2=1.0, ratio=0.25)
    assert np.trapezoid(density, x) == pytest.approx(1.0, abs=1e-3)
    assert density[x > (1 + 0.5) ** 2 + 1e-6].max() == 0.0


def test_marchenko_pastur_figure_counts_outliers(check_payload):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(400, 100))
    eigenvalues = np.linalg.eigvalsh(w.T @ w / 400)
    eigenvalues = np.append(eigenvalues, 10.0)
    figure = marchenko_pastur(eigenvalues, sigma2=1.0, ratio=0.25)
    check_payload(figure)
    outliers = figure.data[-1]
    assert outliers.name == "1 outliers" and outliers.x.tolist() == [10.0]
    assert figure.data[0].xbins.size == pytest.approx(2.25 / 25)  # 101 eigenvalues: 25 bins


def test_composition_matrix_starts_the_scale_at_the_baseline(check_payload):
    scores = torch.rand(4, 4)
    figure = composition_matrix(scores, ["0.0", "0.1", "1.0", "1.1"], baseline=0.09, kind="K")
    check_payload(figure)
    assert figure.data[0].zmin == pytest.approx(0.09)
    assert "random baseline ≈ 0.090" in figure.layout.title.text
    with pytest.raises(ValueError):
        composition_matrix(torch.rand(3, 3), ["a", "b"])
    trimmed = composition_matrix(torch.rand(2, 3), ["0.0", "0.1"], readers=["1.0", "1.1", "1.2"])
    assert list(trimmed.data[0].x) == ["1.0", "1.1", "1.2"]


def test_singular_spectra_highlights_selected(check_payload):
    figure = singular_spectra({"0.0 QK": [3.0, 1.0], "0.1 QK": [2.0, 2.0]}, highlight=["0.1 QK"])
    check_payload(figure)
    assert figure.data[-1].name == "0.1 QK" and figure.data[-1].line.width == 2.5
    assert figure.data[0].showlegend is False


def test_prediction_figures(check_payload):
    figure = next_token_bars(["<x>", "b"], torch.tensor([0.7, 0.2]), reference=[0.5, 0.4])
    check_payload(figure)
    assert list(figure.data[1].y) == ["1. &lt;x&gt;", "2. b"]
    similarity = similarity_bars({"cosine": 0.9}, reference={"cosine": 1.0})
    check_payload(similarity)
    assert similarity.data[1].x[0] == pytest.approx(0.9)


def test_message_figure_wraps_and_escapes():
    figure = message_figure("<b>" + "word " * 40)
    text = figure.layout.annotations[0].text
    assert "&lt;b&gt;" in text and "<br>" in text


def test_label_grid_shows_support_and_insufficient_evidence(check_payload):
    labels = [["induction", "insufficient"], ["none", "next_token"]]
    figure = label_grid(
        labels,
        scores=[[0.98, 0.7], [0.2, 0.6]],
        support=[[9, 1], [20, 12]],
        categories=[["induction", "induction"], ["uniform", "next_token"]],
        min_support=4,
    )
    check_payload(figure)
    heatmap = figure.data[0]
    assert heatmap.customdata[0][0] == "induction 0.98 (support 9 queries)"
    assert heatmap.customdata[0][1] == (
        "insufficient evidence: induction 0.70 (support 1 query, below 4)"
    )
    assert heatmap.customdata[1][0] == "none: uniform 0.20 (support 20 queries)"
    assert heatmap.text[0][1] == "insuff.<br>0.70" and heatmap.text[1][1] == "next<br>0.60"
    names = [trace.name for trace in figure.data[1:]]
    assert names == ["induction", "insufficient evidence", "none", "next token"]
    colours = {trace.name: trace.marker.color for trace in figure.data[1:]}
    assert len(set(colours.values())) == 4  # insufficient evidence is not "none" grey


def test_sink_scores_marks_the_decision_and_hovers_the_baseline(check_payload):
    scores = torch.zeros(1, 2, 4)
    scores[0, 1, 0] = 0.9
    scores[0, 0, 3] = 0.5  # above 0.3 but not a sink by the decision
    sinks = torch.zeros(1, 2, 4, dtype=torch.bool)
    sinks[0, 1, 0] = True
    figure = sink_scores(
        scores,
        ["<bos>", "a", "b", "c"],
        sinks=sinks,
        baseline=torch.tensor([0.52, 0.27, 0.15, 0.25]),
        support=torch.tensor([4, 3, 2, 1]),
        rule="≥ 4× uniform",
    )
    check_payload(figure)
    heatmap, marks = figure.data
    assert list(marks.y) == ["L0.H1"] and list(marks.x) == ["0 &lt;bos&gt;"]
    assert marks.name == "sink (≥ 4× uniform)"
    assert heatmap.customdata.shape == (2, 4, 3)
    assert heatmap.customdata[1, 0, 0] == pytest.approx(0.9 / 0.52, rel=1e-6)
    assert heatmap.customdata[0, 3, 2] == 1.0
    assert "× uniform" in heatmap.hovertemplate and "queries see" in heatmap.hovertemplate
    with pytest.raises(ValueError, match="sinks must be"):
        sink_scores(scores, ["<bos>", "a", "b", "c"], sinks=sinks[0])
    # keys seen by fewer than min_queries queries are greyed out, in one band
    greyed = sink_scores(
        scores, ["<bos>", "a", "b", "c"], sinks=sinks, support=[4, 3, 2, 1], min_queries=4
    )
    (band,) = greyed.layout.shapes
    assert (band.x0, band.x1) == (0.5, 3.5)
    assert greyed.layout.annotations[0].text == "&lt; 4 queries"
