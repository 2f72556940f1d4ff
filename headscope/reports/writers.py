"""The report's files: report.html, report.json, head_scores.parquet and head_scores.csv.

- `head_scores.parquet` / `.csv`: long format, one row per (method, unit, layer,
  head), units being prompts (`line-N`), shards (`shard-N`, CHG) and
  `aggregate:mean` (the mean over units, with its 95% t-interval).
- `report.json`: schema version, full config, model name and weights hash,
  headscope version, per-head aggregates with 95% confidence intervals, Spearman
  rank agreement between methods, `top_heads` per method (every head, most
  important first) and the taxonomy, sink, position and pruning summaries.
- `report.html`: one self-contained offline page, plotly.js inlined once;
  every user-supplied string (prompts, tokens, model and file names) is
  HTML-escaped.

Every file is written to a temporary name and renamed into place, so a killed
run leaves no partial file under a final name; the contents depend only on the
scores and the config (no timestamps), so a resumed run writes the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headscope.experiments.metrics import metric_info
from headscope.figures.heads import importance_heatmap, label_grid, layer_head_heatmap
from headscope.figures.heads import pruning_curve as pruning_figure
from headscope.figures.position import influence_by_distance as influence_figure
from headscope.figures.position import sink_scores as sink_figure
from headscope.reports.aggregate import MethodAggregate, aggregate, rank_agreement, top_heads
from headscope.reports.checkpoints import atomic_output, atomic_write_text, clean_output_temporaries
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptSet
from headscope.reports.scoring import PER_PROMPT, SCORE_MEANING
from headscope.reports.summaries import SINK_THRESHOLD, Summaries, summarize

SCHEMA = "headscope.report"
SCHEMA_VERSION = 1
#: Heads per method in the HTML table (report.json lists every head).
TABLE_ROWS = 10
#: Prompts listed in the HTML appendix.
LISTED_PROMPTS = 20

TITLES = {
    "ablation": "Zero ablation",
    "gradient": "Gradient importance (Michel et al. 2019)",
    "chg": "Causal Head Gating facilitation (Nam et al. 2025)",
    "attribution": "Attribution patching",
}


def write_outputs(
    out: str | Path,
    model: Any,
    config: ReportConfig,
    identity: Mapping[str, Any],
    prompt_set: PromptSet,
    scores: Mapping[str, np.ndarray],
    units: Mapping[str, Sequence[str]],
) -> tuple[dict[str, Path], dict[str, list[dict]]]:
    """Write every report file into `out`; return their paths and `top_heads`
    (method → every head as `{"layer", "head", "score"}`, most important first)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_output_temporaries(out)
    aggregates = {method: aggregate(scores[method]) for method in config.methods}
    means = {method: result.mean for method, result in aggregates.items()}
    top = {method: top_heads(means[method]) for method in config.methods}
    table = rank_agreement(means)
    agreement = {a: {b: table[a][b] for b in config.methods} for a in config.methods}
    summaries = summarize(model, prompt_set.items, config, means)

    files = {
        "parquet": out / "head_scores.parquet",
        "csv": out / "head_scores.csv",
        "json": out / "report.json",
        "html": out / "report.html",
    }
    table = score_table(scores, units, aggregates, config)
    with atomic_output(files["parquet"]) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_output(files["csv"]) as tmp:
        table.to_csv(tmp, index=False)
    document = report_document(
        model, config, identity, prompt_set, aggregates, agreement, top, summaries, files
    )
    atomic_write_text(
        files["json"], json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n"
    )
    atomic_write_text(files["html"], render_html(document, prompt_set, aggregates, summaries))
    return files, top


# -- the score table ----------------------------------------------------------------------------


