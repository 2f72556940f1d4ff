"""The vision report: `headscope vision-report --model toy-vit --images DIR`
writes `vision.html` (self-contained, plotly.js inlined) and `vision.json` for
a folder of images (docs/methods.md §7, §7.7). The text report (`headscope report`)
is unchanged.

The folder: images directly in it (no labels: accuracy is not measured and
head importance scores each image's predicted class), sub-folders named by
class (`DIR/3/*.png`: the image's label is that class), or a `labels.csv` with
`file,label` rows (paths relative to the folder). Class names are matched
against the model's labels (`config.json`'s id2label), or class indices.

Measured: accuracy with its Wilson interval against chance (1 / classes) and
the majority-class rate; single-head ablation importance on the class logit (or
accuracy) with percentile-bootstrap intervals over the images; the greedy
pruning curve ordered by it (Michel et al. 2019); mean attention distance per
head (Dosovitskiy et al. 2021) with bootstrap intervals and the
uniform-attention baseline; overlays of rollout from [CLS] (Abnar & Zuidema
2020) and relevance (Chefer et al. 2021) on a few images. Memory: one batch of
attention maps at a time (`BATCH` images × layers × heads × N² floats).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from markupsafe import Markup

from headscope.analyses.uncertainty import bootstrap_interval
from headscope.analyses.vision import (
    AttentionDistance,
    PatchGeometry,
    class_token_rollout,
    mean_attention_distance,
)
from headscope.errors import InputError, MissingExtraError
from headscope.experiments.attention import capture
from headscope.experiments.vision import (
    IMAGE_METRICS,
    ScoringImage,
    classify,
    image_pruning_curves,
    image_relevance,
    score_image_heads,
)
from headscope.figures.heads import importance_heatmap, pruning_curve
from headscope.figures.theme import THEME_CSS
from headscope.figures.vision import attention_distance_figure, overlay_panels
from headscope.models.images import image_view
from headscope.models.loading import HeadscopeModel
from headscope.reports.writers import _environment, _figure

TEMPLATE = "vision.html.j2"
#: File suffixes read as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
#: Images per forward pass when classifying and capturing.
BATCH = 32
#: Largest image read (pixels, from the file's header).
MAX_PIXELS = 64 * 1024 * 1024
LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class FolderImage:
    """One image of the folder: its `path`, `name` (relative to the folder) and
    class `label` (None when the folder gives none)."""

    path: Path
    name: str
    label: int | None


def _class_index(value: str, class_names: tuple[str, ...], where: str) -> int:
    text = value.strip()
    if text in class_names:
        return class_names.index(text)
    if text.isdigit() and int(text) < len(class_names):
        return int(text)
    shown = ", ".join(class_names[:12]) + (" …" if len(class_names) > 12 else "")
    raise InputError(f"{where}: {text!r} is not one of the model's classes ({shown})")


def _is_image(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def read_folder(
    folder: str | Path, class_names: tuple[str, ...], *, max_images: int = 512
) -> tuple[list[FolderImage], str]:
    """The images of `folder` in a fixed order and where their labels come from
    ("labels.csv", "sub-folders" or "none"); InputError for a missing or empty
    folder, an unknown class, or more than `max_images` images."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"no image folder at {root}")
    items: list[FolderImage] = []
    labels_file = root / LABELS_FILE
    if labels_file.is_file():
        source = LABELS_FILE
        with labels_file.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                if not row or (
                    number == 1 and [c.strip().lower() for c in row] == ["file", "label"]
                ):
                    continue
                if len(row) != 2:
                    raise InputError(f"{labels_file}:{number}: expected file,label")
                path = (root / row[0].strip()).resolve()
                if root.resolve() not in path.parents or not _is_image(path):
                    raise InputError(
                        f"{labels_file}:{number}: no image {row[0].strip()!r} in {root}"
                    )
                label = _class_index(row[1], class_names, f"{labels_file}:{number}")
                items.append(FolderImage(path, row[0].strip(), label))
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = sorted(p for p in root.iterdir() if _is_image(p))
        if folders and loose:
            raise InputError(
                f"{root} holds both images and sub-folders: put every image in its class's "
                "sub-folder, or none"
            )
        if folders:
            source = "sub-folders"
            for sub in folders:
                label = _class_index(sub.name, class_names, f"sub-folder {sub.name!r}")
                for path in sorted(p for p in sub.iterdir() if _is_image(p)):
                    items.append(FolderImage(path, f"{sub.name}/{path.name}", label))
        else:
            source = "none"
            items = [FolderImage(path, path.name, None) for path in loose]
    if not items:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    if len(items) > max_images:
        raise InputError(
            f"{root} holds {len(items)} images; the report takes at most {max_images} "
            "(--max-images)"
        )
    return items, source


