"""Images the browser sends: a dcc.Upload's base64 data URL decoded into an
image, within strict limits, and the compact form the Vision page keeps in a
dcc.Store (the image as the model sees it, never the upload itself).

Limits, checked before any pixel is decoded: at most `MAX_UPLOAD_BYTES` of
file, one of `FORMATS` (Pillow's own format detection, not the file name or
the browser's MIME type), at most `MAX_PIXELS` pixels and `MAX_SIDE` per side
(from the header; Pillow's decompression-bomb guard is turned into an error
too). Anything else is an `InputError` with one readable line. The file name a
browser sends is user text: only its last path component is kept, shown as
text, never as HTML. Memory: one decoded copy of the image (at most
`MAX_PIXELS` × 4 bytes) plus its float copy.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

from headscope.errors import InputError, MissingExtraError

#: Largest file accepted (bytes), also the dcc.Upload's `max_size`.
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
#: Largest image accepted (pixels): 4096 × 4096.
MAX_PIXELS = 4096 * 4096
#: Longest side accepted (pixels).
MAX_SIDE = 8192
#: Image formats Pillow may decode here (detected from the bytes).
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
#: Longest file name shown.
MAX_NAME_CHARS = 120
#: Longest side of an image kept in the page's store (the model's input size is smaller).
MAX_STORED_SIDE = 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def display_name(filename: object, fallback: str = "uploaded image") -> str:
    """The file name to show: its last path component (POSIX or Windows), control
    characters and lone surrogates removed, at most `MAX_NAME_CHARS` characters."""
    if not isinstance(filename, str):
        return fallback
    name = re.split(r"[\\/]", filename)[-1]
    name = _CONTROL.sub("", name).strip()
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 1] + "…"
    return name or fallback


def upload_bytes(contents: object) -> bytes:
    """The bytes of a dcc.Upload `contents` (a `data:...;base64,...` URL), at most
    `MAX_UPLOAD_BYTES`; InputError for anything else (the size is checked on
    the base64 text before it is decoded)."""
    if not isinstance(contents, str) or "," not in contents:
        raise InputError("the upload is not a file")
    header, _, body = contents.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise InputError("the upload is not a file (expected a base64 data URL)")
    limit = f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"
    if len(body) > (MAX_UPLOAD_BYTES + 2) // 3 * 4 + 4:
        raise InputError(f"the file is larger than {limit}: choose a smaller image")
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the upload could not be read (invalid base64)") from None
    if not data:
        raise InputError("the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise InputError(f"the file is larger than {limit}: choose a smaller image")
    return data


@dataclass(frozen=True)
class DecodedImage:
    """An image read from bytes: `pixels` `[height, width, channel]` float32 in
    [0, 1] (1 or 3 channels; alpha dropped, palette and 16-bit images
    converted), its `format` (PNG, JPEG...) and `name` (for display)."""

    pixels: Float[np.ndarray, "height width channel"]
    format: str
    name: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def decode_image(data: bytes, name: str = "uploaded image") -> DecodedImage:
    """Decode image file bytes with Pillow (first frame of animations, EXIF
    orientation applied); InputError for a file that is not one of `FORMATS`,
    is damaged, or exceeds `MAX_PIXELS` / `MAX_SIDE` (checked from the header,
    before decoding)."""
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError as error:
        raise MissingExtraError(
            "reading image files needs Pillow: pip install 'headscope[vision]'"
        ) from error
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InputError(f"{name} is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
                width, height = image.size
                _check_size(width, height, name)
                kind = str(image.format)
                image.seek(0)
                image.load()
                pixels = _float_pixels(ImageOps.exif_transpose(image))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(
                f"{name} is too large to decode safely (over {MAX_PIXELS:,} pixels)"
            ) from None
        except UnidentifiedImageError:
            raise InputError(
                f"{name} is not an image headscope reads (expected {', '.join(FORMATS)})"
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise InputError(f"{name} could not be decoded: {error}") from None
    return DecodedImage(pixels, kind, name)


def _check_size(width: int, height: int, name: str) -> None:
    if width < 1 or height < 1:
        raise InputError(f"{name} has no pixels ({width}×{height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise InputError(
            f"{name} is {width}×{height} pixels; the dashboard takes at most {MAX_PIXELS:,} "
            f"pixels and {MAX_SIDE} per side: scale it down first"
        )


def _float_pixels(image) -> np.ndarray:
    """A PIL image as float32 `[H, W, 1 | 3]` in [0, 1]."""
    mode = image.mode
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "LA"):
        gray = image.convert("F") if mode in ("I", "I;16", "I;16B", "I;16L", "F") else None
        if gray is not None:
            values = np.asarray(gray, dtype=np.float32)
            top = 65535.0 if mode.startswith("I") else max(1.0, float(values.max()))
            array = np.clip(values / top, 0.0, 1.0)
        else:
            array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        return np.ascontiguousarray(array[..., None], dtype=np.float32)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(rgb, dtype=np.float32)


def read_upload(contents: object, filename: object = None) -> DecodedImage:
    """A dcc.Upload's `contents` and `filename` as a `DecodedImage` (see `decode_image`)."""
    name = display_name(filename)
    return decode_image(upload_bytes(contents), name)


# -- the page's store -----------------------------------------------------------------------------


def to_store(
    pixels: Float[np.ndarray, "height width channel"],
    *,
    name: str,
    source: str,
    label: int | None = None,
    region: int | None = None,
    original: tuple[int, int] | None = None,
) -> dict:
    """The JSON-safe form of an image for a dcc.Store: its float32 pixels in
    base64 with their shape, the name shown, where it came from ("sample" or
    "upload"), its true `label` and the quadrant `region` deciding it when
    known (toy-vit's test canvases), and the `original` (width, height)."""
    array = np.ascontiguousarray(pixels, dtype=np.float32)
    if array.ndim != 3 or max(array.shape[:2]) > MAX_STORED_SIDE:
        raise InputError(f"cannot keep an image of shape {array.shape}")
    return {
        "name": name,
        "source": source,
        "label": label,
        "region": region,
        "original": list(original) if original else None,
        "shape": list(array.shape),
        "pixels": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def from_store(data: object) -> tuple[Float[np.ndarray, "height width channel"], dict]:
    """(pixels, the rest of the store) from `to_store`'s dict as the browser sends
    it back; InputError when it is missing or malformed (shape, byte count, values)."""
    if not isinstance(data, dict):
        raise InputError("no image yet: pick a sample or upload an image")
    shape = data.get("shape")
    body = data.get("pixels")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        or max(shape[:2]) > MAX_STORED_SIDE
        or shape[2] not in (1, 3)
        or not isinstance(body, str)
    ):
        raise InputError("the page's image is malformed: pick or upload it again")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the page's image is malformed: pick or upload it again") from None
    if len(raw) != 4 * shape[0] * shape[1] * shape[2]:
        raise InputError("the page's image is malformed: pick or upload it again")
    pixels = np.frombuffer(raw, dtype=np.float32).reshape(shape).copy()
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise InputError("the page's image holds values outside [0, 1]: pick it again")
    meta = {key: data.get(key) for key in ("name", "source", "label", "region", "original")}
    meta["name"] = display_name(meta["name"], "image")
    for key in ("label", "region"):
        value = meta[key]
        meta[key] = value if isinstance(value, int) and not isinstance(value, bool) else None
    return pixels, meta
