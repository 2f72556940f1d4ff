"""capture() on images: maps equal Hugging Face eager attention of the same ViT
and DeiT checkpoints; image inputs in every accepted form; records keep the
patch grid through save and load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_vision, load_eager_hf_vision

import headscope as hs
from headscope.errors import InputError
from headscope.models.images import resized_image
from headscope.probes.run import run


@pytest.fixture(scope="module", params=["vit", "deit"])
def vision(request, tmp_path_factory):
    directory = build_tiny_vision(tmp_path_factory.mktemp(request.param), request.param)
    return hs.load_model(directory), load_eager_hf_vision(directory)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 12, 12, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kernel", ["tiled", "eager"])
def test_maps_and_logits_equal_hugging_face_eager(vision, kernel):
    model, hf = vision
    batch = model.tokenize(_images(3))
    record = hs.capture(model, batch, kernel=kernel)
    with torch.no_grad():
        out = hf(pixel_values=batch.pixel_values, output_attentions=True)
    expected = torch.stack(out.attentions, 1)  # [batch, layer, head, query, key]
    torch.testing.assert_close(record.pattern, expected, rtol=1e-5, atol=1e-6)
    assert record.provenance.kernel == kernel
    # Peaked and image-dependent: the comparison can tell maps apart.
    assert float(expected.amax(-1).mean()) > 3 / model.spec.n_ctx
    assert float((expected[0] - expected[1]).abs().max()) > 1e-2
    with torch.no_grad():
        logits = run(model, batch).output.logits
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)


def test_tokens_are_prefix_then_patches_in_row_major_order(vision):
    model, _ = vision
    record = hs.capture(model, _images(1)[0])
    spec = record.spec
    assert spec.is_vision and spec.patch_grid == (4, 4) and not spec.causal
    prefix = ("[CLS]", "[DIST]")[: spec.n_prefix_tokens]
    assert record.tokens[: spec.n_prefix_tokens] == prefix
    assert record.tokens[spec.n_prefix_tokens] == "(0,0)"
    assert record.tokens[spec.n_prefix_tokens + 5] == "(1,1)"
    assert len(record.tokens) == spec.n_ctx == spec.n_prefix_tokens + 16
    assert record.pattern.shape == (2, 4, spec.n_ctx, spec.n_ctx)
    record.check_content()


def test_records_keep_the_patch_grid_through_save_and_load(vision, tmp_path):
    model, _ = vision
    record = hs.capture(model, list(_images(2)))
    record.save(tmp_path / "record")
    loaded = hs.AttentionRecord.load(tmp_path / "record")
    assert loaded.equals(record)
    assert loaded.spec.patch_grid == (4, 4)
    assert loaded.spec.patch_size == 3 and loaded.spec.image_size == 12


def test_every_image_form_gives_the_same_pixels(vision, tmp_path):
    from PIL import Image

    model, _ = vision
    array = (np.random.default_rng(0).random((12, 12, 3)) * 255).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    forms = [
        array,
        torch.from_numpy(array),
        array.astype(np.float32) / 255,
        Image.fromarray(array),
        str(path),
        path,
    ]
    pixels = [model.tokenize(form).pixel_values for form in forms]
    for other in pixels[1:]:
        torch.testing.assert_close(other, pixels[0], rtol=0, atol=1e-6)
    # uint8 255 -> 1.0 -> (1 - 0.5) / 0.5 = 1: the processor's mean and std.
    white = model.tokenize(np.full((12, 12, 3), 255, dtype=np.uint8)).pixel_values
    assert torch.equal(white, torch.ones_like(white))
    assert model.tokenize(path).names == ("image.png",)


def test_grayscale_and_other_sizes_are_converted_and_resized(vision):
    model, _ = vision
    gray = torch.rand(24, 24)
    batch = model.tokenize(gray)
    assert batch.pixel_values.shape == (1, 3, 12, 12)
    # Grayscale is repeated to RGB: the three channels are equal.
    assert torch.equal(batch.pixel_values[0, 0], batch.pixel_values[0, 2])
    # The resize is PIL's bilinear filter (what Hugging Face's processors use),
    # here on float values so that no uint8 rounding intervenes.
    from PIL import Image

    expected = np.asarray(Image.fromarray(gray.numpy(), mode="F").resize((12, 12), Image.BILINEAR))
    resized = (batch.pixel_values[0, 0] + 1) / 2
    torch.testing.assert_close(resized, torch.from_numpy(expected.copy()), atol=1e-5, rtol=0)
    # What an overlay draws: the same image before normalisation.
    shown = resized_image(gray, model.image_processing)
    torch.testing.assert_close(shown[0], torch.from_numpy(expected.copy()), atol=1e-5, rtol=0)


def test_batches_in_every_form(vision):
    model, _ = vision
    images = _images(3)
    assert model.tokenize(images).batch_size == 3  # [batch, H, W, C]
    assert model.tokenize(list(images)).batch_size == 3
    assert model.tokenize(torch.rand(3, 12, 12)).batch_size == 3  # [batch, H, W] grayscale
    one = model.tokenize(images[0])
    assert one.single and one.batch_size == 1


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.rand(12, 12, 3) * 2, "floats must lie in \\[0, 1\\]"),
        (torch.full((12, 12), float("nan")), "NaN"),
        (torch.zeros(2, 12, 12, 5), "1, 3 or 4 channels"),
        (torch.zeros(12, 12, dtype=torch.int64), "uint8"),
        ("/nonexistent/image.png", "no image file"),
        ([], "no images"),
        (3.5, "PIL image"),
    ],
)
def test_bad_images_are_refused_with_one_line(vision, image, message):
    model, _ = vision
    with pytest.raises(InputError, match=message):
        model.tokenize(image)


def test_a_text_model_refuses_images(tiny_models):
    with pytest.raises(InputError, match="text model"):
        tiny_models["gpt2"].images(np.zeros((8, 8), dtype=np.uint8))


def test_deit_with_a_teacher_head_is_refused_in_one_line(tmp_path):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    from headscope.errors import UnsupportedModelError

    config = DeiTConfig(
        image_size=12,
        patch_size=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
    )
    DeiTForImageClassificationWithTeacher(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="WithTeacher"):
        hs.load_model(tmp_path)
