"""End-to-end report for toy-induction: the circuit ranked first, rankings by
magnitude with the sign kept (attribution's negative head among its top
heads), bootstrap intervals with "n.s." where they include zero, what the
scores measured (metric, targets, baseline), report.json contents, the long
score table, a self-contained and escaped HTML page, and files written from
the checkpoints alone (no model)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from headscope.analyses.uncertainty import bootstrap_interval
from headscope.experiments.metrics import metric_info
from headscope.models.spec import ModelSpec
from headscope.reports.aggregate import aggregate as aggregate_scores
from headscope.reports.checkpoints import ShardStore, orders_digest
from headscope.reports.config import ReportConfig
from headscope.reports.job import run_report, shard_items
from headscope.reports.prompts import load_prompts
from headscope.reports.scoring import measured
from headscope.reports.summaries import SummaryReducer
from headscope.reports.writers import write_outputs


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"report.json holds {constant}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _top2(document, method):
    return {(row["layer"], row["head"]) for row in document["top_heads"][method][:2]}


def _heads(rows, k=None):
    return [(row["layer"], row["head"]) for row in rows[:k]]


def test_every_method_ranks_the_circuit_first(local_report, circuit):
    document = _strict_json(local_report.files["json"])
    assert set(document["top_heads"]) == {"ablation", "gradient", "chg", "attribution"}
    for method in ("ablation", "gradient", "chg"):
        assert _top2(document, method) == circuit.heads, method
    # Attribution too: examples/induction.jsonl corrupts every other word of the
    # first copy, which breaks the circuit at both heads (see
    # examples/make_induction_prompts.py): they restore the most of the gap,
    # and rank in its top four by magnitude beside a head that moves away from it.
    rows = document["top_heads"]["attribution"]
    assert set(_heads([r for r in rows if r["score"] > 0], 2)) == circuit.heads
    assert circuit.heads <= set(_heads(rows, 4))


def test_attribution_ranks_its_negative_head_by_magnitude(local_report):
    """The issue: head 0.3 (ablation about +1 nat) has a negative attribution
    score, so a signed ranking put it last and the attribution pruning curve
    removed it first. By magnitude it is in the top four, shown with its sign,
    and pruned late."""
    document = _strict_json(local_report.files["json"])
    mean = local_report.scores["attribution"].mean(0)
    ablation = local_report.scores["ablation"].mean(0)
    layers, heads = mean.shape
    cells = [(layer, head) for layer in range(layers) for head in range(heads)]
    negative = max((c for c in cells if mean[c] < 0), key=lambda c: abs(mean[c]))
    assert abs(mean[negative]) > 0.05 and ablation[negative] > 0.5  # a real effect
    signed = sorted(cells, key=lambda c: (-mean[c], c))
    assert signed[-1] == negative  # where the signed ranking put it
    rows = document["top_heads"]["attribution"]
    assert negative in _heads(rows, 4)
    row = rows[_heads(rows).index(negative)]
    assert row["sign"] == "-" and row["score"] == pytest.approx(mean[negative])
    assert row["significant"] is True and row["ci_high"] < 0
    assert negative == (0, 3)  # the head the issue names
    # pruning removes the least |mean| first: one head out costs next to nothing,
    # where removing this head first cost the ablation's nat
    curve = document["pruning"]["curves"]["attribution"]
    fractions = document["pruning"]["fractions"]
    assert round(fractions[1] * layers * heads) == 1
    assert abs(curve[1] - curve[0]) < 0.1 * ablation[negative]
    # printed the same way: magnitude order, signed
    assert local_report.top_heads["attribution"] == rows


def test_top_heads_are_sorted_and_printed_rows_match(local_report):
    document = _strict_json(local_report.files["json"])
    for method, rows in document["top_heads"].items():
        assert len(rows) == 8
        assert set(rows[0]) == {
            "layer",
            "head",
            "score",
            "sign",
            "ci_low",
            "ci_high",
            "significant",
        }
        magnitudes = [abs(row["score"]) for row in rows]
        assert magnitudes == sorted(magnitudes, reverse=True), method
        for row in rows:
            assert row["sign"] == ("+" if row["score"] > 0 else "-" if row["score"] < 0 else "0")
        assert rows == local_report.top_heads[method]


def test_report_json_has_identity_aggregates_and_agreement(local_report, toy_model, fast_config):
    document = _strict_json(local_report.files["json"])
    assert document["schema"] == "headscope.report" and document["schema_version"] == 2
    assert document["model"]["name"] == "toy-induction"
    assert document["model"]["weights_hash"] == toy_model.weights_hash
    assert document["headscope_version"]
    assert document["config"] == json.loads(json.dumps(fast_config.to_dict()))
    assert document["prompts"]["count"] == 12
    for method, aggregate in document["aggregates"].items():
        # CHG: one unit per seed of each shard's fit (3 shards of 4 prompts, 2 seeds)
        n = 3 * fast_config.seeds if method == "chg" else 12
        assert aggregate["n_units"] == n == len(local_report.units[method])
        assert aggregate["interval"].startswith("percentile bootstrap, 2000 resamples")
        assert aggregate["confidence"] == 0.95 and aggregate["warnings"] == []
        assert len(aggregate["heads"]) == 8
        reference = bootstrap_interval(torch.from_numpy(local_report.scores[method]))
        mean = np.array([h["mean"] for h in aggregate["heads"]]).reshape(2, 4)
        low = np.array([h["ci_low"] for h in aggregate["heads"]]).reshape(2, 4)
        high = np.array([h["ci_high"] for h in aggregate["heads"]]).reshape(2, 4)
        assert np.allclose(mean, local_report.scores[method].mean(0))
        np.testing.assert_allclose(low, reference.low.numpy(), rtol=1e-12)
        np.testing.assert_allclose(high, reference.high.numpy(), rtol=1e-12)
        for head in aggregate["heads"]:
            assert head["ci_low"] - 1e-12 <= head["mean"] <= head["ci_high"] + 1e-12, head
    assert local_report.units["chg"] == [
        f"shard-{shard}/seed-{seed}" for shard in range(3) for seed in range(fast_config.seeds)
    ]
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


def test_report_says_what_the_scores_measured(local_report):
    """The metric (name, unit, which way is better), the target rule asked for
    and what it resolved to per prompt, and the clean-metric baseline with its
    interval: in report.json and in the page's run table."""
    document = _strict_json(local_report.files["json"])
    metric = document["metric"]
    assert (metric["name"], metric["unit"], metric["better"]) == ("loss", "nats", "lower is better")
    scored = document["prompts"]["scored"]
    assert [p["line"] for p in scored] == list(range(1, 13))
    # every line of examples/induction.jsonl has a target: auto scores the continuation
    assert {p["target_rule"] for p in scored} == {"continuation"}
    tokens = sum(p["target_tokens"] for p in scored)
    assert metric["target"] == "auto" and metric["target_resolved"] == {"continuation": 12}
    assert metric["scored_tokens"] == tokens > 12
    assert (
        metric["target_described"] == f"auto → continuation on 12 prompts, {tokens} scored tokens"
    )
    clean = np.array([p["clean_metric"] for p in scored])
    baseline = metric["baseline"]
    assert baseline["mean"] == pytest.approx(clean.mean()) and baseline["n"] == 12
    assert baseline["ci_low"] < baseline["mean"] < baseline["ci_high"]
    assert baseline["interval"] == "percentile bootstrap, 2000 resamples"
    # the pruning curves start from the same clean loss (they use every prompt here)
    assert document["pruning"]["clean_metric"] == pytest.approx(clean.mean(), rel=1e-5)
    assert document["warnings"] == {}
    parser = _Cells()
    parser.feed(local_report.files["html"].read_text(encoding="utf-8"))
    assert any("lower is better" in cell and "nats" in cell for cell in parser.cells)
    assert f"auto → continuation on 12 prompts, {tokens} scored tokens" in parser.cells
    assert any(
        cell.startswith(f"clean loss {baseline['mean']:.4g} nats, 95% CI [")
        for cell in parser.cells
    )