def score_table(
    scores: Mapping[str, np.ndarray],
    units: Mapping[str, Sequence[str]],
    aggregates: Mapping[str, MethodAggregate],
    config: ReportConfig,
) -> pd.DataFrame:
    """Long format: method, unit, unit_kind (prompt | shard | aggregate), line,
    shard, layer, head, score, ci_low, ci_high, n_units."""
    frames = []
    for method in config.methods:
        values = scores[method]
        _, n_layers, n_heads = values.shape
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        layer, head = layer.ravel(), head.ravel()
        per_prompt = method in PER_PROMPT
        for index, unit in enumerate(units[method]):
            number = int(unit.split("-", 1)[1])
            frames.append(
                pd.DataFrame(
                    {
                        "method": method,
                        "unit": unit,
                        "unit_kind": "prompt" if per_prompt else "shard",
                        "line": number if per_prompt else None,
                        "shard": index // config.shard_size if per_prompt else number,
                        "layer": layer,
                        "head": head,
                        "score": values[index].ravel(),
                        "ci_low": np.nan,
                        "ci_high": np.nan,
                        "n_units": 1,
                    }
                )
            )
        result = aggregates[method]
        frames.append(
            pd.DataFrame(
                {
                    "method": method,
                    "unit": "aggregate:mean",
                    "unit_kind": "aggregate",
                    "line": None,
                    "shard": None,
                    "layer": layer,
                    "head": head,
                    "score": result.mean.ravel(),
                    "ci_low": result.low.ravel(),
                    "ci_high": result.high.ravel(),
                    "n_units": result.n,
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    return table.astype(
        {
            "method": "string",
            "unit": "string",
            "unit_kind": "string",
            "line": "Int64",
            "shard": "Int64",
            "layer": "int32",
            "head": "int32",
            "score": "float64",
            "ci_low": "float64",
            "ci_high": "float64",
            "n_units": "int32",
        }
    )


# -- report.json --------------------------------------------------------------------------------


def _grid(values: np.ndarray) -> list[list[float | None]]:
    return [[_finite(v) for v in row] for row in np.asarray(values, dtype=np.float64)]


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def report_document(
    model: Any,
    config: ReportConfig,
    identity: Mapping[str, Any],
    prompt_set: PromptSet,
    aggregates: Mapping[str, MethodAggregate],
    agreement: Mapping[str, Mapping[str, float]],
    top: Mapping[str, list[dict]],
    summaries: Summaries,
    files: Mapping[str, Path],
) -> dict[str, Any]:
    """The contents of report.json (NaN becomes null when written)."""
    spec = model.spec
    heads = {}
    for method, result in aggregates.items():
        rows = []
        for layer in range(result.mean.shape[0]):
            for head in range(result.mean.shape[1]):
                rows.append(
                    {
                        "layer": layer,
                        "head": head,
                        "mean": result.mean[layer, head],
                        "ci_low": result.low[layer, head],
                        "ci_high": result.high[layer, head],
                    }
                )
        heads[method] = {
            "meaning": SCORE_MEANING[method],
            "unit": "prompt" if method in PER_PROMPT else "shard",
            "n_units": result.n,
            "confidence": 0.95,
            "interval": "t-interval of the mean over units (null with one unit)",
            "heads": rows,
        }
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "headscope_version": identity["headscope_version"],
        "model": {
            "name": spec.name,
            "source": config.model,
            "weights_hash": model.weights_hash,
            "spec": spec.to_dict(),
        },
        "config": config.to_dict(),
        "prompts": {
            "file": config.prompts,
            "sha256": identity["prompts_sha256"],
            "count": len(prompt_set.items),
            "skipped": list(prompt_set.skipped),
        },
        "metric": {
            "name": config.metric,
            "direction": metric_info(config.metric).direction,
            "target": config.target,
            "ablation_mode": "zero",
        },
        "aggregates": heads,
        "rank_agreement": {
            "statistic": "spearman",
            "over": "mean scores of every head",
            "matrix": {a: dict(row) for a, row in agreement.items()},
        },
        "top_heads": {method: list(rows) for method, rows in top.items()},
        "taxonomy": {
            "labels": summaries.labels,
            "scores": {name: _grid(values) for name, values in summaries.taxonomy.items()},
        },
        "sinks": {
            "statistic": "alpha_0: mean attention on the first token over the queries that see it",
            "bos_prepended": summaries.bos_prepended,
            "threshold": SINK_THRESHOLD,
            "alpha_first_token": _grid(summaries.sink_alpha),
            "sink_heads": [{"layer": layer, "head": head} for layer, head in summaries.sink_heads],
        },
        "position": {
            "statistic": "cumulative influence by |query - key| distance (no residual)",
            "influence_by_distance": _grid(summaries.influence),
            "causal_mask_baseline": _grid(summaries.influence_baseline),
            "peak_distance": summaries.peak_distance,
        },
        "pruning": {
            "fractions": summaries.pruning_fractions,
            "curves": summaries.pruning,
            "clean_metric": summaries.clean_metric,
            "n_prompts": summaries.pruning_prompts,
            "ablation_mode": "zero",
        },
        "files": {name: path.name for name, path in files.items()},
    }


# -- report.html --------------------------------------------------------------------------------

_STYLE = """
body { font-family: Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif; color: #222;
       margin: 0 auto; max-width: 1200px; padding: 0 24px 48px; }
h1 { font-size: 22px; margin: 24px 0 4px; } h2 { font-size: 17px; margin: 32px 0 8px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 16px 0 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody.method tr:first-child td { border-top: 2px solid #999; }
code, .mono { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 12px; }
.note { color: #555; font-size: 13px; max-width: 900px; }
"""


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def _figure(figure: Any, name: str) -> str:
    return figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"figure-{name}",
        config={"displaylogo": False, "responsive": True},
    )


def render_html(
    document: Mapping[str, Any],
    prompt_set: PromptSet,
    aggregates: Mapping[str, MethodAggregate],
    summaries: Summaries,
) -> str:
    """The self-contained report page (plotly.js inlined once, in the head)."""
    from plotly.offline import get_plotlyjs

    model = document["model"]
    sections = [
        _summary_section(document),
        _top_section(document, summaries),
        _heatmap_section(aggregates),
        _agreement_section(document),
        _taxonomy_section(summaries),
        _pruning_section(document, summaries),
        _sink_section(summaries),
        _position_section(summaries),
        _prompts_section(prompt_set),
    ]
    title = f"headscope report: {model['name']}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


def _summary_section(document: Mapping[str, Any]) -> str:
    config, model, prompts = document["config"], document["model"], document["prompts"]
    rows = [
        ("model", model["name"]),
        ("weights sha256", model["weights_hash"]),
        ("architecture", model["spec"]["architecture"]),
        ("layers × heads", f"{model['spec']['n_layers']} × {model['spec']['n_heads']}"),
        ("prompt file", prompts["file"]),
        ("prompts", f"{prompts['count']} ({len(prompts['skipped'])} malformed lines skipped)"),
        ("metric", f"{config['metric']} ({document['metric']['direction']})"),
        ("methods", ", ".join(config["methods"])),
        (
            "shards",
            f"{config['shard_size']} prompts each; CHG: {config['seeds']} seeds, "
            f"{config['chg_steps']} steps per phase",
        ),
        ("long prompts", config["on_long"]),
        ("headscope", document["headscope_version"]),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<section id="summary"><table id="run">{body}</table></section>'


def _label(summaries: Summaries, layer: int, head: int) -> str:
    return summaries.labels[layer][head].replace("_", " ")


def _top_section(document: Mapping[str, Any], summaries: Summaries) -> str:
    parts = []
    for method, rows in document["top_heads"].items():
        result = document["aggregates"][method]["heads"]
        intervals = {(r["layer"], r["head"]): (r["ci_low"], r["ci_high"]) for r in result}
        body = []
        for rank, row in enumerate(rows[:TABLE_ROWS], start=1):
            layer, head = row["layer"], row["head"]
            low, high = intervals[(layer, head)]
            interval = (
                "–"
                if low is None or not math.isfinite(low)
                else (f"[{_number(low)}, {_number(high)}]")
            )
            body.append(
                f'<tr data-method="{escape(method)}" data-rank="{rank}" '
                f'data-layer="{layer}" data-head="{head}">'
                f'<td>{escape(method)}</td><td class="num">{rank}</td>'
                f'<td class="mono">L{layer}.H{head}</td>'
                f'<td class="num">{_number(row["score"])}</td><td class="num">{interval}</td>'
                f"<td>{escape(_label(summaries, layer, head))}</td></tr>"
            )
        parts.append(
            f'<tbody class="method" data-method="{escape(method)}">{"".join(body)}</tbody>'
        )
    return (
        '<section id="top"><h2>Top heads per method</h2>'
        '<p class="note">Heads ranked by their mean score over prompts (over shards for CHG); '
        "higher is more important for every method. 95% t-intervals of the mean.</p>"
        '<table id="top-heads"><thead><tr><th>method</th><th>rank</th><th>head</th>'
        "<th>score</th><th>95% CI</th><th>taxonomy label</th></tr></thead>"
        + "".join(parts)
        + "</table></section>"
    )


def _heatmap_section(aggregates: Mapping[str, MethodAggregate]) -> str:
    figures = []
    for method, result in aggregates.items():
        figure = importance_heatmap(
            result.mean,
            title=f"{TITLES[method]}: mean over {result.n} {_unit_name(method)}",
            colorbar_title=method,
            zmax=1.0 if method == "chg" else None,
        )
        figures.append(f"<div>{_figure(figure, f'heatmap-{method}')}</div>")
    notes = "".join(
        f"<li><b>{escape(method)}</b>: {escape(SCORE_MEANING[method])}</li>"
        for method in aggregates
    )
    return (
        '<section id="heatmaps"><h2>Layer × head scores</h2>'
        f'<ul class="note">{notes}</ul><div class="grid">{"".join(figures)}</div></section>'
    )


def _unit_name(method: str) -> str:
    return "prompts" if method in PER_PROMPT else "shards"


def _agreement_section(document: Mapping[str, Any]) -> str:
    matrix = document["rank_agreement"]["matrix"]
    names = list(matrix)
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><th>{escape(a)}</th>"
        + "".join(f'<td class="num">{_number(matrix[a][b], 3)}</td>' for b in names)
        + "</tr>"
        for a in names
    )
    return (
        '<section id="agreement"><h2>Method agreement</h2>'
        '<p class="note">Spearman rank correlation between the methods\' mean head scores.</p>'
        f'<table id="agreement-table"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></section>"
    )


def _taxonomy_section(summaries: Summaries) -> str:
    labels = summaries.labels
    best = np.full((len(labels), len(labels[0])), np.nan)
    stacked = np.stack([np.nan_to_num(v, nan=-1.0) for v in summaries.taxonomy.values()])
    for layer, row in enumerate(labels):
        for head, label in enumerate(row):
            # a labelled head shows its label's score; an unlabelled one its best score
            source = summaries.taxonomy.get(label)
            best[layer, head] = (
                stacked[:, layer, head].max() if source is None else source[layer, head]
            )
    figure = label_grid(labels, scores=best, title="Primary taxonomy label per head")
    names = list(summaries.taxonomy)
    header = "".join(f"<th>{escape(n.replace('_', ' '))}</th>" for n in names)
    rows = []
    for layer, row in enumerate(labels):
        for head, label in enumerate(row):
            cells = "".join(
                f'<td class="num">{_number(summaries.taxonomy[n][layer, head], 3)}</td>'
                for n in names
            )
            rows.append(
                f'<tr><td class="mono">L{layer}.H{head}</td>'
                f"<td>{escape(label.replace('_', ' '))}</td>{cells}</tr>"
            )
    return (
        '<section id="taxonomy"><h2>Head taxonomy</h2>'
        '<p class="note">Attention mass on each category\'s ideal pattern, mean over prompts '
        "(transformer-lens head detector style); the label is the best specific category above "
        "its threshold.</p>"
        f"{_figure(figure, 'taxonomy')}"
        f'<table id="taxonomy-table"><thead><tr><th>head</th><th>label</th>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _pruning_section(document: Mapping[str, Any], summaries: Summaries) -> str:
    metric = document["metric"]["name"]
    figure = pruning_figure(
        summaries.pruning_fractions,
        summaries.pruning,
        metric_name=metric,
        baseline=summaries.clean_metric,
        title=f"Greedy pruning curve ({summaries.pruning_prompts} prompts)",
    )
    return (
        '<section id="pruning"><h2>Pruning curve</h2>'
        '<p class="note">The metric with the least important fraction of heads zero-ablated, '
        "by each method's ranking (Michel et al. 2019).</p>"
        f"{_figure(figure, 'pruning')}</section>"
    )


def _sink_section(summaries: Summaries) -> str:
    alpha = layer_head_heatmap(
        summaries.sink_alpha,
        title="Sink score α₀ of the first token, mean over prompts",
        colorbar_title="α₀",
        zmin=0.0,
        zmax=1.0,
    )
    example = sink_figure(
        summaries.sink_example,
        summaries.sink_tokens,
        threshold=SINK_THRESHOLD,
        title="Sink scores α_k on the first prompt",
    )
    heads = ", ".join(f"L{layer}.H{head}" for layer, head in summaries.sink_heads) or "none"
    bos = "a BOS token was prepended" if summaries.bos_prepended else "no BOS token was prepended"
    return (
        '<section id="sinks"><h2>Attention sinks</h2>'
        f'<p class="note">Sink heads (α₀ &gt; {SINK_THRESHOLD:g}): '
        f'<span id="sink-heads">{escape(heads)}</span>; {escape(bos)}.</p>'
        f'<div class="grid"><div>{_figure(alpha, "sink-alpha")}</div>'
        f"<div>{_figure(example, 'sink-example')}</div></div></section>"
    )


def _position_section(summaries: Summaries) -> str:
    figure = influence_figure(
        summaries.influence,
        summaries.influence_baseline,
        baseline_name="causal mask only",
        title="Cumulative influence by distance, mean over prompts",
    )
    peaks = ", ".join(
        f"after layer {layer}: {distance}" for layer, distance in enumerate(summaries.peak_distance)
    )
    return (
        '<section id="position"><h2>Position bias</h2>'
        '<p class="note">Influence of keys at each query − key distance through the stacked, '
        "head-averaged attention maps (no residual; Wu et al. 2025), against the same "
        f"computation on the mask alone. Most influential distance {escape(peaks)}.</p>"
        f"{_figure(figure, 'position')}</section>"
    )


def _prompts_section(prompt_set: PromptSet) -> str:
    rows = []
    for item in prompt_set.items[:LISTED_PROMPTS]:
        cells = [item.prompt, item.target or "", item.corrupted or ""]
        rows.append(
            f'<tr><td class="num">{item.line}</td>'
            + "".join(f'<td class="mono">{escape(c)}</td>' for c in cells)
            + "</tr>"
        )
    skipped = "".join(f"<li>{escape(message)}</li>" for message in prompt_set.skipped)
    more = len(prompt_set.items) - LISTED_PROMPTS
    return (
        '<section id="prompts"><h2>Prompts</h2>'
        + (f'<p class="note">Skipped lines:</p><ul class="note">{skipped}</ul>' if skipped else "")
        + '<table id="prompt-table"><thead><tr><th>line</th><th>prompt</th><th>target</th>'
        "<th>corrupted</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        + (f'<p class="note">… and {more} more.</p>' if more > 0 else "")
        + "</section>"
    )
