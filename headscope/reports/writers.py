"""The report's files: report.html, report.json, head_scores.parquet and head_scores.csv.

Writers only write: they take finished data (the model's `ModelSpec` and
weights hash, the scores, the reduced `Summaries`) and never run a model.

- `head_scores.parquet` / `.csv`: long format, one row per (method, unit, layer,
  head), units being prompts (`line-N`), shards (`shard-N`, CHG) and
  `aggregate:mean` (the mean over units, with its 95% t-interval).
- `report.json`: schema version, full config, model name and weights hash,
  headscope version, per-head aggregates with 95% confidence intervals, Spearman
  rank agreement between methods, `top_heads` per method (every head, most
  important first) and the taxonomy, sink, position and pruning summaries.
- `report.html`: one self-contained offline page rendered from the Jinja2
  template `templates/report.html.j2` with autoescaping, so every user-supplied
  string (prompts, tokens, model and file names) is HTML-escaped by the
  template engine; the shared stylesheet (`figures.theme`) and plotly.js are
  inlined once, each figure is plotly's own `<div>`.

Every file is written to a temporary name and renamed into place, so a killed
run leaves no partial file under a final name; the contents depend only on the
scores and the config (no timestamps), so a resumed run writes the same bytes.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from headscope.experiments.metrics import metric_info
from headscope.figures.heads import importance_heatmap, label_grid, layer_head_heatmap
from headscope.figures.heads import pruning_curve as pruning_figure
from headscope.figures.position import influence_by_distance as influence_figure
from headscope.figures.position import sink_scores as sink_figure
from headscope.figures.theme import THEME_CSS
from headscope.models.spec import ModelSpec
from headscope.reports.aggregate import MethodAggregate, aggregate, rank_agreement, top_heads
from headscope.reports.checkpoints import atomic_output, atomic_write_text, clean_output_temporaries
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptSet
from headscope.reports.scoring import PER_PROMPT, SCORE_MEANING
from headscope.reports.summaries import SINK_THRESHOLD, Summaries

SCHEMA = "headscope.report"
SCHEMA_VERSION = 1
#: Heads per method in the HTML table (report.json lists every head).
TABLE_ROWS = 10
#: Prompts listed in the HTML appendix.
LISTED_PROMPTS = 20
TEMPLATE = "report.html.j2"

TITLES = {
    "ablation": "Zero ablation",
    "gradient": "Gradient importance (Michel et al. 2019)",
    "chg": "Causal Head Gating facilitation (Nam et al. 2025)",
    "attribution": "Attribution patching",
}


def write_outputs(
    out: str | Path,
    config: ReportConfig,
    identity: Mapping[str, Any],
    prompt_set: PromptSet,
    scores: Mapping[str, np.ndarray],
    units: Mapping[str, Sequence[str]],
    summaries: Summaries,
    *,
    spec: ModelSpec,
    weights_hash: str,
) -> tuple[dict[str, Path], dict[str, list[dict]]]:
    """Write every report file into `out`; return their paths and `top_heads`
    (method → every head as `{"layer", "head", "score"}`, most important first).
    Pure: no model runs here."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_output_temporaries(out)
    aggregates = {method: aggregate(scores[method]) for method in config.methods}
    means = {method: result.mean for method, result in aggregates.items()}
    top = {method: top_heads(means[method]) for method in config.methods}
    table = rank_agreement(means)
    agreement = {a: {b: table[a][b] for b in config.methods} for a in config.methods}

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
        spec,
        weights_hash,
        config,
        identity,
        prompt_set,
        aggregates,
        agreement,
        top,
        summaries,
        files,
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
    spec: ModelSpec,
    weights_hash: str,
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
            "weights_hash": weights_hash,
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


