"""`headscope report --retrieval`: the optional retrieval section (reports.retrieval,
docs/methods.md §2.15) in report.json and report.html, equal to what
experiments.retrieval computes; absent by default; encoders get a reason."""

from __future__ import annotations

import json

import pytest

from headscope.experiments.retrieval import retrieval_scores
from headscope.reports.config import ReportConfig
from headscope.reports.job import run_report
from headscope.reports.retrieval import retrieval_section

COPYING = {(1, 0), (1, 3)}


@pytest.fixture(scope="module")
def retrieval_report(toy_model, prompts_file, tmp_path_factory):
    config = ReportConfig(model="toy-induction", prompts=str(prompts_file), methods=("ablation",))
    out = tmp_path_factory.mktemp("report-retrieval")
    return run_report(config, out, model=toy_model, progress=False, retrieval=True)


def test_the_section_carries_the_retrieval_heads_and_their_evidence(toy_model, retrieval_report):
    document = json.loads(retrieval_report.files["json"].read_text(encoding="utf-8"))
    section = document["retrieval"]
    scores = section["scores"]["retrieval"]["score"]
    expected = retrieval_scores(toy_model).scores.score  # the same default task
    flat = [value for row in scores for value in row]
    assert flat == pytest.approx(expected.flatten().tolist(), abs=1e-12)
    retrieval = {
        (row["layer"], row["head"]) for row in section["labels"] if row["label"] == "retrieval"
    }
    assert retrieval == COPYING
    assert all(check["separated"] for check in section["checks"])
    assert section["task"]["copy_accuracy"]["total"] > 0
    html = retrieval_report.files["html"].read_text(encoding="utf-8")
    assert 'id="retrieval"' in html and 'id="retrieval-labels"' in html
    assert "copy steps" in html and "dormant" in html


def test_the_default_report_has_no_section(local_report):
    document = json.loads(local_report.files["json"].read_text(encoding="utf-8"))
    assert "retrieval" not in document
    assert 'id="retrieval"' not in local_report.files["html"].read_text(encoding="utf-8")


def test_encoders_get_a_reason(minilm_model):
    section = retrieval_section(minilm_model)
    assert "causal language model" in section["skipped"]
