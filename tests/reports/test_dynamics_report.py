"""`headscope dynamics`: the training-dynamics page and JSON for a checkpoint
series, with a diff of two checkpoints (docs/methods.md §2.13, §2.14)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from headscope.cli import app
from headscope.experiments.dynamics import repeat_prompts

runner = CliRunner()


def test_the_command_writes_the_page_and_the_json(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(repeat_prompts(4, 8, seed=9)) + "\n")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "dynamics",
            "toy-induction",
            "--out",
            str(out),
            "--prompts",
            str(prompts),
            "--diff",
            "550,800",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "head 1.3 induction rose fastest" in result.output
    document = json.loads((out / "dynamics.json").read_text())
    assert document["steps"] == [0, 400, 550, 650, 800, 1200, 3000]
    assert document["prompts"] == 4
    phase = document["phase_change"]
    assert (phase["layer"], phase["head"]) == (1, 3) and phase["coincide"]
    values = document["taxonomy_scores"]["values"]["induction"]
    assert values[-1][1][3] > 0.8
    # the page's numbers are the JSON's: the phase-change row, the diff of 550 and 800
    page = (out / "dynamics.html").read_text()
    assert f"{phase['score_before']:.3f} → {phase['score_after']:.3f}" in page
    assert "toy-induction@step800 − toy-induction@step550" in page
    diff = document["diff"]
    assert (diff["a"], diff["b"]) == ("toy-induction@step550", "toy-induction@step800")
    delta = diff["deltas"]["induction"]
    assert delta["low"][1][3] > 0  # 1.3 became an induction head between them
    assert "<script src=" not in page  # plotly.js is inlined, nothing remote


def test_bad_arguments_say_why(tmp_path):
    result = runner.invoke(app, ["dynamics", "--diff", "5", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--diff takes two steps" in result.output
    result = runner.invoke(app, ["dynamics", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no checkpoint series" in result.output
