"""ModelSpec: the frozen, model-free description of a loaded transformer.

Records carry a ModelSpec so that everything after capture (analyses, figures,
dashboard, reports) knows the model's shape without loading it.
"""

from __future__ import annotations

import reprlib
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Literal, get_args

from headscope.errors import InputError

PositionalScheme = Literal["learned", "rotary", "alibi", "relative", "none"]
POSITIONAL_SCHEMES: tuple[str, ...] = get_args(PositionalScheme)


@dataclass(frozen=True)
class ModelSpec:
    """Shape and conventions of a model.

    `n_kv_heads < n_heads` means grouped-query attention: query head h reads
    key/value head `h // (n_heads // n_kv_heads)`. `has_lm_head` is False for
    encoders whose checkpoint has no trained language-model head (e.g. minilm):
    their logits mean nothing and must never be shown as predictions.
    `prepends_bos` says whether headscope prepends a BOS token to text prompts.

    Vision transformers (ViT, DeiT) set the image fields: square input images of
    `image_size` pixels with `num_channels` channels, cut into `patch_size`
    pixel patches (`patch_grid` rows × columns, row-major); the sequence is
    `n_prefix_tokens` tokens ([CLS], and DeiT's distillation token) followed by
    the patches. `d_vocab` is then the number of classes. Text models leave them
    None.
    """

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    causal: bool
    positional: PositionalScheme
    has_lm_head: bool
    prepends_bos: bool
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    image_size: int | None = None
    patch_size: int | None = None
    num_channels: int | None = None
    n_prefix_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("name", "architecture"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InputError(
                    f"ModelSpec.{name} must be a non-empty string, got {reprlib.repr(value)}"
                )
        for name in ("causal", "has_lm_head", "prepends_bos"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise InputError(
                    f"ModelSpec.{name} must be true or false, got {reprlib.repr(value)}"
                )
        if self.positional not in POSITIONAL_SCHEMES:
            raise InputError(
                f"ModelSpec.positional must be one of {', '.join(POSITIONAL_SCHEMES)}, "
                f"got {reprlib.repr(self.positional)}"
            )
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise InputError(
                    f"ModelSpec.{name} must be a non-negative int or null, "
                    f"got {reprlib.repr(value)}"
                )
        for name in ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_vocab", "n_ctx"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"ModelSpec.{name} must be a positive int, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise InputError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        self._check_image()

    def _check_image(self) -> None:
        names = ("image_size", "patch_size", "num_channels", "n_prefix_tokens")
        values = [getattr(self, name) for name in names]
        if all(value is None for value in values):
            return
        for name, value in zip(names, values, strict=True):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(
                    f"ModelSpec.{name} must be a positive int when any image field is set, "
                    f"got {reprlib.repr(value)}"
                )
        if self.image_size % self.patch_size:
            raise InputError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.n_ctx != self.n_prefix_tokens + self.n_patches:
            raise InputError(
                f"n_ctx={self.n_ctx} must be n_prefix_tokens + patches = "
                f"{self.n_prefix_tokens + self.n_patches}"
            )

    @property
    def is_vision(self) -> bool:
        """True for a vision transformer (images in, patches as tokens)."""
        return self.image_size is not None

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch grid; InputError for a text model."""
        if self.image_size is None or self.patch_size is None:
            raise InputError(f"{self.name} is not a vision model: it has no patch grid")
        side = self.image_size // self.patch_size
        return side, side

    @property
    def n_patches(self) -> int:
        rows, cols = self.patch_grid
        return rows * cols

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        if not isinstance(data, dict):
            raise InputError(f"a ModelSpec must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown ModelSpec fields: {unknown}")
        if missing:
            raise InputError(f"missing ModelSpec fields: {missing}")
        return cls(**data)
