"""End-to-end report for toy-induction: the circuit ranked first, report.json
contents, the long score table, a self-contained and escaped HTML page, and
files written from the checkpoints alone (no model)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from headscope.models.spec import ModelSpec
from headscope.reports.checkpoints import ShardStore, orders_digest
from headscope.reports.config import ReportConfig
from headscope.reports.job import run_report
from headscope.reports.prompts import load_prompts
from headscope.reports.summaries import SummaryReducer
from headscope.reports.writers import write_outputs


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"report.json holds {constant}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _top2(document, method):
    return {(row["layer"], row["head"]) for row in document["top_heads"][method][:2]}


def test_every_method_ranks_the_circuit_first(local_report, circuit):
    document = _strict_json(local_report.files["json"])
    assert set(document["top_heads"]) == {"ablation", "gradient", "chg", "attribution"}
    # Attribution too: examples/induction.jsonl corrupts every other word of the
    # first copy, which breaks the circuit at both heads (see
    # examples/make_induction_prompts.py).
    for method in ("ablation", "gradient", "chg", "attribution"):
        assert _top2(document, method) == circuit.heads, method


def test_top_heads_are_sorted_and_printed_rows_match(local_report):
    document = _strict_json(local_report.files["json"])
    for method, rows in document["top_heads"].items():
        assert len(rows) == 8 and set(rows[0]) == {"layer", "head", "score"}
        scores = [row["score"] for row in rows]
        assert scores == sorted(scores, reverse=True), method
        assert rows == local_report.top_heads[method]


def test_report_json_has_identity_aggregates_and_agreement(local_report, toy_model, fast_config):
    document = _strict_json(local_report.files["json"])
    assert document["schema"] == "headscope.report" and document["schema_version"] == 1
    assert document["model"]["name"] == "toy-induction"
    assert document["model"]["weights_hash"] == toy_model.weights_hash
    assert document["headscope_version"]
    assert document["config"] == json.loads(json.dumps(fast_config.to_dict()))
    assert document["prompts"]["count"] == 12
    for method, aggregate in document["aggregates"].items():
        n = 3 if method == "chg" else 12  # CHG: one fit per shard of 4 prompts
        assert aggregate["n_units"] == n
        assert len(aggregate["heads"]) == 8
        mean = np.array([h["mean"] for h in aggregate["heads"]]).reshape(2, 4)
        assert np.allclose(mean, local_report.scores[method].mean(0))
        for head in aggregate["heads"]:
            assert head["ci_low"] <= head["mean"] <= head["ci_high"], (method, head)
    matrix = document["rank_agreement"]["matrix"]
    assert document["rank_agreement"]["statistic"] == "spearman"
    for a in matrix:
        assert matrix[a][a] == 1.0
        for b in matrix:
            assert matrix[a][b] == pytest.approx(matrix[b][a]) and -1 <= matrix[a][b] <= 1
    assert matrix["ablation"]["gradient"] > 0.5
    labels = document["taxonomy"]["labels"]
    assert len(labels) == 2 and len(labels[0]) == 4
    assert document["sinks"]["bos_prepended"] is True
    curves = document["pruning"]["curves"]
    assert set(curves) == set(document["top_heads"])
    for values in curves.values():
        assert len(values) == len(document["pruning"]["fractions"]) == 11
        assert values[0] == pytest.approx(document["pruning"]["clean_metric"])


def test_report_labels_the_circuit_heads(local_report, circuit):
    labels = _strict_json(local_report.files["json"])["taxonomy"]["labels"]
    assert labels[circuit.previous_head[0]][circuit.previous_head[1]] == "previous_token"
    assert labels[circuit.induction_head[0]][circuit.induction_head[1]] == "induction"


def test_parquet_and_csv_hold_one_row_per_unit_layer_head_and_method(local_report):
    table = pd.read_parquet(local_report.files["parquet"])
    assert list(table.columns) == [
        "method",
        "unit",
        "unit_kind",
        "line",
        "shard",
        "layer",
        "head",
        "score",
        "ci_low",
        "ci_high",
        "n_units",
    ]
    layers_heads = 2 * 4
    for method, units in (("ablation", 12), ("gradient", 12), ("attribution", 12), ("chg", 3)):
        rows = table[table["method"] == method]
        per_unit = rows[rows["unit_kind"] != "aggregate"]
        assert len(per_unit) == units * layers_heads, method
        assert per_unit.groupby("unit").size().eq(layers_heads).all()
        assert len(rows[rows["unit"] == "aggregate:mean"]) == layers_heads
        assert not rows.duplicated(["unit", "layer", "head"]).any()
    prompts = table[(table["method"] == "ablation") & (table["unit_kind"] == "prompt")]
    assert sorted(prompts["line"].unique()) == list(range(1, 13))
    assert sorted(prompts["shard"].unique()) == [0, 1, 2]
    # per-prompt rows hold exactly the checkpointed scores
    first = prompts[prompts["unit"] == "line-1"].sort_values(["layer", "head"])
    assert np.array_equal(first["score"].to_numpy(), local_report.scores["ablation"][0].ravel())
    csv = pd.read_csv(local_report.files["csv"])
    assert len(csv) == len(table)
    assert np.array_equal(csv["score"].to_numpy(), table["score"].to_numpy())
    assert len(table) == 4 * (12 + 1) * 8 - (12 - 3) * 8


def test_html_is_self_contained_with_plotly_inlined_once(local_report):
    from plotly.offline import get_plotlyjs

    text = local_report.files["html"].read_text(encoding="utf-8")
    plotly_js = get_plotlyjs()
    assert text.count(plotly_js[:200]) == 1
    assert "<script src" not in text and "cdn.plot.ly" not in text.replace(plotly_js, "")
    assert '<table id="top-heads">' in text
    for section in ("heatmaps", "agreement", "taxonomy", "pruning", "sinks", "position"):
        assert f'<section id="{section}">' in text, section
    # 4 method heatmaps; taxonomy, pruning, 2 sink and 1 position figures
    assert text.count('class="plotly-graph-div"') == 4 + 5
    assert not list(local_report.out_dir.glob(".*.tmp"))


class _Cells(HTMLParser):
    """The text of every table cell, as a browser shows it (entities decoded)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._open = False

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self._open = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._open = False

    def handle_data(self, data):
        if self._open:
            self.cells[-1] += data


