"""The vision report over a folder of images (`headscope vision-report`): how
the folder gives labels, and its numbers against an independent run of the
Hugging Face model on the same files (eager attention, normalisation by hand)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import headscope as hs
from headscope.cli import app as cli
from headscope.errors import InputError
from headscope.reports import vision as report_vision

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("sklearn")

DIGITS = tuple(str(d) for d in range(10))
N_IMAGES = 24


def png(path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def vit():
    return hs.load_model("toy-vit")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return report_vision.write_test_canvases(tmp_path_factory.mktemp("digits"), N_IMAGES)


@pytest.fixture(scope="module")
def written(vit, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("vision-report")
    html_path, json_path, _ = report_vision.vision_report(vit, folder, out, overlays=2)
    return html_path, json.loads(json_path.read_text(encoding="utf-8"))


def hf_reference(folder):
    """(accuracy, mean attention distance [layer, head]) straight from Hugging Face."""
    from transformers import ViTForImageClassification

    from headscope.models.zoo import BUILTINS

    hf = ViTForImageClassification.from_pretrained(
        BUILTINS["toy-vit"].path(), attn_implementation="eager"
    ).eval()
    files = sorted(folder.glob("*/*.png"), key=lambda p: (p.parent.name, p.name))
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255.0 for p in files])
    labels = torch.tensor([int(p.parent.name) for p in files])
    with torch.no_grad():
        out = hf(
            pixel_values=torch.from_numpy((pixels - 0.5) / 0.5)[:, None], output_attentions=True
        )
    accuracy = float((out.logits.argmax(-1) == labels).double().mean())
    rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    centres = (np.stack([rows.ravel(), cols.ravel()], -1) + 0.5) * 2.0
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    attention = torch.stack(out.attentions, 1).double().numpy()  # [image, layer, head, q, k]
    per_image = (attention[..., 1:, 1:] * distance).sum(-1).mean(-1)
    return accuracy, per_image.mean(0)


def test_the_report_matches_hugging_face_on_the_same_files(written, folder):
    html_path, document = written
    accuracy, distance = hf_reference(folder)
    assert document["n_images"] == N_IMAGES and document["labels"] == "sub-folders"
    measured = document["accuracy"]
    assert measured["value"] == pytest.approx(accuracy)
    low, high = measured["interval"]
    assert low <= measured["value"] <= high and measured["chance"] == pytest.approx(0.1)
    np.testing.assert_allclose(document["attention_distance"]["mean"], distance, atol=1e-4)
    # Nothing pruned: the clean accuracy; everything pruned cannot beat it.
    values = document["pruning"]["values"]
    assert values[0] == pytest.approx(accuracy) and document["pruning"]["clean"] == values[0]
    ranked = document["importance"]["ranked"]
    assert len(ranked) == 12 and ranked[0]["score"] >= ranked[-1]["score"]
    for row in ranked:
        assert row["low"] <= row["score"] <= row["high"]
    html = html_path.read_text(encoding="utf-8")
    assert "Accuracy" in html and "figure-overlay-1" in html and "figure-importance" in html


def test_sub_folders_labels_csv_and_loose_images(tmp_path):
    png(tmp_path / "a" / "3" / "x.png")
    png(tmp_path / "a" / "7" / "y.png")
    items, source = report_vision.read_folder(tmp_path / "a", DIGITS)
    assert source == "sub-folders" and [(i.name, i.label) for i in items] == [
        ("3/x.png", 3),
        ("7/y.png", 7),
    ]

    png(tmp_path / "b" / "one.png")
    png(tmp_path / "b" / "two.png")
    (tmp_path / "b" / "labels.csv").write_text("file,label\none.png,4\ntwo.png, 9\n")
    items, source = report_vision.read_folder(tmp_path / "b", DIGITS)
    assert source == "labels.csv" and [i.label for i in items] == [4, 9]

    png(tmp_path / "c" / "z.png")
    items, source = report_vision.read_folder(tmp_path / "c", DIGITS)
    assert source == "none" and items[0].label is None


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"cat/x.png": None}, "not one of the model's classes"),
        ({"3/x.png": None, "y.png": None}, "both images and sub-folders"),
        ({"labels.csv": "../outside.png,3\n", "x.png": None}, "no image"),
        ({"labels.csv": "x.png,11\n", "x.png": None}, "not one of the model's classes"),
        ({"notes.txt": "hello"}, "no images"),
    ],
)
def test_folders_the_report_refuses(tmp_path, layout, message):
    png(tmp_path / "outside.png")
    root = tmp_path / "folder"
    root.mkdir()
    for name, text in layout.items():
        if text is None:
            png(root / name)
        else:
            (root / name).write_text(text)
    with pytest.raises(InputError, match=message):
        report_vision.read_folder(root, DIGITS)
    with pytest.raises(InputError, match="no image folder"):
        report_vision.read_folder(tmp_path / "missing", DIGITS)


def test_too_many_images_are_refused(tmp_path):
    for i in range(3):
        png(tmp_path / f"{i}.png")
    with pytest.raises(InputError, match="at most 2"):
        report_vision.read_folder(tmp_path, DIGITS, max_images=2)


def test_names_stay_text_and_unlabelled_folders_skip_accuracy(vit, tmp_path):
    png(tmp_path / "in" / "<img src=x onerror=alert(1)>&.png", 200)
    _, _, report = report_vision.vision_report(vit, tmp_path / "in", tmp_path / "out", overlays=1)
    assert report.document["accuracy"] is None
    assert report.document["importance"]["scored_on"] == "the model's predictions"
    html = (tmp_path / "out" / "vision.html").read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;.png" in html
    assert "<img src=x" not in html


def test_the_command_line_writes_the_report(folder, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["vision-report", "--images", str(folder), "--out", str(tmp_path), "--overlays", "0"],
    )
    assert result.exit_code == 0, result.output
    assert "toy-vit: 24 images, accuracy" in result.output
    assert "most important heads" in result.output
    assert (tmp_path / "vision.json").is_file() and (tmp_path / "vision.html").is_file()
    refused = CliRunner().invoke(
        cli, ["vision-report", "--images", str(tmp_path / "none"), "--out", str(tmp_path)]
    )
    assert refused.exit_code == 2 and "no image folder" in refused.output