def test_intervals_and_not_significant_heads_in_the_html(local_report):
    document = _strict_json(local_report.files["json"])
    text = local_report.files["html"].read_text(encoding="utf-8")

    def row(method, layer, head):
        pattern = (
            rf'<tr data-method="{method}" data-rank="\d+" data-layer="{layer}" '
            rf'data-head="{head}"[^>]*>(.*?)</tr>'
        )
        (match,) = re.findall(pattern, text)
        return re.findall(r"<td[^>]*>(.*?)</td>", match)

    shown = {True: 0, False: 0}
    for method in ("ablation", "gradient", "attribution"):
        for head in document["aggregates"][method]["heads"]:
            cells = row(method, head["layer"], head["head"])
            includes_zero = head["ci_low"] <= 0 <= head["ci_high"]
            assert head["significant"] is (not includes_zero), (method, head)
            assert cells[5] == ("n.s." if includes_zero else "yes"), (method, head, cells)
            assert cells[4].startswith("[") and cells[4].endswith("]")
            shown[includes_zero] += 1
    assert shown[True] >= 1 and shown[False] >= 1  # both kinds occur on this data
    for head in document["aggregates"]["chg"]["heads"]:  # a gate is never 0: not tested
        assert head["significant"] is None
        assert row("chg", head["layer"], head["head"])[5] == "–"


