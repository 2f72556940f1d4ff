"""Images as model input: what a vision transformer's tokens are, and how a
picture becomes its `pixel_values`.

    batch = model.tokenize(image)     # a vision model's tokenize takes images
    batch.pixel_values                # [batch, channel, height, width], normalised
    batch.tokens[0]                   # ("[CLS]", "(0,0)", "(0,1)", ...)

An image is a PIL image, a path to an image file (PNG, JPEG...; reading files
needs Pillow: pip install 'headscope[vision]'), or an array (numpy or torch) of
`[height, width]` or `[height, width, channel]`: uint8 in 0..255, or floats in
[0, 1]. A batch is a list or tuple of images, or one array of `[batch, height,
width]` or `[batch, height, width, channel]` (a 3-d array whose last axis has
1, 3 or 4 entries is one image with channels, otherwise a batch of grayscale
images). Every image is converted to the model's channel count (RGB to
grayscale by ITU-R BT.601 luma, grayscale repeated to RGB, alpha dropped),
resized to the model's `image_size` (bilinear, antialiased, in float), then
normalised with the processor's mean and std, following the model's
`preprocessor_config.json` (Hugging Face image-processor fields). The resize
is PIL's bilinear filter (torch's antialiased bilinear equals it to 1e-6) run
in float on [0, 1] values, so it can differ from Hugging Face's PIL resize of
uint8 images by one rounding step; images already at the model's size are not
resampled.

Tokens: the prefix tokens ([CLS], and DeiT's [DIST]) then one token per patch,
row-major, named `(row,column)` in the patch grid; `ids` hold each token's
position (0..n_ctx-1), since patches have no vocabulary.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from headscope.errors import InputError, MissingExtraError, ModelFileError
from headscope.models.tokens import TokenBatch

PREFIX_NAMES = ("[CLS]", "[DIST]")
LUMA = (0.299, 0.587, 0.114)
#: Model types whose checkpoints are vision transformers headscope loads.
VISION_MODEL_TYPES = ("vit", "deit")


@dataclass(frozen=True)
class ImageBatch(TokenBatch):
    """A TokenBatch of images: `pixel_values` `[batch, channel, height, width]`
    (normalised, what the model reads), `ids` the token positions `[batch,
    token]`, `tokens` ([CLS], ..., "(row,column)" per patch), and `names` (the
    file names of images given as paths, else None per image)."""

    pixel_values: Float[Tensor, "batch channel height width"] | None = None
    names: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if self.pixel_values is None or self.pixel_values.shape[0] != self.ids.shape[0]:
            raise InputError("an ImageBatch needs pixel_values with one image per row")

    def select(self, rows: Int[Tensor, " row"]) -> ImageBatch:
        """The batch's rows `rows` (repeats allowed) as a new, batched ImageBatch."""
        index = [int(i) for i in rows.tolist()]
        return ImageBatch(
            self.ids[rows],
            self.attention_mask[rows],
            tuple(self.lengths[i] for i in index),
            tuple(self.tokens[i] for i in index),
            False,
            None,
            False,
            pixel_values=self.pixel_values[rows],
            names=tuple(self.names[i] for i in index) if self.names else (),
        )


