"""The report's files: report.html, report.json, head_scores.parquet and head_scores.csv.

Writers only write: they take finished data (the model's `ModelSpec` and
weights hash, the scores, the reduced `Summaries`) and never run a model.

- `head_scores.parquet` / `.csv`: long format, one row per (method, unit, layer,
  head), units being prompts (`line-N`), CHG seeds (`shard-N/seed-S`, one fit
  per shard and seed) and `aggregate:mean` (the mean over units, with its 95%
  percentile-bootstrap interval and whether it excludes zero).
- `report.json`: schema version, full config, model name and weights hash,
  headscope version; what the scores measured (the metric, which way is
  better, the target rule asked for and what it resolved to per prompt, the
  clean-metric baseline with its interval); each method's warnings with the
  shards and lines they apply to; per-head aggregates with 95% bootstrap
  intervals; Spearman rank agreement between methods; `top_heads` per method
  (every head by magnitude, most important first, with its sign and interval)
  and the taxonomy, sink, position and pruning summaries.
- `report.html`: one self-contained offline page rendered from the Jinja2
  template `templates/report.html.j2` with autoescaping, so every user-supplied
  string (prompts, tokens, model and file names) is HTML-escaped by the
  template engine; the shared stylesheet (`figures.theme`) and plotly.js are
  inlined once, each figure is plotly's own `<div>`.

Every file is written to a temporary name first, and the four are renamed into
place only once all are complete (`files.Staging`), so a killed or failing run
(a full disk...) leaves the previous files or none, never a partial file or a
mix; a write failure is an `OutputError` naming the file. The contents depend
only on the scores and the config (no timestamps), so a resumed run writes the
same bytes.
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
import torch
from markupsafe import Markup

from headscope.analyses import position
from headscope.analyses.uncertainty import bootstrap_interval
from headscope.figures.heads import importance_heatmap, label_grid, layer_head_heatmap
from headscope.figures.heads import pruning_curve as pruning_figure
from headscope.figures.position import influence_by_distance as influence_figure
from headscope.figures.position import sink_scores as sink_figure
from headscope.figures.theme import THEME_CSS
from headscope.models.spec import ModelSpec
from headscope.reports.aggregate import (
    INTERVAL,
    LEVEL,
    MethodAggregate,
    aggregate,
    rank_agreement,
    top_heads,
)
from headscope.reports.config import ReportConfig
from headscope.reports.files import Staging, clean_stale, make_dir
from headscope.reports.prompts import PromptSet
from headscope.reports.scoring import PER_PROMPT, SCORE_MEANING, Measured
from headscope.reports.summaries import SINK_THRESHOLD, Summaries

SCHEMA = "headscope.report"
#: 2: top heads by magnitude with their sign; bootstrap intervals; what the
#: scores measured (metric, targets, baseline); per-method warnings; CHG units are seeds.
SCHEMA_VERSION = 2
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
#: Heatmap titles (short: a heatmap is half the page wide).
SHORT_TITLES = {
    "ablation": "Zero ablation",
    "gradient": "Gradient importance",
    "chg": "CHG facilitation G⁻",
    "attribution": "Attribution patching",
}
#: What a negative mean score means, per method (gradient and CHG scores are never negative).
NEGATIVE = {
    "ablation": "ablating the head helps the metric",
    "attribution": "patching the head in moves the metric away from the clean run",
}
#: Why CHG gets no test against zero: its score is a gate, never 0.
NOT_TESTED = {
    "chg": "not tested against zero: a gate G- lies in [sigmoid(-4), sigmoid(4)] = "
    "[0.018, 0.982] and is never 0; the interval shows how stable the gate is across seeds",
}


def significance(method: str, result: MethodAggregate) -> np.ndarray:
    """Per `[layer, head]`: True where the 95% interval excludes zero, False
    where it includes it (not significant), None where it is undefined (one
    unit) or the method's score cannot be zero (CHG, see NOT_TESTED)."""
    if method in NOT_TESTED:
        return np.full(result.mean.shape, None, dtype=object)
    return np.where(result.defined, result.significant, None)


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
    measured: Measured,
    clusters: Mapping[str, Any] | None = None,
    retrieval: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Path], dict[str, list[dict]]]:
    """Write every report file into `out`; return their paths and `top_heads`
    (method → every head as `{"layer", "head", "score", "sign", "ci_low",
    "ci_high", "significant"}`, by magnitude, most important first). `clusters`:
    the optional head-clusters section (`reports.clusters`), in report.json
    under "clusters" and drawn in the page; `retrieval` likewise
    (`reports.retrieval`, under "retrieval"). Pure: no model runs here."""
    out = Path(out)
    make_dir(out, "create the output directory")
    aggregates = {method: aggregate(scores[method]) for method in config.methods}
    means = {method: result.mean for method, result in aggregates.items()}
    top = {method: _ranked(method, aggregates[method]) for method in config.methods}
    table = rank_agreement(means)
    agreement = {a: {b: table[a][b] for b in config.methods} for a in config.methods}

    files = {
        "parquet": out / "head_scores.parquet",
        "csv": out / "head_scores.csv",
        "json": out / "report.json",
        "html": out / "report.html",
    }
    # Only temporaries named after the report's files, and of runs that ended.
    clean_stale(out, tuple(f".{path.name}.*.tmp" for path in files.values()))
    frame = score_table(scores, units, aggregates, config)
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
        measured,
    )
    if clusters is not None:
        document["clusters"] = clusters
    if retrieval is not None:
        document["retrieval"] = retrieval
    document = _json_safe(document)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    html = render_html(document, prompt_set, aggregates, summaries)
    # All four files go to temporaries first and are renamed into place only
    # once every one is complete: a failure (a full disk...) leaves the
    # previous files, or none, never a mix.
    with Staging() as staging:
        with staging.writing(files["parquet"]) as tmp:
            frame.to_parquet(tmp, index=False)
        with staging.writing(files["csv"]) as tmp:
            frame.to_csv(tmp, index=False)
        with staging.writing(files["json"]) as tmp:
            tmp.write_bytes(text.encode("utf-8"))
        with staging.writing(files["html"]) as tmp:
            tmp.write_bytes(html.encode("utf-8"))
    return files, document["top_heads"]