def _load(item: FolderImage) -> Any:
    """The image file as a PIL image, its size checked from the header first."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise MissingExtraError(
            "reading image files needs Pillow: pip install 'headscope[vision]'"
        ) from error
    try:
        with Image.open(item.path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InputError(f"{item.name} is {width}×{height} pixels: too large to read")
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise InputError(f"{item.name} is not an image Pillow can read ({error})") from None


def model_view(model: HeadscopeModel, image: Any) -> np.ndarray:
    """The image as the model sees it (its channels, its size), in [0, 1], `[H, W, C]`."""
    return image_view(image, model.image_processing)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (scipy's binomtest)."""
    from scipy.stats import binomtest

    interval = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _grid(tensor: torch.Tensor) -> list:
    return [[_finite(float(v)) for v in row] for row in tensor]


@dataclass(frozen=True)
class VisionReport:
    """What `vision_report` measured (the JSON document) and its figures."""

    document: dict[str, Any]
    figures: dict[str, Any]


def measure(
    model: HeadscopeModel,
    items: list[FolderImage],
    label_source: str,
    *,
    metric: str = "class_logit",
    overlays: int = 6,
    progress: Callable[[str], object] | None = None,
) -> VisionReport:
    """Classify, score and capture every image of `items` (see the module docstring)."""
    say = progress or (lambda text: None)
    spec = model.spec
    if not spec.is_vision or not spec.has_lm_head:
        raise InputError(f"{spec.name} is not an image classifier: the vision report needs one")
    if metric not in IMAGE_METRICS:
        raise InputError(f"metric must be one of {', '.join(IMAGE_METRICS)}, got {metric!r}")
    names = model.class_names or tuple(str(i) for i in range(spec.d_vocab))
    geometry = PatchGeometry.of(spec)
    say(f"reading {len(items)} images…")
    views = [model_view(model, _load(item)) for item in items]

    say("classifying and capturing…")
    probabilities, distances, prefix = [], [], []
    for start in range(0, len(views), BATCH):
        batch = model.images([views[i] for i in range(start, min(start + BATCH, len(views)))])
        probabilities.append(classify(model, batch).probabilities)
        record = capture(model, batch)
        pattern = record.pattern if record.pattern.dim() == 5 else record.pattern[None]
        result = mean_attention_distance(pattern, geometry)
        distances.append(result.distance)
        prefix.append(result.prefix_mass)
    probs = torch.cat(probabilities)
    predicted = probs.argmax(-1)
    distance = torch.cat(distances)  # [image, layer, head]
    prefix_mass = torch.cat(prefix)
    uniform = mean_attention_distance(
        torch.full((geometry.n_tokens, geometry.n_tokens), 1.0 / geometry.n_tokens), geometry
    ).uniform

    labels = [item.label for item in items]
    labelled = all(label is not None for label in labels)
    n = len(items)
    accuracy = None
    if labelled:
        truth = torch.tensor(labels)
        correct = int((predicted == truth).sum())
        low, high = wilson_interval(correct, n)
        majority = float(torch.bincount(truth, minlength=len(names)).max()) / n
        accuracy = {
            "value": correct / n,
            "correct": correct,
            "n": n,
            "interval": [low, high],
            "interval_method": "Wilson score, 95%",
            "chance": 1 / len(names),
            "majority_class_rate": majority,
        }

    say("head importance (single-head ablation)…")
    scoring = [ScoringImage(views[i], labels[i], items[i].name) for i in range(n)]
    scores = score_image_heads(model, scoring, methods=("ablation",), metric=metric)
    interval = scores.interval("ablation")
    importance = scores.mean("ablation")
    say("pruning curve…")
    prune_metric = "accuracy" if labelled else metric
    fractions, curves, clean = image_pruning_curves(
        model, scoring, {"ablation": importance}, metric=prune_metric
    )

    distance_interval = bootstrap_interval(distance)
    top = torch.nan_to_num(importance.double(), nan=-torch.inf).flatten().argsort(descending=True)
    ranked = []
    for index in top.tolist():
        layer, head = divmod(index, spec.n_heads)
        ranked.append(
            {
                "layer": layer,
                "head": head,
                "score": _finite(float(importance[layer, head])),
                "low": _finite(float(interval.low[layer, head])),
                "high": _finite(float(interval.high[layer, head])),
                "significant": bool(
                    interval.low[layer, head] > 0 or interval.high[layer, head] < 0
                ),
                "distance": float(distance_interval.mean[layer, head]),
            }
        )

    document: dict[str, Any] = {
        "kind": "headscope vision report",
        "model": spec.name,
        "architecture": spec.architecture,
        "patch_grid": list(geometry.grid),
        "patch_size": geometry.patch_size,
        "image_size": spec.image_size,
        "classes": list(names),
        "n_images": n,
        "labels": label_source,
        "accuracy": accuracy,
        "images": [
            {
                "name": item.name,
                "label": None if item.label is None else names[item.label],
                "predicted": names[int(predicted[i])],
                "probability": float(probs[i, predicted[i]]),
            }
            for i, item in enumerate(items)
        ],
        "importance": {
            "method": "ablation",
            "ablation_mode": scores.ablation_mode,
            "metric": scores.metric.name,
            "metric_description": scores.metric.description,
            "meaning": scores.methods["ablation"].meaning,
            "scored_on": "labels" if labelled else "the model's predictions",
            "mean": _grid(importance),
            "low": _grid(interval.low),
            "high": _grid(interval.high),
            "interval": f"{interval.level:.0%} percentile bootstrap over {interval.n} images",
            "clean": float(scores.clean.double().mean()),
            "ranked": ranked,
        },
        "pruning": {
            "metric": prune_metric,
            "order": "ablation importance, least important first",
            "fractions": fractions,
            "values": curves["ablation"],
            "clean": clean,
            "chance": 1 / len(names) if prune_metric == "accuracy" else None,
        },
        "attention_distance": {
            "unit": "pixels between patch centres",
            "mean": _grid(distance_interval.mean),
            "low": _grid(distance_interval.low),
            "high": _grid(distance_interval.high),
            "interval": f"{distance_interval.level:.0%} percentile bootstrap over {n} images",
            "prefix_mass": _grid(prefix_mass.mean(0)),
            "uniform": uniform,
            "patch_queries_per_head": geometry.n_patches,
        },
    }

    say("overlays…")
    figures: dict[str, Any] = {}
    shown = []
    for i in range(min(overlays, n)):
        with torch.no_grad():
            record = capture(model, model.images(views[i]))
        rollout = class_token_rollout(record.pattern, geometry)
        relevance = image_relevance(model, views[i])
        patches = rollout.patch_map.clamp_min(0)
        title = f"{items[i].name}: predicted {names[int(predicted[i])]}" + (
            "" if items[i].label is None else f", label {names[items[i].label]}"
        )
        figures[f"overlay-{i}"] = overlay_panels(
            views[i],
            {
                "rollout from [CLS] (share of patches)": patches / patches.sum(),
                f"relevance for class {names[relevance.target]}": relevance.patch_map,
            },
            title=title,
        )
        shown.append(
            {
                "name": items[i].name,
                "rollout_on_cls": rollout.prefix_share,
                "relevance_target": names[relevance.target],
            }
        )
    document["overlays"] = shown
    unit = "Δ logit" if metric == "class_logit" else "Δ accuracy"
    figures["importance"] = importance_heatmap(
        importance,
        title=f"Harm to the {metric.replace('_', ' ')} when one head is zeroed",
        colorbar_title=unit,
        interval=(interval.low, interval.high),
        support=f"95% bootstrap over {n} images",
    )
    figures["pruning"] = pruning_curve(
        fractions,
        {"by ablation": curves["ablation"]},
        metric_name=prune_metric.replace("_", " "),
        baseline=clean,
    )
    figures["distance"] = attention_distance_figure(
        AttentionDistance(
            distance=distance,
            prefix_mass=prefix_mass,
            uniform=uniform,
            n_queries=geometry.n_patches,
            renormalized=False,
        ),
        title="",
        n_images=n,
    )
    return VisionReport(document, figures)