@dataclass(frozen=True)
class ImageProcessing:
    """How an image becomes pixel values: resize to `size` × `size`, then
    `(x − mean) / std` per channel on values in [0, 1]."""

    size: int
    num_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    do_resize: bool = True
    do_normalize: bool = True

    @classmethod
    def from_directory(cls, path: Path | None, hf_config: Any) -> ImageProcessing:
        """From `preprocessor_config.json` in `path` when there is one, else the
        ViT defaults (mean 0.5, std 0.5, resize to the config's image_size)."""
        size = _square(getattr(hf_config, "image_size", None), "image_size")
        channels = int(getattr(hf_config, "num_channels", 3))
        data: dict = {}
        file = None if path is None else Path(path) / "preprocessor_config.json"
        if file is not None and file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise ModelFileError(f"{file} is not a valid JSON file: {error}") from None
        mean = _per_channel(data.get("image_mean", 0.5), channels, "image_mean", file)
        std = _per_channel(data.get("image_std", 0.5), channels, "image_std", file)
        if any(s <= 0 for s in std):
            raise ModelFileError(f"{file}: image_std must be positive, got {std}")
        if data.get("do_rescale", True) is False:
            raise ModelFileError(
                f"{file}: do_rescale is false (pixel values in 0..255 are normalised as they "
                "are); headscope reads images in [0, 1], so it cannot reproduce this processor"
            )
        return cls(
            size=size,
            num_channels=channels,
            mean=mean,
            std=std,
            do_resize=bool(data.get("do_resize", True)),
            do_normalize=bool(data.get("do_normalize", True)),
        )

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "num_channels": self.num_channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ModelFileError(
                f"only square images are supported, the config gives {name}={value}"
            )
        value = value[0]
    if not isinstance(value, int) or value <= 0:
        raise ModelFileError(f"the config gives no usable {name} ({value!r})")
    return value


def _per_channel(value: Any, channels: int, name: str, file: Path | None) -> tuple[float, ...]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels or not all(isinstance(v, (int, float)) for v in values):
        raise ModelFileError(f"{file}: {name} must give one number per channel ({channels})")
    return tuple(float(v) for v in values)


# -- images -> [0, 1] float tensors ---------------------------------------------------------


def _is_pil(image: Any) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "convert")


def _open(path: Path) -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise MissingExtraError(
            "reading image files needs Pillow: pip install 'headscope[vision]' (or pass "
            "the image as an array)"
        ) from error
    if not path.is_file():
        raise InputError(f"no image file at {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{path} is not an image Pillow can read ({error})") from None


def _from_pil(image: Any) -> Tensor:
    import numpy as np

    mode = image.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGBA" if "A" in mode or "transparency" in image.info else "RGB")
    elif mode in ("I", "I;16", "F", "1"):
        image = image.convert("L")
    array = np.asarray(image)
    return _from_array(torch.from_numpy(array.copy()), "the image")


def _from_array(array: Tensor, what: str) -> Float[Tensor, "height width channel"]:
    """`[H, W]` or `[H, W, C]` uint8 (0..255) or float ([0, 1]) -> float32 `[H, W, C]`."""
    if array.dim() == 2:
        array = array[..., None]
    if array.dim() != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise InputError(
            f"{what} must be [height, width] or [height, width, channel] with 1, 3 or 4 "
            f"channels, got shape {tuple(array.shape)}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"{what} is empty (shape {tuple(array.shape)})")
    if array.dtype == torch.uint8:
        values = array.float() / 255.0
    elif array.dtype == torch.bool or array.is_complex():
        raise InputError(f"{what} must hold uint8 or float pixel values, got {array.dtype}")
    elif array.is_floating_point():
        values = array.float()
        if not bool(torch.isfinite(values).all()):
            raise InputError(f"{what} holds NaN or infinite pixel values")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"{what} holds float pixel values in [{low:.3g}, {high:.3g}]; floats must lie "
                "in [0, 1] (pass uint8 arrays for 0..255)"
            )
    else:
        raise InputError(
            f"{what} holds {array.dtype} values; pass uint8 (0..255) or floats in [0, 1]"
        )
    if values.shape[-1] == 2:  # grayscale + alpha
        values = values[..., :1]
    return values


def _channels(image: Tensor, channels: int) -> Tensor:
    """`[H, W, C]` -> `[H, W, channels]`: alpha dropped, luma or repeat."""
    if image.shape[-1] == 4:
        image = image[..., :3]
    have = image.shape[-1]
    if have == channels:
        return image
    if channels == 1 and have == 3:
        return (image * torch.tensor(LUMA)).sum(-1, keepdim=True)
    if have == 1:
        return image.expand(*image.shape[:2], channels)
    raise InputError(f"cannot convert a {have}-channel image to the model's {channels} channels")