@functools.cache
def _environment() -> jinja2.Environment:
    """The template environment: autoescape on, undefined names are errors."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("headscope.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["number"] = _number
    environment.filters["label"] = lambda name: name.replace("_", " ")
    return environment


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def _figure(figure: Any, name: str) -> Markup:
    # plotly's own div and script: trusted markup (its labels are escaped by
    # figures.style.plotly_text, its JSON by plotly), so it is not escaped again.
    return Markup(
        figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"figure-{name}",
            config={"displaylogo": False, "responsive": True},
        )
    )


def render_html(
    document: Mapping[str, Any],
    prompt_set: PromptSet,
    aggregates: Mapping[str, MethodAggregate],
    summaries: Summaries,
) -> str:
    """The self-contained report page (plotly.js inlined once, in the head),
    rendered from `templates/report.html.j2`."""
    from plotly.offline import get_plotlyjs

    context = {
        "title": f"headscope report: {document['model']['name']}",
        "theme_css": Markup(THEME_CSS),
        "plotly_js": Markup(get_plotlyjs()),
        "run": _run_rows(document),
        "top": _top_rows(document, summaries),
        "meanings": [(method, SCORE_MEANING[method]) for method in aggregates],
        "heatmaps": [_heatmap(method, result) for method, result in aggregates.items()],
        "agreement": _agreement(document),
        "taxonomy": _taxonomy(summaries),
        "pruning_figure": _pruning(document, summaries),
        "sinks": _sinks(summaries),
        "peak_distance": summaries.peak_distance,
        "position_figure": _figure(
            influence_figure(
                summaries.influence,
                summaries.influence_baseline,
                baseline_name="causal mask only",
                title="Cumulative influence by distance, mean over prompts",
            ),
            "position",
        ),
        "prompts": {
            "listed": prompt_set.items[:LISTED_PROMPTS],
            "skipped": list(prompt_set.skipped),
            "more": len(prompt_set.items) - LISTED_PROMPTS,
        },
    }
    return _environment().get_template(TEMPLATE).render(context)


def _run_rows(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    config, model, prompts = document["config"], document["model"], document["prompts"]
    return [
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


def _top_rows(document: Mapping[str, Any], summaries: Summaries) -> list[dict[str, Any]]:
    """Per method, its TABLE_ROWS best heads with score, 95% interval (None
    when undefined) and taxonomy label."""
    methods = []
    for method, rows in document["top_heads"].items():
        result = document["aggregates"][method]["heads"]
        intervals = {(r["layer"], r["head"]): (r["ci_low"], r["ci_high"]) for r in result}
        shown = []
        for rank, row in enumerate(rows[:TABLE_ROWS], start=1):
            layer, head = row["layer"], row["head"]
            low, high = intervals[(layer, head)]
            defined = low is not None and math.isfinite(low)
            shown.append(
                {
                    "rank": rank,
                    "layer": layer,
                    "head": head,
                    "score": row["score"],
                    "interval": (low, high) if defined else None,
                    "label": summaries.labels[layer][head],
                }
            )
        methods.append({"name": method, "rows": shown})
    return methods


def _heatmap(method: str, result: MethodAggregate) -> Markup:
    figure = importance_heatmap(
        result.mean,
        title=f"{TITLES[method]}: mean over {result.n} {_unit_name(method)}",
        colorbar_title=method,
        zmax=1.0 if method == "chg" else None,
    )
    return _figure(figure, f"heatmap-{method}")


def _unit_name(method: str) -> str:
    return "prompts" if method in PER_PROMPT else "shards"


def _agreement(document: Mapping[str, Any]) -> dict[str, Any]:
    matrix = document["rank_agreement"]["matrix"]
    names = list(matrix)
    return {"names": names, "rows": [(a, [matrix[a][b] for b in names]) for a in names]}


def _taxonomy(summaries: Summaries) -> dict[str, Any]:
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
    rows = [
        {
            "layer": layer,
            "head": head,
            "label": label,
            "scores": [summaries.taxonomy[name][layer, head] for name in names],
        }
        for layer, row in enumerate(labels)
        for head, label in enumerate(row)
    ]
    return {"figure": _figure(figure, "taxonomy"), "names": names, "rows": rows}


def _pruning(document: Mapping[str, Any], summaries: Summaries) -> Markup:
    figure = pruning_figure(
        summaries.pruning_fractions,
        summaries.pruning,
        metric_name=document["metric"]["name"],
        baseline=summaries.clean_metric,
        title=f"Greedy pruning curve ({summaries.pruning_prompts} prompts)",
    )
    return _figure(figure, "pruning")


def _sinks(summaries: Summaries) -> dict[str, Any]:
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
    return {
        "threshold": f"{SINK_THRESHOLD:g}",
        "heads": [f"L{layer}.H{head}" for layer, head in summaries.sink_heads],
        "bos_prepended": summaries.bos_prepended,
        "alpha_figure": _figure(alpha, "sink-alpha"),
        "example_figure": _figure(example, "sink-example"),
    }