def _ranked(method: str, result: MethodAggregate) -> list[dict]:
    """`top_heads` by magnitude, each row with its interval and `significance`."""
    tested = significance(method, result)
    return [
        {
            **row,
            "ci_low": result.low[row["layer"], row["head"]],
            "ci_high": result.high[row["layer"], row["head"]],
            "significant": tested[row["layer"], row["head"]],
        }
        for row in top_heads(result.mean)
    ]


# -- the score table ----------------------------------------------------------------------------


def _unit_fields(unit: str) -> tuple[int | None, int | None, int | None]:
    """(line, shard, seed) of a unit label: `line-N` or `shard-N/seed-S`."""
    if unit.startswith("line-"):
        return int(unit[len("line-") :]), None, None
    shard, seed = unit.split("/", 1)
    return None, int(shard.split("-", 1)[1]), int(seed.split("-", 1)[1])


def score_table(
    scores: Mapping[str, np.ndarray],
    units: Mapping[str, Sequence[str]],
    aggregates: Mapping[str, MethodAggregate],
    config: ReportConfig,
) -> pd.DataFrame:
    """Long format: method, unit, unit_kind (prompt | seed | aggregate), line,
    shard, seed, layer, head, score, ci_low, ci_high, significant (aggregate
    rows: whether the 95% bootstrap interval excludes zero), n_units."""
    frames = []
    for method in config.methods:
        values = scores[method]
        _, n_layers, n_heads = values.shape
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        layer, head = layer.ravel(), head.ravel()
        per_prompt = method in PER_PROMPT
        for index, unit in enumerate(units[method]):
            line, shard, seed = _unit_fields(unit)
            frames.append(
                pd.DataFrame(
                    {
                        "method": method,
                        "unit": unit,
                        "unit_kind": "prompt" if per_prompt else "seed",
                        "line": line,
                        "shard": index // config.shard_size if per_prompt else shard,
                        "seed": seed,
                        "layer": layer,
                        "head": head,
                        "score": values[index].ravel(),
                        "ci_low": np.nan,
                        "ci_high": np.nan,
                        "significant": None,
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
                    "seed": None,
                    "layer": layer,
                    "head": head,
                    "score": result.mean.ravel(),
                    "ci_low": result.low.ravel(),
                    "ci_high": result.high.ravel(),
                    "significant": pd.array(significance(method, result).ravel(), dtype="boolean"),
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
            "seed": "Int64",
            "layer": "int32",
            "head": "int32",
            "score": "float64",
            "ci_low": "float64",
            "ci_high": "float64",
            "significant": "boolean",
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
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _over(method: str, n: int, config: ReportConfig) -> str:
    """What a method's units are, in words."""
    if method in PER_PROMPT:
        return f"{n} prompts"
    shards = n // max(1, config.seeds)
    return f"{n} seeds ({shards} shard{'s' if shards != 1 else ''} × {config.seeds} seeds)"


def _warnings(measured: Measured, method: str) -> list[dict[str, Any]]:
    return [
        {"message": w.message, "shards": list(w.shards), "lines": list(w.lines)}
        for w in measured.warnings.get(method, ())
    ]


def _baseline(measured: Measured) -> dict[str, Any]:
    interval = bootstrap_interval(torch.tensor(measured.clean, dtype=torch.float64), level=LEVEL)
    return {
        "statistic": "the clean metric (every head on), mean over prompts",
        "mean": float(interval.mean),
        "ci_low": float(interval.low),
        "ci_high": float(interval.high),
        "n": interval.n,
        "confidence": LEVEL,
        "interval": INTERVAL,
        "unit": measured.metric.unit,
    }


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
    measured: Measured,
) -> dict[str, Any]:
    """The contents of report.json (NaN becomes null when written)."""
    heads = {}
    for method, result in aggregates.items():
        tested = significance(method, result)
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
                        "significant": tested[layer, head],
                    }
                )
        heads[method] = {
            "meaning": SCORE_MEANING[method],
            "unit": "prompt" if method in PER_PROMPT else "seed",
            "over": _over(method, result.n, config),
            "n_units": result.n,
            "confidence": result.level,
            "interval": f"{INTERVAL} of the mean over units (null with one unit)",
            "significance": NOT_TESTED.get(
                method, "significant: the interval excludes zero (null with one unit)"
            ),
            "ranking": "by |mean| (magnitude), the sign kept",
            "negative_means": NEGATIVE.get(method),
            "warnings": _warnings(measured, method),
            "says_nothing": measured.void(method),
            "heads": rows,
        }
    info = measured.metric
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
            "scored": [
                {"line": line, "target_rule": rule, "target_tokens": tokens, "clean_metric": clean}
                for line, rule, tokens, clean in zip(
                    measured.lines,
                    measured.prompt_targets,
                    measured.target_tokens,
                    measured.clean,
                    strict=True,
                )
            ],
        },
        "metric": {
            "name": info.name,
            "direction": info.direction,
            "better": info.better,
            "unit": info.unit,
            "description": info.description,
            "target": config.target,
            "target_resolved": measured.resolved,
            "scored_tokens": measured.scored_tokens,
            "target_described": measured.target_described,
            "ablation_mode": "zero",
            "baseline": _baseline(measured),
        },
        "warnings": {method: _warnings(measured, method) for method in measured.warnings},
        "aggregates": heads,
        "rank_agreement": {
            "statistic": "spearman",
            "over": "|mean score| of every head (the rankings)",
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
            "rule": summaries.sink_rule,
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
            "order": "least important first by |mean score|",
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
    environment.filters["signed"] = _signed
    environment.filters["label"] = lambda name: name.replace("_", " ")
    return environment


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return _minus(f"{value:.{digits}g}")


def _signed(value: float | None, digits: int = 4) -> str:
    """The value with its sign always written (+ or −)."""
    if value is None or not math.isfinite(value):
        return "–"
    return _minus(f"{value:+.{digits}g}")


def _minus(text: str) -> str:
    """A typographic minus for a leading "-"."""
    return "−" + text[1:] if text.startswith("-") else text


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

    warnings = {method: _warning_view(document, method) for method in aggregates}
    context = {
        "title": f"headscope report: {document['model']['name']}",
        "theme_css": Markup(THEME_CSS),
        "plotly_js": Markup(get_plotlyjs()),
        "run": _run_rows(document),
        "warnings": [view for view in warnings.values() if view is not None],
        "top": _top_rows(document, summaries, warnings),
        "meanings": [
            (method, SCORE_MEANING[method], NEGATIVE.get(method)) for method in aggregates
        ],
        "heatmaps": [
            _heatmap(method, result, document, warnings[method])
            for method, result in aggregates.items()
        ],
        "agreement": _agreement(document),
        "taxonomy": _taxonomy(summaries),
        "pruning": _pruning(document, summaries, warnings),
        "sinks": _sinks(summaries),
        "peak_distance": summaries.peak_distance,
        "clusters": _clusters(document),
        "retrieval": _retrieval(document),
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


def _clusters(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """The head-clusters section's view (`reports.clusters`), when the report has one."""
    if document.get("clusters") is None:
        return None
    from headscope.reports.clusters import clusters_view

    return clusters_view(document["clusters"], _figure)


def _retrieval(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """The retrieval section's view (`reports.retrieval`), when the report has one."""
    if document.get("retrieval") is None:
        return None
    from headscope.reports.retrieval import retrieval_view

    return retrieval_view(document["retrieval"], _figure)


def _listing(numbers: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f" … ({len(numbers)} in all)" if len(numbers) > limit else "")


def _warning_view(document: Mapping[str, Any], method: str) -> dict[str, Any] | None:
    """A method's warnings as the page shows them, or None when it has none."""
    entries = document["warnings"].get(method)
    if not entries:
        return None
    n_shards = math.ceil(document["prompts"]["count"] / document["config"]["shard_size"])
    n_prompts = len(document["prompts"]["scored"])
    views = []
    for entry in entries:
        shards, lines = entry["shards"], entry["lines"]
        views.append(
            {
                "message": entry["message"],
                "where": (
                    f"{len(shards)} of {n_shards} shard{'s' if n_shards != 1 else ''} "
                    f"(shard {_listing(shards)}), {len(lines)} of {n_prompts} prompts "
                    f"(line {_listing(lines)})"
                ),
            }
        )
    void = bool(document["aggregates"][method]["says_nothing"])
    first = entries[0]["message"]
    headline = first.split(":", 1)[0] if ":" in first[:80] else first[:80].rstrip() + "…"
    return {
        "method": method,
        "title": TITLES[method],
        "void": void,
        "headline": headline,
        "entries": views,
        "verdict": (
            "Its scores say nothing on any prompt: no heatmap or ranking is drawn."
            if void
            else "Its scores on the prompts above say nothing; the aggregate includes them."
        ),
    }


def _run_rows(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    config, model, prompts = document["config"], document["model"], document["prompts"]
    metric = document["metric"]
    baseline = metric["baseline"]
    interval = (
        f", 95% CI [{_number(baseline['ci_low'])}, {_number(baseline['ci_high'])}]"
        if baseline["ci_low"] is not None
        else ""
    )
    return [
        ("model", model["name"]),
        ("weights sha256", model["weights_hash"]),
        ("architecture", model["spec"]["architecture"]),
        ("layers × heads", f"{model['spec']['n_layers']} × {model['spec']['n_heads']}"),
        ("prompt file", prompts["file"]),
        ("prompts", f"{prompts['count']} ({len(prompts['skipped'])} malformed lines skipped)"),
        (
            "metric",
            f"{metric['name']}: {metric['description']} ({metric['unit']}; {metric['better']})",
        ),
        ("target", metric["target_described"]),
        (
            "baseline",
            f"clean {metric['name']} {_number(baseline['mean'])} {metric['unit']}{interval} "
            f"(every head on, mean over {baseline['n']} prompts)",
        ),
        ("methods", ", ".join(config["methods"])),
        (
            "shards",
            f"{config['shard_size']} prompts each; CHG: {config['seeds']} seeds, "
            f"{config['chg_steps']} steps per phase",
        ),
        ("long prompts", config["on_long"]),
        ("headscope", document["headscope_version"]),
    ]


def _top_rows(
    document: Mapping[str, Any],
    summaries: Summaries,
    warnings: Mapping[str, dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """Per method, its TABLE_ROWS heads of largest |score| with the signed
    score, 95% interval (None when undefined), whether it is significant and
    the taxonomy label; none for a method whose scores say nothing."""
    methods = []
    for method, rows in document["top_heads"].items():
        warning = warnings.get(method)
        shown = []
        if warning is None or not warning["void"]:
            for rank, row in enumerate(rows[:TABLE_ROWS], start=1):
                layer, head = row["layer"], row["head"]
                low, high = row["ci_low"], row["ci_high"]
                shown.append(
                    {
                        "rank": rank,
                        "layer": layer,
                        "head": head,
                        "score": row["score"],
                        "sign": row["sign"],
                        "interval": (low, high) if low is not None else None,
                        "significant": row["significant"],
                        "label": summaries.labels[layer][head],
                    }
                )
        methods.append({"name": method, "rows": shown, "warning": warning})
    return methods


def _heatmap(
    method: str,
    result: MethodAggregate,
    document: Mapping[str, Any],
    warning: dict[str, Any] | None,
) -> dict[str, Any]:
    over = document["aggregates"][method]["over"]
    figure = None
    if warning is None or not warning["void"]:
        figure = _figure(
            importance_heatmap(
                result.mean,
                title=f"{SHORT_TITLES[method]}, mean over {result.n} {_unit_name(method)}",
                colorbar_title=method,
                # signed methods on a diverging scale, which marks "n.s." cells
                signed=True if method in NEGATIVE else None,
                zmax=1.0 if method == "chg" else None,
                interval=(result.low, result.high) if result.n > 1 else None,
                support=f"95% bootstrap over {over}",
            ),
            f"heatmap-{method}",
        )
    return {"method": method, "title": TITLES[method], "figure": figure, "warning": warning}


def _unit_name(method: str) -> str:
    return "prompts" if method in PER_PROMPT else "seeds"


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


def _pruning(
    document: Mapping[str, Any],
    summaries: Summaries,
    warnings: Mapping[str, dict[str, Any] | None],
) -> dict[str, Any]:
    """The pruning figure without the curves of methods whose scores say
    nothing (their ranking is no finding), and the names left out."""
    void = [m for m in summaries.pruning if (warnings.get(m) or {}).get("void")]
    curves = {m: values for m, values in summaries.pruning.items() if m not in void}
    figure = pruning_figure(
        summaries.pruning_fractions,
        curves,
        metric_name=document["metric"]["name"],
        baseline=summaries.clean_metric,
        title=f"Greedy pruning curve ({summaries.pruning_prompts} prompts)",
    )
    # Curves within 0.5% of the plot's range of each other are drawn over each other: say so.
    drawn = [v for values in curves.values() for v in values if math.isfinite(v)]
    tolerance = 0.005 * (max(drawn) - min(drawn)) if drawn else 0.0
    groups: list[list[str]] = []
    for method, values in curves.items():
        same = next(
            (
                g
                for g in groups
                if np.allclose(curves[g[0]], values, rtol=0.0, atol=tolerance, equal_nan=True)
            ),
            None,
        )
        if same is None:
            groups.append([method])
        else:
            same.append(method)
    coincide = [" = ".join(group) for group in groups if len(group) > 1]
    return {"figure": _figure(figure, "pruning"), "left_out": void, "coincide": coincide}


def _sinks(summaries: Summaries) -> dict[str, Any]:
    alpha = layer_head_heatmap(
        summaries.sink_alpha,
        title="Sink score α₀ of the first token, mean over prompts",
        colorbar_title="α₀",
        zmin=0.0,
        zmax=1.0,
    )
    options: dict[str, Any] = {"threshold": SINK_THRESHOLD}
    if summaries.causal is not None:
        # The first prompt read against uniform attention over its visible keys.
        n = summaries.sink_example.shape[-1]
        keys = torch.arange(n)
        decision = position.SinkDecision(
            alpha=torch.from_numpy(np.ascontiguousarray(summaries.sink_example)),
            baseline=position.sink_baseline(n, causal=summaries.causal),
            support=(n - keys) if summaries.causal else torch.full((n,), n),
            causal=summaries.causal,
        )
        options = {
            "sinks": decision.sinks,
            "baseline": decision.baseline,
            "support": decision.support,
            "min_queries": decision.min_queries,
            "rule": decision.rule(),
        }
    example = sink_figure(
        summaries.sink_example,
        summaries.sink_tokens,
        title="Sink scores α_k on the first prompt",
        **options,
    )
    return {
        "threshold": summaries.sink_rule,
        "heads": [f"L{layer}.H{head}" for layer, head in summaries.sink_heads],
        "bos_prepended": summaries.bos_prepended,
        "alpha_figure": _figure(alpha, "sink-alpha"),
        "example_figure": _figure(example, "sink-example"),
    }
