"""Old import paths of functions that moved to headscope.experiments keep
working for one release, with a DeprecationWarning, and give the same object."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    ("headscope.analyses.heads", "ablation_scores", "headscope.experiments.ablation"),
    ("headscope.analyses.heads", "pruning_curve", "headscope.experiments.ablation"),
    ("headscope.analyses.heads", "gradient_importance", "headscope.experiments.gradients"),
    ("headscope.analyses.heads", "causal_head_gating", "headscope.experiments.gating"),
    ("headscope.analyses.heads", "CHGResult", "headscope.experiments.gating"),
    ("headscope.analyses.heads", "activation_patching", "headscope.experiments.patching"),
    ("headscope.analyses.heads", "attribution_patching", "headscope.experiments.patching"),
    ("headscope.analyses.heads", "AnalysisCancelledError", "headscope.experiments.progress"),
    ("headscope.analyses.metrics", "resolve_metric", "headscope.experiments.metrics"),
    ("headscope.analyses.metrics", "next_token_loss", "headscope.experiments.metrics"),
    ("headscope.analyses.relevance", "relevance", "headscope.experiments.relevance"),
    ("headscope.analyses.lost_in_middle", "position_curve", "headscope.experiments.position"),
    ("headscope.analyses.spectral", "head_weights", "headscope.experiments.spectra"),
    ("headscope.analyses.spectral", "copying_scores", "headscope.experiments.spectra"),
    ("headscope.analyses.spectral", "composition_scores", "headscope.experiments.spectra"),
    ("headscope.analyses.spectral", "spectra", "headscope.experiments.spectra"),
    ("headscope.analyses.spectral", "HeadWeights", "headscope.models.weights"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_a_moved_name_warns_and_forwards(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} moved to {new}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_from_imports_of_old_names_work_and_unknown_names_still_fail():
    with pytest.warns(DeprecationWarning):
        from headscope.analyses.heads import ablation_scores  # noqa: F401
    from headscope.analyses import heads

    with pytest.raises(AttributeError):
        heads.no_such_function  # noqa: B018
    # rank_heads is pure: it stays in analyses (now in analyses.ranking), no warning.
    from headscope.analyses.ranking import rank_heads

    assert heads.rank_heads is rank_heads


def test_importing_the_pure_layer_does_not_import_the_experiment_layer():
    import subprocess
    import sys

    code = (
        "import sys; import headscope.analyses.heads, headscope.analyses.metrics, "
        "headscope.analyses.spectral, headscope.analyses.flow, headscope.analyses.position; "
        "print(any(m.startswith(('headscope.experiments', 'headscope.probes')) "
        "for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("headscope.analyses.flow", "relevance", "headscope.experiments.relevance"),
        ("headscope.analyses.position", "position_curve", "headscope.experiments.position"),
    ],
)
def test_the_public_names_beside_rollout_and_sinks_forward_too(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning):
        assert getattr(module, name) is getattr(importlib.import_module(new), name)
