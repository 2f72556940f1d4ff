"""Metrics moved to `headscope.experiments.metrics` (they run the model); the
names below forward, with a DeprecationWarning, until headscope 0.3."""

from __future__ import annotations

from headscope._deprecated import moved

_NAMES = (
    "METRIC_NAMES",
    "Direction",
    "Metric",
    "MetricLike",
    "MetricName",
    "custom_metric",
    "embedding_cosine",
    "evaluate_metric",
    "first_copy_targets",
    "logit_difference",
    "next_token_loss",
    "paraphrase_cosine",
    "resolve_metric",
    "second_copy_targets",
)

__getattr__ = moved(__name__, {name: f"headscope.experiments.metrics:{name}" for name in _NAMES})
