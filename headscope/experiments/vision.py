"""Vision-transformer experiments (docs/methods.md §7): the model's class
prediction, gradient-weighted relevance from [CLS] to the patches, head
importance by ablation, gradient and gating on the class logit or accuracy,
and pruning curves.

    model = hs.load_model("toy-vit")
    relevance = image_relevance(model, image)            # ImageRelevance
    scores = score_heads(model, [ScoringImage(image, label=3), ...],
                         methods=("ablation", "chg"), metric="class_logit")
    scores.mean("ablation")                               # [layer, head]

`experiments.score_heads` sends a vision model here, so the dashboard, the
report and the notebooks call the same entry point for images as for text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.analyses.relevance import relevance_from_gradients
from headscope.analyses.vision import PatchGeometry
from headscope.errors import InputError
from headscope.experiments.ablation import clean_metric, pruning_curve
from headscope.experiments.gradients import gate_gradients
from headscope.experiments.metrics import Metric, MetricInfo, metric_info, resolve_metric
from headscope.experiments.relevance import attention_gradients
from headscope.models.images import ImageBatch
from headscope.models.loading import HeadscopeModel, ModelOutput
from headscope.models.tokens import TokenBatch
from headscope.probes.run import run

#: Metrics that score heads of an image classifier.
IMAGE_METRICS: tuple[str, ...] = ("class_logit", "accuracy")
#: Methods `score_heads` runs on images (patching needs corrupted prompts).
IMAGE_METHODS: tuple[str, ...] = ("ablation", "gradient", "chg")


def _require_classifier(model: HeadscopeModel) -> None:
    if not model.spec.is_vision:
        raise InputError(f"{model.spec.name} is not a vision model; it takes text prompts")
    if not model.spec.has_lm_head:
        raise InputError(
            f"{model.spec.name} has no image classifier (a bare encoder): there is no class "
            "logit to explain or score"
        )


def _images(model: HeadscopeModel, images: Any) -> ImageBatch:
    return images if isinstance(images, ImageBatch) else model.images(images)


@dataclass(frozen=True)
class ClassPrediction:
    """An image classifier's output for a batch: `logits` and `probabilities`
    `[image, class]`, the top class per image, and the class names."""

    logits: Float[Tensor, "image class"]
    probabilities: Float[Tensor, "image class"]
    top: Int[Tensor, " image"]
    class_names: tuple[str, ...]


@torch.no_grad()
def classify(model: HeadscopeModel, images: Any) -> ClassPrediction:
    """The model's class logits, probabilities and top class for one image or a
    batch (anything `model.images` takes, or an ImageBatch)."""
    _require_classifier(model)
    batch = _images(model, images)
    logits = run(model, batch).output.logits.float().cpu()
    names = model.class_names or tuple(str(i) for i in range(logits.shape[-1]))
    return ClassPrediction(logits, logits.softmax(-1), logits.argmax(-1), names)


@dataclass(frozen=True)
class ImageRelevance:
    """Gradient-weighted relevance of one image's tokens for a class.

    - `tokens[token]`: row [CLS] of Chefer's relevance matrix R (prefix tokens,
      then patches); R ≥ I, so [CLS] carries at least 1 from the identity.
    - `patch_map[rows, columns]`: the patch entries, divided by their sum (a
      distribution over patches; all zero when no patch has relevance).
    - `target` (the class explained), its `logit` and `probability`,
      `predicted` (the model's top class).
    """

    tokens: Float[Tensor, " token"]
    patch_map: Float[Tensor, "rows columns"]
    target: int
    logit: float
    probability: float
    predicted: int


def image_relevance(model: HeadscopeModel, image: Any, target: int | None = None) -> ImageRelevance:
    """Chefer et al. 2021 relevance (`experiments.relevance`, docs/methods.md §1.3)
    of one image for the logit of class `target` (default: the model's top
    class), read from [CLS]: the token a ViT classifies from. Memory: two
    `[layer, head, N, N]` float32 tensors and one backward pass."""
    _require_classifier(model)
    batch = _images(model, image)
    if batch.batch_size != 1:
        raise InputError(f"image_relevance takes one image, got {batch.batch_size}")
    prediction = classify(model, batch)
    predicted = int(prediction.top[0])
    chosen = predicted if target is None else int(target)
    if not 0 <= chosen < model.spec.d_vocab:
        raise InputError(f"class {chosen} is outside the model's {model.spec.d_vocab} classes")

    def class_logit(output: ModelOutput, _: TokenBatch) -> Tensor:
        return output.logits[0, chosen]

    captured = attention_gradients(model, batch, class_logit)
    matrix = relevance_from_gradients(captured.pattern, captured.gradient)
    geometry = PatchGeometry.of(model.spec)
    row = matrix[0].double()
    patches = geometry.to_grid(row).clamp_min(0)
    total = patches.sum()
    patch_map = patches / total if total > 0 else patches
    return ImageRelevance(
        tokens=row,
        patch_map=patch_map,
        target=chosen,
        logit=float(prediction.logits[0, chosen]),
        probability=float(prediction.probabilities[0, chosen]),
        predicted=predicted,
    )


# -- head importance ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringImage:
    """One image to score heads on, its class `label` (None: the model's own
    top class on the clean image), and a `name` for results."""

    image: Any
    label: int | None = None
    name: str | None = None


def _scoring_batch(
    model: HeadscopeModel, images: Sequence[ScoringImage | Any]
) -> tuple[ImageBatch, Tensor, tuple[str, ...], tuple[str, ...]]:
    """(batch, labels, names, where each label came from: "label" or "predicted")."""
    items = [i if isinstance(i, ScoringImage) else ScoringImage(i) for i in images]
    if not items:
        raise InputError("no images given")
    batch = model.images([item.image for item in items])
    predicted = classify(model, batch).top
    labels, sources = [], []
    for i, item in enumerate(items):
        if item.label is None:
            labels.append(int(predicted[i]))
            sources.append("predicted")
        else:
            if isinstance(item.label, bool) or not isinstance(item.label, int):
                raise InputError(f"image {i}: label must be a class index, got {item.label!r}")
            if not 0 <= item.label < model.spec.d_vocab:
                raise InputError(
                    f"image {i}: label {item.label} is outside the {model.spec.d_vocab} classes"
                )
            labels.append(item.label)
            sources.append("label")
    names = tuple(
        item.name or (batch.names[i] if batch.names and batch.names[i] else f"image-{i}")
        for i, item in enumerate(items)
    )
    return batch, torch.tensor(labels), names, tuple(sources)


def _check(model: HeadscopeModel, methods: Sequence[str], metric: str) -> MetricInfo:
    _require_classifier(model)
    unknown = [m for m in methods if m not in IMAGE_METHODS]
    if unknown or not methods:
        raise InputError(
            f"method(s) {unknown} do not run on images; choose from {', '.join(IMAGE_METHODS)}"
            if unknown
            else "choose at least one method"
        )
    info = metric_info(metric)
    if info.name not in IMAGE_METRICS:
        raise InputError(
            f"metric {info.name!r} does not apply to an image classifier; choose from "
            f"{', '.join(IMAGE_METRICS)}"
        )
    fitted = [m for m in methods if m in ("gradient", "chg")]
    if info.name == "accuracy" and fitted:
        raise InputError(
            f"accuracy is piecewise constant (its gradient is zero), so {', '.join(fitted)} "
            "would say nothing; score those on class_logit, or use ablation for accuracy"
        )
    return info


def score_image_heads(
    model: HeadscopeModel,
    images: Sequence[ScoringImage | Any],
    methods: Sequence[str] = ("ablation", "gradient"),
    metric: str = "class_logit",
    *,
    chg_seeds: int = 5,
    chg_steps: int = 100,
    ablation_mode: str = "zero",
    seed: int = 0,
    group: str = "all",
    progress: Any = None,
) -> Any:
    """Head importance on images, as `experiments.score_heads` returns it
    (`HeadScores`; `score_heads` calls this for a vision model). The metric is
    the class logit of each image's label or the accuracy (docs/methods.md §7);
    `prompt_targets` says per image whether the label was given ("label") or is
    the model's own prediction ("predicted"), `target_tokens` is 1 per image
    (one class scored). Methods: ablation (zero or mean at z), gradient
    (Michel et al. 2019) and Causal Head Gating (Nam et al. 2025); the last two
    need a gradient, so they take `class_logit` only (accuracy is piecewise
    constant). Deterministic as `score_heads`."""
    from headscope.experiments.scoring import (
        HeadScores,
        MethodScores,
        _detached,
        ablation_method,
        chg_method,
        deterministic,
        gradient_method,
    )

    chosen = tuple(methods)
    info = _check(model, chosen, metric)
    if ablation_mode not in ("zero", "mean"):
        raise InputError(f"unknown ablation mode {ablation_mode!r}; choose 'zero' or 'mean'")
    report = progress or (lambda done, total, label: None)
    batch, labels, names, sources = _scoring_batch(model, images)
    results: dict[str, MethodScores] = {}
    chg = None
    total = len(chosen) * 100
    with deterministic(seed):
        bound = resolve_metric(model, info.name, batch, label=labels)
        clean = clean_metric(model, batch, metric=bound)
        for stage, method in enumerate(chosen):
            base = stage * 100
            report(base, total, f"{method}…")
            if method == "ablation":
                results[method] = ablation_method(model, batch, bound, ablation_mode, names)
            elif method == "gradient":
                raw = []
                for i in range(batch.batch_size):
                    rows = torch.tensor([i])
                    one = batch.select(rows)
                    metric_one = resolve_metric(model, info.name, one, label=labels[rows])
                    raw.append(gate_gradients(model, one, metric=metric_one)[0].abs())
                    report(base + 100 * (i + 1) // batch.batch_size, total, "gradient…")
                results[method] = gradient_method(raw, names, info)
            else:
                chg, results[method] = chg_method(
                    model,
                    batch,
                    bound,
                    seeds=chg_seeds,
                    steps=chg_steps,
                    seed=seed,
                    group=group,
                    report=lambda done, _total, label, base=base: report(base + done, total, label),
                )
    report(total, total, "done")
    return HeadScores(
        metric=info,
        target="class",
        prompts=names,
        prompt_targets=sources,
        target_tokens=(1,) * len(names),
        clean=clean,
        methods={name: _detached(scores) for name, scores in results.items()},
        ablation_mode=ablation_mode,
        chg=chg,
    )


def image_pruning_curves(
    model: HeadscopeModel,
    images: Sequence[ScoringImage | Any],
    orders: Mapping[str, Float[Tensor, "layer head"]],
    metric: str = "accuracy",
    *,
    ablation_mode: str = "zero",
) -> tuple[list[float], dict[str, list[float]], float]:
    """Greedy pruning curves on images (Michel et al. 2019), as
    `experiments.pruning_curves` for text: for each named importance map
    `[layer, head]` (higher = more important; NaN = least) the mean metric
    over the images after zeroing the least important 0, 10, …, 100% of the
    heads. Returns (fractions, {name: values}, the clean metric)."""
    from headscope.experiments.scoring import deterministic

    info = _check(model, ("ablation",), metric)
    batch, labels, _, _ = _scoring_batch(model, images)
    curves: dict[str, list[float]] = {}
    fractions: list[float] = []
    with deterministic(0):
        bound: Metric = resolve_metric(model, info.name, batch, label=labels)
        for name, order in orders.items():
            ranked = torch.nan_to_num(order.double(), nan=-torch.inf)
            fraction_tensor, values = pruning_curve(
                model, batch, ranked, metric=bound, mode=ablation_mode
            )
            fractions = [float(f) for f in fraction_tensor]
            curves[name] = [float(v) for v in values]
        clean = float(clean_metric(model, batch, metric=bound).mean())
    return fractions, curves, clean