def test_parquet_and_csv_hold_one_row_per_unit_layer_head_and_method(local_report, fast_config):
    table = pd.read_parquet(local_report.files["parquet"])
    assert list(table.columns) == [
        "method",
        "unit",
        "unit_kind",
        "line",
        "shard",
        "seed",
        "layer",
        "head",
        "score",
        "ci_low",
        "ci_high",
        "significant",
        "n_units",
    ]
    layers_heads = 2 * 4
    seeds = 3 * fast_config.seeds
    for method, units in (("ablation", 12), ("gradient", 12), ("attribution", 12), ("chg", seeds)):
        rows = table[table["method"] == method]
        per_unit = rows[rows["unit_kind"] != "aggregate"]
        assert len(per_unit) == units * layers_heads, method
        assert per_unit.groupby("unit").size().eq(layers_heads).all()
        assert len(rows[rows["unit"] == "aggregate:mean"]) == layers_heads
        assert not rows.duplicated(["unit", "layer", "head"]).any()
        # the aggregate rows carry the bootstrap interval of the unit rows
        mean = rows[rows["unit"] == "aggregate:mean"].sort_values(["layer", "head"])
        reference = bootstrap_interval(torch.from_numpy(local_report.scores[method]))
        np.testing.assert_allclose(mean["ci_low"], reference.low.numpy().ravel(), rtol=1e-12)
        np.testing.assert_allclose(mean["ci_high"], reference.high.numpy().ravel(), rtol=1e-12)
        if method != "chg":
            significant = reference.significant.numpy().ravel()
            assert mean["significant"].tolist() == significant.tolist(), method
    prompts = table[(table["method"] == "ablation") & (table["unit_kind"] == "prompt")]
    assert sorted(prompts["line"].unique()) == list(range(1, 13))
    assert sorted(prompts["shard"].unique()) == [0, 1, 2]
    chg = table[(table["method"] == "chg") & (table["unit_kind"] == "seed")]
    assert chg[["shard", "seed"]].drop_duplicates().values.tolist() == [
        [shard, seed] for shard in range(3) for seed in range(fast_config.seeds)
    ]
    # per-prompt rows hold exactly the checkpointed scores
    first = prompts[prompts["unit"] == "line-1"].sort_values(["layer", "head"])
    assert np.array_equal(first["score"].to_numpy(), local_report.scores["ablation"][0].ravel())
    csv = pd.read_csv(local_report.files["csv"])
    assert len(csv) == len(table)
    assert np.array_equal(csv["score"].to_numpy(), table["score"].to_numpy())
    assert len(table) == 4 * (12 + 1) * 8 - (12 - seeds) * 8


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
    shards = shard_items(prompt_set.items, fast_config.shard_size)
    assert sum(len(shard.summaries) for shard in loaded) == len(prompt_set.items)
    scores = {
        m: np.concatenate([shard.scores[m].numpy() for shard in loaded])
        for m in fast_config.methods
    }
    reducer = SummaryReducer()
    for shard in loaded:
        for summary in shard.summaries:
            reducer.add(summary)
    # pruned by magnitude: the curves were ranked by |mean score|
    pruning = store.load_pruning(
        orders_digest({m: np.abs(aggregate_scores(s).mean) for m, s in scores.items()})
    )
    assert pruning is not None
    scored = measured(
        fast_config,
        list(zip(shards, [s.scoring for s in loaded], strict=True)),
        metric_info("loss"),
    )
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
        measured=scored,
    )
    assert top == local_report.top_heads
    for name, path in files.items():
        assert path.read_bytes() == local_report.files[name].read_bytes(), name
