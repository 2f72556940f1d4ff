"""The training-dynamics report: `headscope dynamics` writes `dynamics.html` (a
self-contained page, plotly.js inlined) and `dynamics.json` for a checkpoint
series, with an optional diff of two of its checkpoints (docs/methods.md
§2.13, §2.14). The default `headscope report` is unchanged."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from markupsafe import Markup

from headscope.analyses.diffing import AMBIGUOUS_MARGIN, ModelDiff
from headscope.analyses.dynamics import PhaseChange, TrainingDynamics
from headscope.figures.dynamics import (
    diff_heatmap,
    dynamics_figure,
    importance_figure,
    similarity_heatmap,
)
from headscope.figures.theme import THEME_CSS
from headscope.reports.writers import _environment, _figure

TEMPLATE = "dynamics.html.j2"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _grid(tensor: Any) -> Any:
    return [_grid(row) for row in tensor] if tensor.dim() else _finite(float(tensor))


def _key_heads(dynamics: TrainingDynamics, phase: PhaseChange | None) -> list[tuple[int, int]]:
    """The heads to follow: the phase-change head and the most important heads
    at the last checkpoint (up to four)."""
    chosen = [] if phase is None else [(phase.layer, phase.head)]
    if dynamics.importance is not None:
        last = dynamics.importance[-1]
        order = last.flatten().argsort(descending=True).tolist()
        for index in order:
            head = divmod(index, last.shape[1])
            if head not in chosen:
                chosen.append(head)
            if len(chosen) == 4:
                break
    return chosen


def dynamics_document(
    dynamics: TrainingDynamics, phase: PhaseChange | None, diff: ModelDiff | None
) -> dict[str, Any]:
    """The JSON document: every number the page shows, with what it measures."""
    document: dict[str, Any] = {
        "series": dynamics.name,
        "steps": list(dynamics.steps),
        "prompts": dynamics.prompts,
        "taxonomy_scores": {
            "meaning": "attention mass on the category's ideal keys, mean over prompts",
            "chance": dynamics.chance,
            "support_queries": {k: list(v) for k, v in dynamics.support.items()},
            "values": {k: _grid(v) for k, v in dynamics.scores.items()},
        },
        "labels": [[list(row) for row in grid] for grid in dynamics.labels],
        "in_context_loss": {
            "meaning": "late-half minus early-half next-token loss (nats), mean over prompts",
            "mean": _grid(dynamics.in_context_loss),
            "low": _grid(dynamics.in_context_low),
            "high": _grid(dynamics.in_context_high),
            "interval": "95% percentile bootstrap over prompts",
        },
        "phase_change": None if phase is None else asdict(phase),
    }
    if dynamics.importance is not None:
        assert dynamics.importance_low is not None and dynamics.importance_high is not None
        document["importance"] = {
            "meaning": "rise of the repeated-token loss when the head's z is zeroed (nats)",
            "mean": _grid(dynamics.importance),
            "low": _grid(dynamics.importance_low),
            "high": _grid(dynamics.importance_high),
        }
    if diff is not None:
        document["diff"] = {
            "a": diff.name_a,
            "b": diff.name_b,
            "prompts": diff.prompts,
            "deltas": {
                key: {
                    "mean": _grid(value.mean),
                    "low": _grid(value.low),
                    "high": _grid(value.high),
                    "n": value.n,
                }
                for key, value in diff.deltas.items()
            },
            "labels_a": [list(row) for row in diff.labels_a],
            "labels_b": [list(row) for row in diff.labels_b],
            "matching": diff.matching.tolist(),
            "matched_similarity": _grid(diff.matched_similarity),
            "matching_margin": _grid(diff.matching_margin),
            "ambiguous": diff.ambiguous.tolist(),
        }
    return document


def _interval_text(diff: ModelDiff, key: str, layer: int, head: int) -> tuple[str, bool]:
    if key not in diff.deltas:
        return "–", True
    value = diff.deltas[key]
    mean, low, high = (float(t[layer, head]) for t in (value.mean, value.low, value.high))
    if not math.isfinite(low):
        return f"{mean:+.3f}", False
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]", bool(value.significant[layer, head])


def render_dynamics_html(
    dynamics: TrainingDynamics, phase: PhaseChange | None, diff: ModelDiff | None
) -> str:
    from plotly.offline import get_plotlyjs

    heads = _key_heads(dynamics, phase)
    n_layers, n_heads = dynamics.scores["induction"].shape[1:]
    context: dict[str, Any] = {
        "title": f"headscope training dynamics: {dynamics.name}",
        "theme_css": Markup(THEME_CSS),
        "plotly_js": Markup(get_plotlyjs()),
        "run": [
            ("series", dynamics.name),
            ("checkpoints (steps)", ", ".join(str(s) for s in dynamics.steps)),
            ("prompts", str(dynamics.prompts)),
        ],
        "prompts": dynamics.prompts,
        "phase": phase,
        "dynamics_figure": _figure(
            dynamics_figure(dynamics, phase=phase, chance=dynamics.chance.get("induction")),
            "dynamics",
        ),
        "importance_figure": (
            _figure(importance_figure(dynamics, heads, phase=phase), "importance")
            if dynamics.importance is not None and heads
            else None
        ),
        "heads": [f"{layer}.{head}" for layer in range(n_layers) for head in range(n_heads)],
        "labels": [
            (step, [label for row in grid for label in row])
            for step, grid in zip(dynamics.steps, dynamics.labels, strict=True)
        ],
        "diff": None,
    }
    if diff is not None:
        figures = [_figure(diff_heatmap(diff, "induction"), "diff-induction")]
        if "importance" in diff.deltas:
            figures.append(_figure(diff_heatmap(diff, "importance"), "diff-importance"))
        figures += [
            _figure(similarity_heatmap(diff, layer), f"similarity-{layer}")
            for layer in range(n_layers)
        ]
        rows = []
        for layer in range(n_layers):
            for head in range(n_heads):
                induction, induction_sig = _interval_text(diff, "induction", layer, head)
                importance, importance_sig = _interval_text(diff, "importance", layer, head)
                rows.append(
                    {
                        "head": f"{layer}.{head}",
                        "label_a": diff.labels_a[layer][head],
                        "label_b": diff.labels_b[layer][head],
                        "changed": diff.labels_a[layer][head] != diff.labels_b[layer][head],
                        "induction": induction,
                        "induction_significant": induction_sig,
                        "importance": importance,
                        "importance_significant": importance_sig,
                        "matched": f"{layer}.{int(diff.matching[layer, head])}",
                        "ambiguous": bool(diff.ambiguous[layer, head]),
                        "similarity": float(diff.matched_similarity[layer, head]),
                    }
                )
        context["diff"] = {
            "name_a": diff.name_a,
            "name_b": diff.name_b,
            "prompts": diff.prompts,
            "ambiguous_margin": AMBIGUOUS_MARGIN,
            "figures": figures,
            "rows": rows,
        }
    return _environment().get_template(TEMPLATE).render(context)


def write_dynamics_report(
    out: Path,
    dynamics: TrainingDynamics,
    phase: PhaseChange | None = None,
    diff: ModelDiff | None = None,
) -> tuple[Path, Path]:
    """Write `out/dynamics.html` and `out/dynamics.json`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out / "dynamics.html", out / "dynamics.json"
    html_path.write_text(render_dynamics_html(dynamics, phase, diff), encoding="utf-8")
    document = dynamics_document(dynamics, phase, diff)
    json_path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return html_path, json_path


