"""The report's optional head-clusters section (`headscope report --clusters`,
docs/methods.md §2.12): heads whose attention maps correlate over the first
`CLUSTER_PROMPTS` prompts, clustered per layer, and each cluster of two or more
heads checked by ablation (one head vs the whole cluster), with the report's
metric and target rule (`experiments.redundancy`).

`clusters_section` runs the model and returns a JSON-ready dict (it goes into
report.json under "clusters"); `clusters_view` turns that dict into what the
HTML template draws, with no model. Off by default, so a default report costs
what it did: the section is one captured forward and ⌈P·S/32⌉ ablated forwards
for P prompts and S ablation settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from headscope.analyses.clustering import LayerClusters
from headscope.experiments.redundancy import Redundancy, redundancy
from headscope.figures.clusters import (
    correlation_heatmap,
    cross_layer_heatmap,
    elbow_figure,
    redundancy_bars,
)
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptItem
from headscope.reports.scoring import scoring_prompt

#: Prompts the section clusters (the first ones of the file).
CLUSTER_PROMPTS = 32
#: What a correlation measures, said once.
MEASURE = (
    "Pearson correlation of two heads' attention maps, flattened over every prompt's visible "
    "(query, key) pairs"
)


def _interval(interval, index: int = 0) -> dict[str, float | None]:
    def number(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "mean": float(interval.mean[index]),
        "low": number(float(interval.low[index])),
        "high": number(float(interval.high[index])),
    }


def section_document(result: Redundancy, lines: Sequence[int]) -> dict[str, Any]:
    """The JSON-ready section of a `redundancy` result over the prompts at `lines`."""
    clusters = result.clusters
    checks = []
    for check in result.ablations:
        single = check.single_interval()
        checks.append(
            {
                "layer": check.layer,
                "heads": list(check.heads),
                "single_harm": [_interval(single, m) for m in range(len(check.heads))],
                "whole_harm": _interval(check.whole_interval()),
                "excess": _interval(check.excess_interval()),
                "interaction": _interval(check.interaction_interval()),
                "single_metric": check.single.mean(1).tolist(),
                "whole_metric": float(check.whole.mean()),
            }
        )
    return {
        "measure": MEASURE,
        "method": clusters.layers[0].method,
        "support": {
            "prompts": clusters.prompts,
            "queries": clusters.queries,
            "pairs_per_head": clusters.entries,
            "lines": list(lines),
        },
        "baseline": {
            "random_map_correlation": clusters.baseline,
            "meaning": "mean correlation of random maps (Dirichlet(1) rows) on the same pairs",
        },
        "layers": [
            {
                "layer": layer.layer,
                "k": layer.k,
                "clear_elbow": layer.clear,
                "clusters": [list(c) for c in layer.clusters],
                "errors": layer.errors.tolist(),
                "mean_off_diagonal": layer.mean_off_diagonal,
                "correlation": layer.correlation.tolist(),
                "labels": layer.labels.tolist(),
            }
            for layer in clusters.layers
        ],
        "cross_layer": clusters.cross_layer.tolist(),
        "check": {
            "described": result.described,
            "metric": result.metric.name,
            "harm": "sign·(metric with the heads' z ablated − clean metric): positive = worse",
            "clean_metric": float(result.clean.mean()),
            "mode": result.mode,
            "clusters": checks,
        },
    }


def clusters_section(
    model, items: Sequence[PromptItem], config: ReportConfig, *, limit: int = CLUSTER_PROMPTS
) -> dict[str, Any]:
    """Run `experiments.redundancy` on the first `limit` prompts (clean text:
    prompt + target) with the report's metric and target rule, and return the
    section's JSON-ready dict."""
    chosen = list(items[:limit])
    result = redundancy(
        model,
        [scoring_prompt(item) for item in chosen],
        metric=config.metric,
        target=config.target,  # type: ignore[arg-type]
    )
    return section_document(result, [item.line for item in chosen])