def as_float_image(image: Any, what: str = "the image") -> Float[Tensor, "height width channel"]:
    """One image (PIL, path, array) as float32 `[height, width, channel]` in [0, 1]."""
    name = None
    if isinstance(image, (str, os.PathLike)):
        name = Path(image)
        image = _open(name)
    if _is_pil(image):
        return _from_pil(image)
    if isinstance(image, Tensor):
        return _from_array(image.detach().cpu(), what)
    if type(image).__module__ == "numpy":
        return _from_array(torch.from_numpy(image.copy()), what)
    raise InputError(
        f"{what} must be a PIL image, a path to an image file, or an array [height, width(, "
        f"channel)], got {type(image).__name__}"
    )


def split_images(images: Any) -> tuple[list[Any], bool]:
    """(the images, whether the input was one image): see the module docstring."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("no images given")
        return list(images), False
    if isinstance(images, Tensor) or type(images).__module__ == "numpy":
        dims = images.ndim
        if dims == 4 or (dims == 3 and images.shape[-1] not in (1, 3, 4)):
            if images.shape[0] == 0:
                raise InputError("no images given")
            return [images[i] for i in range(images.shape[0])], False
    return [images], True


def resized_image(
    image: Any, processing: ImageProcessing, what: str = "the image"
) -> Float[Tensor, "channel height width"]:
    """One image as the model sees it before normalisation: `[channel, size,
    size]` in [0, 1], converted to the model's channels and resized (what an
    overlay figure should draw under a patch map)."""
    values = _channels(as_float_image(image, what), processing.num_channels)
    chw = values.permute(2, 0, 1)[None].contiguous()
    size = processing.size
    if tuple(chw.shape[-2:]) != (size, size):
        if not processing.do_resize:
            raise InputError(
                f"{what} is {chw.shape[-2]}×{chw.shape[-1]} pixels; the model takes "
                f"{size}×{size} and its processor does not resize"
            )
        chw = F.interpolate(
            chw, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        ).clamp(0.0, 1.0)
    return chw[0]


def image_view(
    image: Any, processing: ImageProcessing, what: str = "the image"
) -> Float[np.ndarray, "height width channel"]:
    """`resized_image` channels last as float32 numpy `[size, size, channel]` in
    [0, 1]: the picture to draw under a patch map (dashboard, report, notebook)."""
    return resized_image(image, processing, what).permute(1, 2, 0).numpy().astype(np.float32)


def pixel_values(
    image: Any, processing: ImageProcessing, what: str = "the image"
) -> Float[Tensor, "channel height width"]:
    """One image as the model's normalised `[channel, size, size]` pixel values:
    `resized_image`, then `(x − mean) / std` per channel."""
    chw = resized_image(image, processing, what)
    if processing.do_normalize:
        mean = torch.tensor(processing.mean)[:, None, None]
        std = torch.tensor(processing.std)[:, None, None]
        chw = (chw - mean) / std
    return chw


def patch_token_names(grid: tuple[int, int], n_prefix: int) -> tuple[str, ...]:
    """ "[CLS]" (and "[DIST]"), then "(row,column)" per patch, row-major."""
    rows, cols = grid
    prefix = PREFIX_NAMES[:n_prefix] + tuple(f"[PREFIX{i}]" for i in range(2, n_prefix))
    return prefix + tuple(f"({r},{c})" for r in range(rows) for c in range(cols))


def image_batch(images: Any, processing: ImageProcessing, spec: Any) -> ImageBatch:
    """An ImageBatch of one image or a batch (see the module docstring); InputError
    naming the image for anything it cannot read."""
    items, single = split_images(images)
    pixels = []
    names: list[str | None] = []
    for i, item in enumerate(items):
        what = "the image" if single else f"image {i}"
        names.append(Path(item).name if isinstance(item, (str, os.PathLike)) else None)
        pixels.append(pixel_values(item, processing, what))
    n = spec.n_ctx
    tokens = patch_token_names(spec.patch_grid, spec.n_prefix_tokens)
    ids = torch.arange(n).expand(len(items), n).clone()
    return ImageBatch(
        ids,
        torch.ones(len(items), n, dtype=torch.bool),
        (n,) * len(items),
        (tokens,) * len(items),
        single,
        None,
        False,
        pixel_values=torch.stack(pixels),
        names=tuple(names),
    )