def test_user_text_is_escaped_in_the_html(toy_model, tmp_path):
    hostile = "red cat <script>alert('x')</script> blue dog red cat blue dog"
    bold = "sun & tree <b>bold</b> sun tree"
    prompts = tmp_path / "hostile.txt"
    prompts.write_text(f"{hostile}\n{bold}\n", encoding="utf-8")
    config = ReportConfig(model="toy-induction", prompts=str(prompts), methods=("ablation",))
    result = run_report(config, tmp_path / "out", model=toy_model, progress=False)
    text = result.files["html"].read_text(encoding="utf-8")
    body = text.split("</head>", 1)[1]
    assert "<script>alert" not in body and "<b>bold</b>" not in body
    assert "&lt;script&gt;alert(" in body and "sun &amp; tree &lt;b&gt;bold&lt;/b&gt;" in body
    # escaped, not mangled: the page shows each prompt exactly as written
    parser = _Cells()
    parser.feed(body)
    assert hostile in parser.cells and bold in parser.cells
    assert str(prompts) in parser.cells  # the prompt file's name, in the run table


def test_report_files_are_written_from_the_checkpoints_alone(local_report, fast_config, tmp_path):
    """The writers take finished data: scores, prompt summaries and pruning curves
    read back from the checkpoints, the spec and weights hash from report.json.
    No model is loaded, and the files come out byte-identical."""
    (folder,) = (local_report.out_dir / ".shards").iterdir()
    identity = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    store = ShardStore(local_report.out_dir, identity)
    assert store.root == folder
    document = _strict_json(local_report.files["json"])
    prompt_set = load_prompts(fast_config.prompts)
    loaded = [store.load(i) for i in range(len(list(folder.glob("shard-*.safetensors"))))]
    assert sum(len(shard.summaries) for shard in loaded) == len(prompt_set.items)
    scores = {
        m: np.concatenate([shard.scores[m].numpy() for shard in loaded])
        for m in fast_config.methods
    }
    reducer = SummaryReducer()
    for shard in loaded:
        for summary in shard.summaries:
            reducer.add(summary)
    pruning = store.load_pruning(orders_digest({m: s.mean(0) for m, s in scores.items()}))
    assert pruning is not None
    files, top = write_outputs(
        tmp_path,
        fast_config,
        identity,
        prompt_set,
        scores,
        local_report.units,
        reducer.result(pruning),
        spec=ModelSpec(**document["model"]["spec"]),
        weights_hash=document["model"]["weights_hash"],
    )
    assert top == local_report.top_heads
    for name, path in files.items():
        assert path.read_bytes() == local_report.files[name].read_bytes(), name
