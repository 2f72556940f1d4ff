"""The metric and target pickers of the pages that score heads through
`experiments.score_heads` (Importance, Patching): the same choices, labels
and defaults (`importance.metric_choices`, `importance.TARGET_CHOICES`), so a
metric and a target rule read the same on every page."""

from __future__ import annotations

from dash import dcc

from headscope.dashboard.importance import TARGET, TARGET_CHOICES, metric_choices
from headscope.experiments.metrics import default_metric, metric_info
from headscope.experiments.targets import TARGET_RULES
from headscope.models.spec import ModelSpec


def metric_option(name: str) -> dict:
    """A dropdown option naming the metric and which way is better."""
    info = metric_info(name)
    return {"label": f"{name} ({info.better})", "value": name}


def metric_picker(component_id: str, spec: ModelSpec | None) -> dcc.Dropdown:
    """The metrics this model can be scored with; its default metric chosen."""
    return dcc.Dropdown(
        id=component_id,
        value=default_metric(spec.has_lm_head) if spec else None,
        clearable=False,
        options=[metric_option(m) for m in metric_choices(spec)],
        style={"width": "250px"},
    )


def target_picker(component_id: str) -> dcc.Dropdown:
    """The target rules (which tokens the loss scores), each with its meaning."""
    return dcc.Dropdown(
        id=component_id,
        value=TARGET,
        clearable=False,
        options=[
            {"label": f"{rule}: {TARGET_RULES[rule]}", "value": rule} for rule in TARGET_CHOICES
        ],
        style={"width": "250px"},
        optionHeight=52,
    )
