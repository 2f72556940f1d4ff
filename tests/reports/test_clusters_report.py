"""`headscope report --clusters`: the optional head-clusters section (reports.clusters,
docs/methods.md §2.12) in report.json and report.html, equal to what
experiments.redundancy computes for the same prompts; absent by default."""

from __future__ import annotations

import json

import pytest

from headscope.experiments.redundancy import redundancy
from headscope.reports.config import ReportConfig
from headscope.reports.job import run_report
from headscope.reports.prompts import load_prompts
from headscope.reports.scoring import scoring_prompt


@pytest.fixture(scope="module")
def clusters_report(toy_model, prompts_file, tmp_path_factory):
    config = ReportConfig(model="toy-induction", prompts=str(prompts_file), methods=("ablation",))
    out = tmp_path_factory.mktemp("report-clusters")
    result = run_report(config, out, model=toy_model, progress=False, clusters=True)
    return config, result


def test_the_section_carries_the_induction_pair_and_its_check(toy_model, clusters_report):
    config, result = clusters_report
    document = json.loads(result.files["json"].read_text(encoding="utf-8"))
    section = document["clusters"]
    items = load_prompts(config.prompts).items
    expected = redundancy(toy_model, [scoring_prompt(item) for item in items])
    layer = section["layers"][1]
    assert [0, 3] in layer["clusters"]
    assert layer["clusters"] == [list(c) for c in expected.clusters.layers[1].clusters]
    check = next(
        c for c in section["check"]["clusters"] if c["layer"] == 1 and c["heads"] == [0, 3]
    )
    direct = expected.ablation_of(1, 0)
    assert direct is not None
    assert check["whole_harm"]["mean"] == pytest.approx(float(direct.whole_harm.mean()), abs=1e-9)
    assert check["whole_harm"]["mean"] > max(v["mean"] for v in check["single_harm"])
    assert section["support"]["prompts"] == len(items)
    assert section["baseline"]["random_map_correlation"] == pytest.approx(
        expected.clusters.baseline
    )
    html = result.files["html"].read_text(encoding="utf-8")
    assert 'id="clusters"' in html and 'id="cluster-table"' in html
    assert "1.0, 1.3" in html and "Pearson correlation" in html


def test_the_default_report_has_no_section(local_report):
    document = json.loads(local_report.files["json"].read_text(encoding="utf-8"))
    assert "clusters" not in document
    assert 'id="clusters"' not in local_report.files["html"].read_text(encoding="utf-8")


def test_the_cli_option_asks_for_the_section(prompts_file, tmp_path):
    from typer.testing import CliRunner

    from headscope.cli import app

    out = tmp_path / "report"
    args = ["report", "--model", "toy-induction", "--prompts", str(prompts_file), "--out"]
    result = CliRunner().invoke(
        app, [*args, str(out), "--methods", "ablation", "--no-progress", "--clusters"]
    )
    assert result.exit_code == 0, result.stderr
    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [0, 3] in document["clusters"]["layers"][1]["clusters"]
