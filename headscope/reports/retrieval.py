"""The report's optional retrieval section (`headscope report --retrieval`,
docs/methods.md §2.15): retrieval scores on a synthetic copy task, DuoAttention
gates on a passkey task, the data-free long-range peak and echo scores, the
ablation checks and the long-context labels (`experiments.retrieval.
retrieval_study`). The tasks are synthetic (the model's own vocabulary), so the
section does not read the prompt file.

`retrieval_section` runs the model and returns a JSON-ready dict (report.json
under "retrieval"); `retrieval_view` turns it into what the HTML template draws,
with no model. Off by default, so a default report costs what it did; on
toy-induction the section takes about 10 s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch

from headscope.analyses.retrieval import HeadScore, wilson_interval
from headscope.experiments.retrieval import RetrievalStudy, gate_scores, retrieval_study
from headscope.figures.retrieval import ablation_bars, score_heatmap


def _grid(values: torch.Tensor) -> list:
    return [[None if not math.isfinite(float(v)) else float(v) for v in row] for row in values]


def _score(score: HeadScore) -> dict[str, Any]:
    return {
        "measure": score.measure,
        "unit": score.unit,
        "score": _grid(score.score),
        "baseline": _grid(score.baseline),
        "support": score.support.tolist(),
        "low": _grid(score.low),
        "high": _grid(score.high),
    }


def _accuracy(item) -> dict[str, Any]:
    return {
        "heads": [list(h) for h in item.ablated],
        "correct": item.correct,
        "total": item.total,
        "low": item.low,
        "high": item.high,
    }


def section_document(study: RetrievalStudy) -> dict[str, Any]:
    """The JSON-ready section of a retrieval study."""
    task, gates = study.retrieval.task, study.gates
    return {
        "task": {
            "prompts": int(task.ids.shape[0]),
            "source_length": task.source_length,
            "cue_length": task.cue_length,
            "copy_accuracy": _accuracy(study.retrieval.accuracy),
        },
        "scores": {
            "retrieval": _score(study.retrieval.scores),
            "gates": _score(gate_scores(gates)),
            "long_range_peak": _score(study.long_range),
            "echo": _score(study.echo),
        },
        "gates": {
            "sink": gates.sink,
            "window": gates.window,
            "lam": gates.lam,
            "steps": gates.steps,
            "kl_all_streaming": gates.kl_all_streaming,
            "kl_fitted": gates.kl_fitted,
            "warning": gates.warning,
        },
        "checks": [
            {
                "by": c.by,
                "intervention": c.intervention,
                "count": c.count,
                "threshold": c.threshold,
                "clean": _accuracy(c.clean),
                "top": _accuracy(c.top),
                "bottom": [_accuracy(b) for b in c.bottom],
                "separated": c.separated,
            }
            for c in study.checks
        ],
        "labels": [
            {
                "layer": layer,
                "head": head,
                "label": item.label,
                "score": item.score,
                "baseline": None if math.isnan(item.baseline) else item.baseline,
                "support": item.support,
                "unit": item.unit,
                "threshold": item.threshold,
            }
            for (layer, head), found in sorted(study.labels.items())
            for item in found
        ],
    }


def retrieval_section(model) -> dict[str, Any]:
    """Run the retrieval study on `model` and return the section's dict; a model
    that is not a causal LM with a trained head gets a section that says so."""
    spec = model.spec
    if not (spec.causal and spec.has_lm_head):
        return {
            "skipped": f"{spec.name} is not a causal language model with a trained LM head: "
            "retrieval and streaming heads are defined during generation"
        }
    return section_document(retrieval_study(model))


def _head_score(item: Mapping[str, Any]) -> HeadScore:
    def tensor(grid) -> torch.Tensor:
        return torch.tensor(
            [[math.nan if v is None else v for v in row] for row in grid], dtype=torch.float64
        )

    return HeadScore(
        measure=item["measure"],
        score=tensor(item["score"]),
        baseline=tensor(item["baseline"]),
        support=torch.tensor(item["support"], dtype=torch.long),
        low=tensor(item["low"]),
        high=tensor(item["high"]),
        unit=item["unit"],
    )


def _accuracy_view(item: Mapping[str, Any]) -> SimpleNamespace:
    total = item["total"]
    return SimpleNamespace(
        accuracy=item["correct"] / total if total else math.nan,
        low=item["low"],
        high=item["high"],
        total=total,
        correct=item["correct"],
    )


def retrieval_view(section: Mapping[str, Any], figure) -> dict[str, Any]:
    """What the template draws: a note, the figures (through `figure(plotly_figure,
    name)`) and the label rows."""
    if "skipped" in section:
        return {"note": section["skipped"], "figures": [], "rows": []}
    names = {
        "retrieval": "retrieval score",
        "gates": "gate α",
        "long_range_peak": "long-range peak",
        "echo": "echo score",
    }
    figures = [
        figure(score_heatmap(_head_score(section["scores"][key]), colorbar_title=name), key)
        for key, name in names.items()
    ]
    checks = []
    for c in section["checks"]:
        bottom = [_accuracy_view(b) for b in c["bottom"]]
        correct = sum(b.correct for b in bottom)
        total = sum(b.total for b in bottom)
        low, high = wilson_interval(torch.tensor(float(correct)), torch.tensor(total))
        pooled = SimpleNamespace(
            accuracy=correct / total if total else math.nan,
            low=float(low),
            high=float(high),
            total=total,
        )
        checks.append(
            SimpleNamespace(
                by=c["by"],
                intervention=c["intervention"],
                count=c["count"],
                clean=_accuracy_view(c["clean"]),
                top=_accuracy_view(c["top"]),
                bottom_pooled=pooled,
            )
        )
    figures.append(figure(ablation_bars(checks), "retrieval-checks"))
    task, gates = section["task"], section["gates"]
    accuracy = _accuracy_view(task["copy_accuracy"])
    retrieval = section["scores"]["retrieval"]
    note = (
        f"Copy task: {task['prompts']} prompts of {task['source_length']} random tokens "
        f"copied after {task['cue_length']} cue tokens; greedy copy accuracy "
        f"{accuracy.accuracy:.3f} [{accuracy.low:.3f}, {accuracy.high:.3f}]. Retrieval score "
        f"(Wu et al. 2024): {retrieval['measure']}; {retrieval['support'][0][0]} copy steps, "
        f"chance {retrieval['baseline'][0][0]:.3f}. DuoAttention gates: sink {gates['sink']}, "
        f"window {gates['window']}, {gates['steps']} steps; KL from the full model with every "
        f"head streaming {gates['kl_all_streaming']:.3f} nats, with the fitted split "
        f"{gates['kl_fitted']:.4f}. Long-range peak and echo score on repeated random tokens, "
        "chance = uniform attention. Checks: copy accuracy with the top two heads of each score "
        "changed vs pairs of streaming heads (95% Wilson intervals)."
    )
    if gates["warning"]:
        note += f" {gates['warning']}."
    rows = [
        {
            "head": f"{row['layer']}.{row['head']}",
            "label": row["label"],
            "score": f"{row['score']:.3f}",
            "baseline": "–" if row["baseline"] is None else f"{row['baseline']:.3f}",
            "support": f"{row['support']} {row['unit']}",
        }
        for row in section["labels"]
    ]
    return {"note": note, "figures": figures, "rows": rows}