def dynamics_report(
    source: str | list[str],
    out: Path,
    *,
    diff: tuple[int, int] | None = None,
    prompts: list[str] | None = None,
    importance: bool = True,
    head: tuple[int, int] | None = None,
    device: str = "cpu",
    progress: Any = None,
) -> tuple[Path, Path, TrainingDynamics, PhaseChange | None, ModelDiff | None]:
    """Load the series (`models.checkpoints.load_checkpoints`), measure every
    checkpoint (`experiments.dynamics.training_dynamics`), find the phase change
    of `head` (default: the head whose induction score grew most over the
    series), diff the checkpoints at the steps `diff` (default: first and
    last), and write the page and the JSON."""
    from headscope.analyses.dynamics import phase_change
    from headscope.experiments.diffing import diff_profiles
    from headscope.experiments.dynamics import profile_model, repeat_prompts, training_dynamics
    from headscope.models.checkpoints import load_checkpoints

    series = load_checkpoints(source, device=device)
    texts = prompts or list(repeat_prompts())
    dynamics = training_dynamics(series, texts, importance=importance, progress=progress)
    phase = None
    if len(dynamics.steps) >= 2:
        if head is None:
            induction = dynamics.scores["induction"]
            gain = (induction[-1] - induction[0]).nan_to_num(nan=-1.0)
            head = divmod(int(gain.flatten().argmax()), induction.shape[2])
        phase = phase_change(dynamics, *head)
    model_diff = None
    if len(dynamics.steps) >= 2:
        first, last = diff if diff is not None else (dynamics.steps[0], dynamics.steps[-1])
        profile_a = profile_model(series.load(first), texts, importance=importance)
        profile_b = profile_model(series.load(last), texts, importance=importance)
        model_diff = diff_profiles(profile_a, profile_b)
    html_path, json_path = write_dynamics_report(out, dynamics, phase, model_diff)
    return html_path, json_path, dynamics, phase, model_diff
