"""Image uploads (`dashboard.images`): a dcc.Upload's data URL decoded into the
pixels Pillow wrote, within the byte and pixel limits, with a clear InputError
for anything that is not an image; file names kept as plain text."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from headscope.dashboard import images
from headscope.errors import InputError

Image = pytest.importorskip("PIL.Image")


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def encoded(array: np.ndarray, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format, **options)
    return buffer.getvalue()


def test_a_png_round_trips_to_its_pixels():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    image = images.read_upload(data_url(encoded(rgb)), "picture.png")
    assert image.format == "PNG" and image.name == "picture.png"
    assert image.size == (11, 7)
    np.testing.assert_allclose(image.pixels, rgb / 255.0, atol=1e-7)


def test_grayscale_alpha_and_palette_images_are_converted():
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    one = images.read_upload(data_url(encoded(gray)))
    assert one.pixels.shape == (4, 6, 1)
    np.testing.assert_allclose(one.pixels[..., 0], gray / 255.0, atol=1e-7)

    rgba = np.zeros((3, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17  # alpha is dropped, colour kept
    dropped = images.read_upload(data_url(encoded(rgba)))
    assert dropped.pixels.shape == (3, 3, 3)
    np.testing.assert_allclose(dropped.pixels[..., 0], 200 / 255.0, atol=1e-7)

    palette = Image.fromarray(np.full((5, 5, 3), (10, 20, 30), dtype=np.uint8)).quantize(4)
    buffer = io.BytesIO()
    palette.save(buffer, "GIF")
    gif = images.read_upload(data_url(buffer.getvalue(), "image/gif"))
    assert gif.format == "GIF" and gif.pixels.shape == (5, 5, 3)
    np.testing.assert_allclose(gif.pixels[0, 0], np.array([10, 20, 30]) / 255.0, atol=1e-7)


def test_a_jpeg_decodes_close_to_what_was_encoded():
    rgb = np.full((16, 16, 3), (120, 60, 200), dtype=np.uint8)
    image = images.read_upload(data_url(encoded(rgb, "JPEG", quality=95), "image/jpeg"))
    assert image.format == "JPEG"
    np.testing.assert_allclose(image.pixels, rgb / 255.0, atol=6 / 255)


@pytest.mark.parametrize(
    "contents",
    [
        data_url(b"hello, this is not an image", "image/png"),
        data_url(b"%PDF-1.4 fake", "application/pdf"),
        data_url(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "image/svg+xml"),
    ],
)
def test_files_that_are_not_images_are_refused(contents):
    with pytest.raises(InputError, match="not an image"):
        images.read_upload(contents, "x.png")


def test_a_damaged_image_is_refused():
    data = encoded(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(InputError, match="could not be decoded|not an image"):
        images.read_upload(data_url(data[: len(data) // 2]), "cut.png")


@pytest.mark.parametrize(
    "contents",
    [None, 3, "", "plain text", "data:image/png,abc", "data:image/png;base64,@@@", "data:;base64,"],
)
def test_malformed_uploads_are_refused(contents):
    with pytest.raises(InputError):
        images.read_upload(contents)


def test_the_byte_limit_is_checked_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_UPLOAD_BYTES", 1000)
    big = data_url(b"\0" * 4000)
    with pytest.raises(InputError, match="larger than"):
        images.upload_bytes(big)
    assert images.upload_bytes(data_url(b"\1" * 999)) == b"\1" * 999


def test_the_pixel_limit_is_read_from_the_header(monkeypatch):
    # 3000 × 3000 one-bit pixels compress to a few kB: a small file, a large image.
    buffer = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 100_000
    monkeypatch.setattr(images, "MAX_PIXELS", 3000 * 3000 - 1)
    with pytest.raises(InputError, match="at most"):
        images.read_upload(data_url(buffer.getvalue()), "wide.png")
    monkeypatch.setattr(images, "MAX_SIDE", 2999)
    monkeypatch.setattr(images, "MAX_PIXELS", 10**9)
    with pytest.raises(InputError, match="per side"):
        images.read_upload(data_url(buffer.getvalue()), "wide.png")


def test_pillows_decompression_bomb_guard_becomes_an_input_error(monkeypatch):
    buffer = io.BytesIO()
    Image.new("L", (200, 200)).save(buffer, "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # warns above, raises above twice
    with pytest.raises(InputError, match="too large to decode safely"):
        images.read_upload(data_url(buffer.getvalue()), "bomb.png")


def test_only_the_file_names_last_component_is_kept_as_text():
    assert images.display_name("../../etc/passwd") == "passwd"
    assert images.display_name("C:\\Users\\me\\<b>cat.png") == "<b>cat.png"
    assert images.display_name("a\x00b\nc.png") == "abc.png"
    assert images.display_name(None) == "uploaded image"
    assert images.display_name("dir/") == "uploaded image"
    long = images.display_name("x" * 500 + ".png")
    assert len(long) == images.MAX_NAME_CHARS and long.endswith("…")


def test_the_store_round_trips_and_refuses_tampering():
    pixels = np.random.default_rng(1).random((16, 16, 1)).astype(np.float32)
    store = images.to_store(pixels, name="a.png", source="upload", label=3, original=(40, 30))
    back, meta = images.from_store(store)
    np.testing.assert_array_equal(back, pixels)
    assert meta == {
        "name": "a.png",
        "source": "upload",
        "label": 3,
        "region": None,
        "original": [40, 30],
    }
    with pytest.raises(InputError):
        images.from_store(None)
    with pytest.raises(InputError):
        images.from_store({**store, "shape": [16, 16, 2]})
    with pytest.raises(InputError):
        images.from_store({**store, "shape": [16, 15, 1]})  # byte count no longer matches
    outside = images.to_store(pixels, name="b", source="upload")
    outside["pixels"] = base64.b64encode(np.full((16, 16, 1), 2.0, np.float32).tobytes()).decode()
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        images.from_store(outside)
    assert images.from_store({**store, "label": True})[1]["label"] is None