def _layer(item: Mapping[str, Any]) -> LayerClusters:
    return LayerClusters(
        layer=int(item["layer"]),
        correlation=torch.tensor(item["correlation"], dtype=torch.float64),
        labels=torch.tensor(item["labels"], dtype=torch.long),
        k=int(item["k"]),
        errors=torch.tensor(item["errors"], dtype=torch.float64),
        clear=bool(item["clear_elbow"]),
        method="",
    )


def _text(value: Mapping[str, Any]) -> str:
    mean, low, high = value["mean"], value["low"], value["high"]

    def signed(value: float) -> str:
        return f"{value:+.3f}" if abs(value) >= 5e-4 else "+0.000"

    if low is None or high is None:
        return signed(mean)
    flag = "" if (low > 0 or high < 0) else " n.s."
    return f"{signed(mean)} [{signed(low)}, {signed(high)}]{flag}"


def clusters_view(section: Mapping[str, Any], figure) -> dict[str, Any]:
    """What the template draws from the section: a note, the figures (through
    `figure(plotly_figure, name)`) and the cluster table rows."""
    layers = [_layer(item) for item in section["layers"]]
    baseline = float(section["baseline"]["random_map_correlation"])
    support = section["support"]
    said = (
        f"{support['prompts']} prompts, {support['queries']} queries, "
        f"{support['pairs_per_head']} visible (query, key) pairs per head"
    )
    checks = {(c["layer"], tuple(c["heads"])): c for c in section["check"]["clusters"]}
    rows = []
    for layer in layers:
        for heads in layer.clusters:
            check = checks.get((layer.layer, heads))
            rows.append(
                {
                    "layer": layer.layer,
                    "heads": ", ".join(f"{layer.layer}.{h}" for h in heads),
                    "alone": "; ".join(
                        f"{layer.layer}.{h} {_text(v)}"
                        for h, v in zip(heads, check["single_harm"], strict=True)
                    )
                    if check
                    else "–",
                    "whole": _text(check["whole_harm"]) if check else "–",
                    "excess": _text(check["excess"]) if check else "–",
                }
            )
    checked = section["check"]["clusters"]
    figures = [
        figure(correlation_heatmap(layer, baseline=baseline, support=said), f"clusters-{i}")
        for i, layer in enumerate(layers)
    ]
    figures.append(figure(elbow_figure(layers), "clusters-elbow"))
    figures.append(
        figure(
            cross_layer_heatmap(section["cross_layer"], baseline=baseline, support=said),
            "clusters-cross",
        )
    )
    if checked:
        figures.append(
            figure(
                redundancy_bars(
                    [
                        "{" + ", ".join(f"{c['layer']}.{h}" for h in c["heads"]) + "}"
                        for c in checked
                    ],
                    [[f"{c['layer']}.{h}" for h in c["heads"]] for c in checked],
                    [
                        (
                            [v["mean"] for v in c["single_harm"]],
                            [math.nan if v["low"] is None else v["low"] for v in c["single_harm"]],
                            [
                                math.nan if v["high"] is None else v["high"]
                                for v in c["single_harm"]
                            ],
                        )
                        for c in checked
                    ],
                    [
                        (
                            c["whole_harm"]["mean"],
                            math.nan if c["whole_harm"]["low"] is None else c["whole_harm"]["low"],
                            math.nan
                            if c["whole_harm"]["high"] is None
                            else c["whole_harm"]["high"],
                        )
                        for c in checked
                    ],
                    harm=f"harm ({section['check']['metric']})",
                ),
                "clusters-bars",
            )
        )
    ks = ", ".join(
        f"layer {layer.layer}: {layer.k}{'' if layer.clear else ' (no clear elbow)'}"
        for layer in layers
    )
    note = (
        f"{section['measure']}; {said} (lines {support['lines'][0]}–{support['lines'][-1]}). "
        f"Baseline: random maps on the same pairs correlate r = {baseline:.3f}. "
        f"Clusters ({section['method']}, k at the elbow of the within-cluster error): {ks}. "
        f"Ablation check: {section['check']['described']}; harm = how much worse the metric "
        "gets, mean over prompts [95% bootstrap interval]."
    )
    return {"note": note, "figures": figures, "rows": rows}
