"""headscope: a mechanistic-interpretability workbench for transformer attention.

Public API (importing this package loads nothing heavy; transformer-lens is
imported on first use of `load_model`):

    import headscope as hs
    model = hs.load_model("toy-induction")
    record = hs.capture(model, "red cat blue dog red cat blue dog")
    record.pattern.shape  # [layer, head, query, key]
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("headscope")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "AttentionRecord",
    "HeadStats",
    "ModelSpec",
    "Site",
    "__version__",
    "capture",
    "gate_heads",
    "load_checkpoints",
    "load_model",
]


def __getattr__(name: str):
    # Lazy so that `import headscope` (and the CLI's --help) stays fast.
    if name == "load_model":
        from headscope.models.loading import load_model

        return load_model
    if name == "load_checkpoints":
        from headscope.models.checkpoints import load_checkpoints

        return load_checkpoints
    if name == "ModelSpec":
        from headscope.models.spec import ModelSpec

        return ModelSpec
    if name == "capture":
        from headscope.probes.capture import capture

        return capture
    if name == "gate_heads":
        from headscope.probes.interventions import gate_heads

        return gate_heads
    if name == "Site":
        from headscope.probes.sites import Site

        return Site
    if name == "HeadStats":
        from headscope.records.stats import HeadStats

        return HeadStats
    if name == "AttentionRecord":
        from headscope.records.attention import AttentionRecord

        return AttentionRecord
    raise AttributeError(f"module 'headscope' has no attribute {name!r}")