def render_html(report: VisionReport) -> str:
    """The report page (autoescaped: image names and class names are text)."""
    from plotly.offline import get_plotlyjs

    document = report.document
    heads = document["attention_distance"]
    rows = []
    for entry in document["importance"]["ranked"]:
        layer, head = entry["layer"], entry["head"]
        rows.append(
            {
                **entry,
                "distance_low": heads["low"][layer][head],
                "distance_high": heads["high"][layer][head],
                "prefix": heads["prefix_mass"][layer][head],
            }
        )
    context = {
        "title": f"headscope vision report: {document['model']}",
        "theme_css": Markup(THEME_CSS),
        "plotly_js": Markup(get_plotlyjs()),
        "document": document,
        "rows": rows,
        "overlays": [
            _figure(report.figures[f"overlay-{i}"], f"overlay-{i}")
            for i in range(len(document["overlays"]))
        ],
        "importance_figure": _figure(report.figures["importance"], "importance"),
        "pruning_figure": _figure(report.figures["pruning"], "pruning"),
        "distance_figure": _figure(report.figures["distance"], "distance"),
    }
    return _environment().get_template(TEMPLATE).render(context)


def write_vision_report(out: str | Path, report: VisionReport) -> tuple[Path, Path]:
    """Write `out/vision.html` and `out/vision.json`; returns their paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    html_path, json_path = folder / "vision.html", folder / "vision.json"
    html_path.write_text(render_html(report), encoding="utf-8")
    json_path.write_text(json.dumps(report.document, indent=1) + "\n", encoding="utf-8")
    return html_path, json_path


def vision_report(
    model: HeadscopeModel,
    images: str | Path,
    out: str | Path,
    *,
    metric: str = "class_logit",
    overlays: int = 6,
    max_images: int = 512,
    progress: Callable[[str], object] | None = None,
) -> tuple[Path, Path, VisionReport]:
    """Read the folder `images`, measure (`measure`) and write the report to `out`."""
    names = model.class_names or tuple(str(i) for i in range(model.spec.d_vocab))
    items, source = read_folder(images, names, max_images=max_images)
    report = measure(model, items, source, metric=metric, overlays=overlays, progress=progress)
    html_path, json_path = write_vision_report(out, report)
    return html_path, json_path, report


def write_test_canvases(folder: str | Path, count: int = 60) -> Path:
    """The first `count` of toy-vit's held-out test canvases as 16×16 PNGs in
    class sub-folders of `folder` (`DIR/<digit>/test-<i>.png`): a labelled
    folder for trying the report."""
    from PIL import Image

    from headscope.models import vit_data

    split = vit_data.test_split()
    root = Path(folder)
    for i in range(min(count, len(split.labels))):
        target = root / str(int(split.labels[i]))
        target.mkdir(parents=True, exist_ok=True)
        pixels = (split.images[i].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(target / f"test-{i:03d}.png")
    return root
