"""Head importance moved to `headscope.experiments` (it runs the model).

`rank_heads` and `top_heads` are pure and live in `headscope.analyses.ranking`;
the names below forward, with a DeprecationWarning, until headscope 0.3.
"""

from __future__ import annotations

from headscope._deprecated import moved
from headscope.analyses.ranking import rank_heads, top_heads

__getattr__ = moved(
    __name__,
    {
        "DEFAULT_FRACTIONS": "headscope.experiments.ablation:DEFAULT_FRACTIONS",
        "AnalysisCancelledError": "headscope.experiments.progress:AnalysisCancelledError",
        "CHGResult": "headscope.experiments.gating:CHGResult",
        "ContrastiveResult": "headscope.experiments.gating:ContrastiveResult",
        "ablation_scores": "headscope.experiments.ablation:ablation_scores",
        "activation_patching": "headscope.experiments.patching:activation_patching",
        "attribution_patching": "headscope.experiments.patching:attribution_patching",
        "causal_head_gating": "headscope.experiments.gating:causal_head_gating",
        "clean_metric": "headscope.experiments.ablation:clean_metric",
        "contrastive_head_gating": "headscope.experiments.gating:contrastive_head_gating",
        "gradient_importance": "headscope.experiments.gradients:gradient_importance",
        "patch_heads": "headscope.experiments.patching:patch_heads",
        "pruning_curve": "headscope.experiments.ablation:pruning_curve",
    },
)

__all__ = ["rank_heads", "top_heads"]
