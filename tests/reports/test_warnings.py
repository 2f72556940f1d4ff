"""Degenerate results are said, not drawn: a Causal Head Gating fit that the
regulariser, not the metric, decided (the loss over every token of repeated
random words, `target="all"`) reaches report.json with the shards and lines it
applies to, stderr, and report.html next to the method; a method degenerate in
every shard gets no heatmap, ranking or pruning curve, one degenerate in some
shards keeps them beside its warning."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from headscope.cli import app
from headscope.dashboard.examples import TOY_PROMPTS
from headscope.reports.config import ReportConfig
from headscope.reports.job import run_report

#: Fast CHG settings that still make the all-token fit degenerate on these prompts.
FAST_CHG = ["--seeds", "2", "--chg-steps", "20"]


def _method_figure(html: str, method: str) -> str:
    """The heatmap cell of `method` in the page (its warning and figure)."""
    start = html.index(f'<div class="method-figure" data-method="{method}">')
    end = html.find('<div class="method-figure"', start + 1)
    return html[start : end if end > 0 else html.index("</section>", start)]


def test_a_chg_fit_degenerate_in_every_shard_is_said_and_not_drawn(tmp_path):
    # Six-word repeats (the first, ten-word, prompt gives an informative fit).
    prompts = tmp_path / "repeats.txt"
    prompts.write_text("\n".join(TOY_PROMPTS[1:6]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["report", "--model", "toy-induction", "--prompts", str(prompts), "--out", str(out)]
    options = ["--methods", "ablation,chg", "--target", "all", "--shard-size", "3", "--no-progress"]
    result = CliRunner().invoke(app, [*args, *options, *FAST_CHG])
    assert result.exit_code == 0, result.stderr

    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    entries = document["warnings"]["chg"]
    assert [(e["shards"], e["lines"]) for e in entries] == [([0], [1, 2, 3]), ([1], [4, 5])]
    assert all(e["message"].startswith("degenerate fit:") for e in entries)
    assert document["aggregates"]["chg"]["warnings"] == entries
    assert document["aggregates"]["chg"]["says_nothing"] is True
    assert "ablation" not in document["warnings"]
    assert document["aggregates"]["ablation"]["says_nothing"] is False
    assert document["metric"]["target_described"].startswith("all → all on 5 prompts")

    # stdout: no ranking for CHG; stderr: the warning of each shard
    lines = result.stdout.splitlines()
    assert lines[2].split() == [
        "top",
        "heads",
        "by",
        "chg",
        "not",
        "ranked:",
        *lines[2].split()[6:],
    ]
    assert lines[1].split()[:4] == ["top", "heads", "by", "ablation"]
    assert result.stderr.count("headscope: warning: chg (shards ") == 2
    assert "degenerate fit" in result.stderr

    html = (out / "report.html").read_text(encoding="utf-8")
    warnings = html[html.index('<section id="warnings">') : html.index('<section id="top">')]
    assert '<div class="warning void" data-method="chg">' in warnings
    assert warnings.count("degenerate fit: in every seed") == 2
    assert "shard 0), 3 of 5 prompts (line 1, 2, 3)" in warnings
    # said next to the method instead of its heatmap, ranking and pruning curve
    figure = _method_figure(html, "chg")
    assert "no heatmap" in figure and "degenerate fit" in figure
    assert 'id="figure-heatmap-chg"' not in html and 'id="figure-heatmap-ablation"' in html
    assert not re.search(r'<tr data-method="chg"', html)
    assert re.search(r'<tr class="warn-row" data-warning="chg">.*not ranked: degenerate fit', html)
    assert "Not drawn: chg" in html
    assert html.count('class="plotly-graph-div"') == 1 + 5  # ablation's heatmap and the rest


def test_a_chg_fit_degenerate_in_some_shards_keeps_its_heatmap_beside_the_warning(
    toy_model, tmp_path
):
    prompts = tmp_path / "mixed.txt"
    prompts.write_text("\n".join(TOY_PROMPTS[:4]) + "\n", encoding="utf-8")
    config = ReportConfig(
        model="toy-induction",
        prompts=str(prompts),
        methods=("chg",),
        target="all",
        shard_size=2,
        seeds=2,
        chg_steps=20,
    )
    result = run_report(config, tmp_path / "out", model=toy_model, progress=False)
    assert result.measured is not None and not result.measured.void("chg")
    document = json.loads(result.files["json"].read_text(encoding="utf-8"))
    (entry,) = document["warnings"]["chg"]
    assert (entry["shards"], entry["lines"]) == ([1], [3, 4])
    assert document["aggregates"]["chg"]["says_nothing"] is False
    html = result.files["html"].read_text(encoding="utf-8")
    figure = _method_figure(html, "chg")
    assert '<div class="warning">' in figure and entry["message"][:40] in figure
    assert 'id="figure-heatmap-chg"' in figure
    assert len(re.findall(r'<tr data-method="chg"', html)) == 8
    assert "Not drawn" not in html
