"""The built-in toy-vit: loads offline, reaches its model card's test accuracy
on the held-out split (recomputed here), and its files are what the card says."""

from __future__ import annotations

import json
import re

import pytest
import torch

import headscope as hs
from headscope.errors import InputError
from headscope.models import vit_data
from headscope.models.zoo import BUILTINS


@pytest.fixture(scope="module")
def toy_vit():
    return hs.load_model("toy-vit")


def _card_accuracy() -> float:
    card = (BUILTINS["toy-vit"].path() / "MODEL_CARD.md").read_text()
    (value,) = re.findall(r"\| test accuracy \(360 held-out digits.*\| ([0-9.]+) \|", card)
    return float(value)


def test_loads_offline_as_a_vision_model(toy_vit):
    spec = toy_vit.spec
    assert spec.is_vision and not spec.causal and spec.has_lm_head
    assert (spec.n_layers, spec.n_heads, spec.d_model) == (3, 4, 64)
    assert spec.patch_grid == (8, 8) and spec.patch_size == 2 and spec.image_size == 16
    assert spec.n_ctx == 65 and spec.d_vocab == 10 and spec.num_channels == 1
    assert toy_vit.tokenizer is None
    assert toy_vit.class_names == tuple(str(i) for i in range(10))


def test_reaches_its_model_card_test_accuracy(toy_vit):
    """The held-out split is rebuilt from scikit-learn's digits and the model is
    run through headscope's image path (model.tokenize -> bridge)."""
    from headscope.probes.run import run

    test = vit_data.test_split()
    assert len(test.labels) == vit_data.N_TEST == 360
    batch = toy_vit.tokenize(test.images)  # [image, 16, 16] floats in [0, 1]
    with torch.no_grad():
        logits = run(toy_vit, batch).output.logits
    accuracy = float((logits.argmax(-1) == test.labels).float().mean())
    card = _card_accuracy()
    assert card > 0.9  # the card's claim is worth testing: chance is 0.1
    assert accuracy >= card - 1e-4, (accuracy, card)
    training = json.loads((BUILTINS["toy-vit"].path() / "training.json").read_text())
    assert training["test_accuracy"] == pytest.approx(card, abs=1e-4)


def test_the_test_split_is_held_out_and_fixed():
    train, test = vit_data.split()
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert len(train) + len(test) == 1797
    first, second = vit_data.test_split(), vit_data.test_split()
    assert torch.equal(first.images, second.images)
    # The digit sits in its quadrant; the other quadrants hold dimmed shuffles.
    images, _ = vit_data.digits()
    rows, cols = vit_data.quadrant_slices(int(first.quadrants[0]))
    assert torch.equal(first.images[0, rows, cols], images[test[0]])
    assert float(first.images[0].max()) <= 1.0


def test_the_shipped_files_are_small_safetensors():
    directory = BUILTINS["toy-vit"].path()
    assert (directory / "model.safetensors").stat().st_size < 2_000_000
    assert not list(directory.glob("*.bin"))
    processor = json.loads((directory / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5] and processor["image_std"] == [0.5]


def test_image_fields_of_the_spec_round_trip_and_are_checked(toy_vit):
    spec = toy_vit.spec
    assert hs.ModelSpec.from_dict(spec.to_dict()) == spec
    data = spec.to_dict()
    with pytest.raises(InputError, match="n_ctx"):
        hs.ModelSpec.from_dict({**data, "n_ctx": 64})
    with pytest.raises(InputError, match="multiple of patch_size"):
        hs.ModelSpec.from_dict({**data, "patch_size": 3})
    with pytest.raises(InputError, match="positive int"):
        hs.ModelSpec.from_dict({**data, "patch_size": None})
    text = {
        **data,
        **dict.fromkeys(("image_size", "patch_size", "num_channels", "n_prefix_tokens")),
    }
    assert not hs.ModelSpec.from_dict(text).is_vision


def test_a_pulled_copy_loads_offline_with_its_processor(tmp_path):
    from headscope.models.loading import pull_model

    target = pull_model("toy-vit", tmp_path / "copy")
    assert (target / "preprocessor_config.json").is_file()
    copy = hs.load_model(target)
    assert copy.spec.patch_grid == (8, 8)
    assert copy.image_processing == hs.load_model("toy-vit").image_processing


def test_a_directory_without_a_processor_config_uses_the_vit_defaults(tmp_path):
    import shutil

    source = BUILTINS["toy-vit"].path()
    target = tmp_path / "bare"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, target / name)
    model = hs.load_model(target)
    assert model.image_processing.mean == (0.5,) and model.image_processing.std == (0.5,)
    assert model.image_processing.size == 16
