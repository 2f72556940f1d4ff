"""The Vision page: one image through a vision transformer (ViT, DeiT; the
built-in `toy-vit`), the landing page of a vision model (docs/methods.md §7, §7.7).

Pick one of toy-vit's held-out test canvases or upload an image
(`dashboard.images`: size and pixel limits, Pillow's bomb guard); the page
shows the prediction against chance, what [CLS] reads (attention rollout,
Abnar & Zuidema 2020, and gradient-weighted relevance, Chefer et al. 2021,
overlaid on the image: the classic ViT rollout figure), each head's [CLS]
attention for a chosen layer, mean attention distance per head (Dosovitskiy
et al. 2021), one head's attention by relative patch offset, and, as
background jobs, attention flow from [CLS] and head importance by ablation
over test canvases with a greedy pruning curve (Michel et al. 2019).

For a text model the page says it needs a vision model; for a vision model
the text pages say they need a text model (`pages_for`) and the navigation
shows only this page (`routes.in_navigation`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from dash import Dash, Input, Output, State, ctx, dcc, html, no_update
from jaxtyping import Bool, Float
from torch import Tensor

from headscope.analyses.vision import (
    PatchGeometry,
    class_token_flow,
    class_token_rollout,
    mean_attention_distance,
    offset_attention,
    region_share,
)
from headscope.dashboard import routes
from headscope.dashboard.background import job_options, on_death
from headscope.dashboard.components import card, graph, page_header, progress_block, stats_table
from headscope.dashboard.images import MAX_UPLOAD_BYTES, from_store, read_upload, to_store
from headscope.dashboard.inputs import as_int, choice
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession, PromptState
from headscope.errors import InputError, MissingExtraError
from headscope.experiments.vision import (
    IMAGE_METRICS,
    ScoringImage,
    classify,
    image_pruning_curves,
    image_relevance,
    score_image_heads,
)
from headscope.figures.heads import importance_heatmap, pruning_curve
from headscope.figures.style import message_figure
from headscope.figures.vision import (
    attention_distance_figure,
    head_overlays,
    image_overlay,
    offset_figure,
    overlay_panels,
)
from headscope.models.images import image_view
from headscope.models.loading import HeadscopeModel

#: Test canvases offered as samples (the first of toy-vit's held-out split).
N_SAMPLES = 12
#: How many test canvases the importance job may score.
IMAGE_COUNTS = (32, 64, 128, 360)
#: Largest token count attention flow is solved for (exact max-flow from [CLS]; 65
#: tokens and 3 layers take about 8 s on this project's 2-core machine).
MAX_FLOW_TOKENS = 100
#: Rollout's residual weight (the identity mixed into every layer).
RESIDUAL = 0.5
#: Classes listed in the prediction table.
TOP_CLASSES = 5
QUADRANT_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right")


def is_vision(session: ModelSession) -> bool:
    """Whether the session's model is a vision transformer."""
    return bool(getattr(session.spec, "is_vision", False))


# -- sample images ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """A held-out toy-vit test canvas: `pixels` `[16, 16]` in [0, 1], its digit
    `label` and the `quadrant` holding the digit (the region deciding the class)."""

    pixels: Float[np.ndarray, "height width"]
    label: int
    quadrant: int

    @property
    def title(self) -> str:
        return f"digit {self.label}, in the {QUADRANT_NAMES[self.quadrant]} quadrant"


@functools.lru_cache(maxsize=1)
def test_canvases() -> tuple[Sample, ...]:
    """toy-vit's 360 held-out test canvases (`models.vit_data.test_split`);
    empty without scikit-learn (its bundled digits are the data)."""
    from headscope.models import vit_data

    try:
        split = vit_data.test_split()
    except MissingExtraError:
        return ()
    return tuple(
        Sample(image.numpy().astype(np.float32), int(label), int(quadrant))
        for image, label, quadrant in zip(split.images, split.labels, split.quadrants, strict=True)
    )


def digit_classes(model: HeadscopeModel) -> bool:
    """Whether the model's classes are the ten digits (so a canvas's label is a class)."""
    return tuple(model.class_names or ()) == tuple(str(d) for d in range(10))


def quadrant_region(grid: tuple[int, int], quadrant: int) -> Bool[Tensor, "rows columns"]:
    """The patches of one quadrant of the image (0 top-left ... 3 bottom-right)."""
    rows, cols = grid
    row, col = divmod(quadrant, 2)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[row * rows // 2 : (row + 1) * rows // 2, col * cols // 2 : (col + 1) * cols // 2] = True
    return mask


def model_view(model: HeadscopeModel, image: object) -> Float[np.ndarray, "height width channel"]:
    """The image as the model sees it: converted to its channels and resized to
    its input size (`models.images.image_view`), before normalisation, in [0, 1]."""
    processing = model.image_processing
    if processing is None:
        raise InputError(f"{model.spec.name} is a text model: it takes prompts, not images")
    return image_view(image, processing)


def sample_store(model: HeadscopeModel, index: object) -> dict:
    """The page's store of test canvas `index`."""
    samples = test_canvases()
    if not samples:
        raise InputError(
            "no sample images: they need scikit-learn (pip install 'headscope[vision]')"
        )
    i = as_int(index)
    if i is None or not 0 <= i < min(N_SAMPLES, len(samples)):
        raise InputError(f"no sample {index!r}")
    sample = samples[i]
    return to_store(
        model_view(model, sample.pixels),
        name=f"test canvas #{i}: {sample.title}",
        source="sample",
        label=sample.label,
        region=sample.quadrant,
        original=(sample.pixels.shape[1], sample.pixels.shape[0]),
    )


def upload_store(model: HeadscopeModel, contents: object, filename: object) -> dict:
    """The page's store of an uploaded image (InputError for anything that is not one)."""
    decoded = read_upload(contents, filename)
    return to_store(
        model_view(model, decoded.pixels),
        name=decoded.name,
        source="upload",
        original=decoded.size,
    )


def image_line(model: HeadscopeModel, meta: dict) -> str:
    """One line about the current image (its name is user text: shown as text)."""
    size = model.spec.image_size
    original = meta.get("original")
    resized = ""
    if isinstance(original, list) and len(original) == 2 and tuple(original) != (size, size):
        resized = f", resized from {original[0]}×{original[1]}"
    where = "uploaded" if meta.get("source") == "upload" else "sample"
    return f"{where}: {meta['name']} · {size}×{size} px as the model sees it{resized}"


# -- per-image results -----------------------------------------------------------------------------


def image_state(session: ModelSession, store: object) -> tuple[PromptState, np.ndarray, dict]:
    """(the cached capture of the stored image, its pixels, its metadata). The
    capture (every head's map) is cached per image content in the session's LRU."""
    model = session.require_model()
    if not model.spec.is_vision:
        raise InputError(f"{model.spec.name} is a text model: this page needs a vision model")
    pixels, meta = from_store(store)
    size, channels = model.spec.image_size, model.spec.num_channels
    if pixels.shape != (size, size, channels):
        raise InputError("the page's image does not fit this model: pick or upload it again")
    key = "image:" + hashlib.sha256(pixels.tobytes()).hexdigest()

    def create() -> PromptState:
        from headscope.experiments.attention import capture

        with session.lock:
            record = capture(model, model.images(pixels))
        return PromptState(key, record)

    return session.prompts.get_or_create(key, create), pixels, meta


def _prediction(session: ModelSession, state: PromptState, pixels: np.ndarray):
    def compute():
        with session.lock:
            return classify(session.require_model(), pixels)

    return state.cached("prediction", compute)


def _relevance(session: ModelSession, state: PromptState, pixels: np.ndarray):
    def compute():
        with session.lock:
            return image_relevance(session.require_model(), pixels)

    return state.cached("relevance", compute)


def _share(patch_map: Tensor) -> Tensor:
    total = patch_map.double().clamp_min(0).sum()
    return patch_map.double().clamp_min(0) / total if total > 0 else patch_map.double()


def prediction_rows(model: HeadscopeModel, prediction, meta: dict) -> list[tuple[str, str]]:
    """The prediction table: top classes with probabilities, chance and support."""
    probabilities = prediction.probabilities[0]
    logits = prediction.logits[0]
    names = prediction.class_names
    n_classes = len(names)
    order = probabilities.argsort(descending=True)[:TOP_CLASSES].tolist()
    top = order[0]
    rows = [
        ("predicted class", f"{names[top]} (probability {float(probabilities[top]):.3f})"),
    ]
    for rank, k in enumerate(order, 1):
        rows.append(
            (
                f"#{rank}: class {names[k]}",
                f"probability {float(probabilities[k]):.4f} · logit {float(logits[k]):.2f}",
            )
        )
    rows.append(("chance (baseline)", f"{1 / n_classes:.3f}: uniform over {n_classes} classes"))
    label = meta.get("label")
    if label is not None and digit_classes(model):
        verdict = "correct" if label == top else "wrong"
        rows.append(("true label", f"{names[label]} ({verdict})"))
    rows.append(("support", "this one image, one forward pass (softmax of the class logits)"))
    return rows


def image_views(session: ModelSession, store: object) -> tuple:
    """(image line, prediction table, overlay figure, overlay notes, distance
    figure, distance note) for the stored image."""
    state, pixels, meta = image_state(session, store)
    model = session.require_model()
    geometry = PatchGeometry.of(model.spec)
    prediction = _prediction(session, state, pixels)
    rollout = class_token_rollout(state.record.pattern, geometry, residual=RESIDUAL)
    relevance = _relevance(session, state, pixels)
    target = prediction.class_names[relevance.target]
    maps = {
        "rollout from [CLS] (share of patches)": _share(rollout.patch_map),
        f"relevance for class {target} (share)": relevance.patch_map,
    }
    overlay = overlay_panels(pixels, maps)
    p = geometry.n_patches
    notes = [
        f"Rollout (Abnar & Zuidema 2020, residual {RESIDUAL}): [CLS]'s row after the last "
        f"layer sums to 1; {rollout.prefix_share:.1%} of it stays on [CLS], "
        f"{1 - rollout.prefix_share:.1%} reaches the {p} patches, drawn as shares of that part.",
        f"Relevance (Chefer et al. 2021): gradient-weighted attention for the logit of class "
        f"{target} (probability {relevance.probability:.3f}), as shares of the patch total.",
        f"Baseline: a map spread evenly gives every patch {1 / p:.4f}. Support: this one image.",
    ]
    region = meta.get("region")
    if region is not None and geometry.grid[0] % 2 == 0 and geometry.grid[1] % 2 == 0:
        mask = quadrant_region(geometry.grid, region)
        notes.append(
            f"Share on the {QUADRANT_NAMES[region]} quadrant, the digit's (only it decides "
            f"the class; uniform: 25%): rollout {region_share(rollout.patch_map, mask):.1%}, "
            f"relevance {region_share(relevance.patch_map, mask):.1%}."
        )
    distance = mean_attention_distance(state.record.pattern, geometry)
    distance_figure = attention_distance_figure(distance, title="", n_images=1)
    prefix = float(distance.prefix_mass.mean())
    distance_note = (
        f"Mean distance in pixels between a patch query and the patches it attends to, per "
        f"head, over the {distance.n_queries} patch queries of this image; dashed line: uniform "
        f"attention over the patches ({distance.uniform:.2f} px). Patch queries put "
        f"{prefix:.1%} of their attention on [CLS] on average (no distance)."
    )
    return (
        image_line(model, meta),
        stats_table(prediction_rows(model, prediction, meta), name="vision-prediction"),
        overlay,
        [html.P(note, className="hs-note") for note in notes],
        distance_figure,
        distance_note,
    )


def head_grid(session: ModelSession, store: object, layer: object):
    """(figure, note): every head's attention from [CLS] to the patches in `layer`."""
    state, pixels, _ = image_state(session, store)
    spec = session.require_model().spec
    chosen = as_int(layer)
    if chosen is None or not 0 <= chosen < spec.n_layers:
        chosen = spec.n_layers - 1
    geometry = PatchGeometry.of(spec)
    rows = state.record.pattern[chosen, :, 0, :].double()
    maps = geometry.to_grid(rows)[None]
    figure = head_overlays(
        pixels,
        maps,
        title=f"Layer {chosen}: each head's attention from [CLS] to the patches",
        what="attention from [CLS]",
        layer_index=[chosen],
    )
    on_prefix = rows[:, : geometry.n_prefix].sum(-1)
    shares = ", ".join(f"H{h} {float(v):.0%}" for h, v in enumerate(on_prefix))
    note = (
        f"One colour scale for all heads; uniform attention gives every token "
        f"{1 / geometry.n_tokens:.4f}. Attention [CLS] keeps on prefix tokens: {shares}. "
        "Support: this one image."
    )
    return figure, note


def head_options(spec) -> list[dict]:
    return [
        {"label": f"layer {layer}, head {head}", "value": f"{layer}.{head}"}
        for layer in range(spec.n_layers)
        for head in range(spec.n_heads)
    ]


def parse_head(value: object, spec) -> tuple[int, int]:
    """(layer, head) of a "layer.head" picker value; layer 0, head 0 otherwise."""
    if isinstance(value, str) and value.count(".") == 1:
        layer, head = (as_int(part) for part in value.split("."))
        valid = layer is not None and head is not None
        if valid and 0 <= layer < spec.n_layers and 0 <= head < spec.n_heads:
            return layer, head
    return 0, 0


def offset_view(session: ModelSession, store: object, head: object):
    """(figure, note): one head's attention by relative patch offset."""
    state, _, _ = image_state(session, store)
    spec = session.require_model().spec
    layer, head_i = parse_head(head, spec)
    geometry = PatchGeometry.of(spec)
    offsets = offset_attention(state.record.pattern[layer, head_i], geometry)
    figure = offset_figure(offsets, layer=layer, head=head_i, relative=True)
    dy, dx = (int(v) for v in offsets.peak())
    mass = float(offsets.at(dy, dx))
    rows, cols = geometry.grid
    uniform = float(offsets.uniform[dy + rows - 1, dx + cols - 1])
    support = int(offsets.support[dy + rows - 1, dx + cols - 1])
    note = (
        f"Colour: attention mass at each offset ÷ its mass under uniform attention over the "
        f"patches (1 = no preference). Peak at dy {dy}, dx {dx}: mass {mass:.3f} against "
        f"{uniform:.4f} uniform, over the {support} patch queries that have a patch there "
        "(this one image)."
    )
    return figure, note


def flow_view(session: ModelSession, store: object, progress=None):
    """(figure, note): attention flow from [CLS] (exact max-flow; slow, a background job)."""
    state, pixels, meta = image_state(session, store)
    spec = session.require_model().spec
    geometry = PatchGeometry.of(spec)
    if geometry.n_tokens > MAX_FLOW_TOKENS:
        text = (
            f"Attention flow is solved for up to {MAX_FLOW_TOKENS} tokens; this model has "
            f"{geometry.n_tokens}: use rollout above."
        )
        return message_figure(text, height=340), text
    if progress is not None:
        progress(0, 1, "solving max-flow from [CLS]…")
    flow = state.cached(
        ("flow", RESIDUAL), lambda: class_token_flow(state.record.pattern, geometry)
    )
    figure = image_overlay(pixels, _share(flow.patch_map), what="flow share from [CLS]", height=360)
    note = (
        f"Attention flow (Abnar & Zuidema 2020, residual {RESIDUAL}): max-flow from [CLS] "
        f"after the last layer to every input token, the row normalised to 1; "
        f"{flow.prefix_share:.1%} on [CLS], the rest drawn as shares of the "
        f"{geometry.n_patches} patches (uniform {1 / geometry.n_patches:.4f})."
    )
    region = meta.get("region")
    if region is not None and geometry.grid[0] % 2 == 0 and geometry.grid[1] % 2 == 0:
        mask = quadrant_region(geometry.grid, region)
        note += f" On the digit's quadrant: {region_share(flow.patch_map, mask):.1%} (uniform 25%)."
    return figure, note


def importance_views(session: ModelSession, metric: object, count: object, progress=None) -> tuple:
    """(importance heat map, pruning curve, message): single-head ablation over
    the first `count` test canvases, scored on `metric` (class logit of each
    canvas's label, or accuracy), with bootstrap intervals over the images, and
    the greedy pruning curve ordered by it."""
    model = session.require_model()
    metric_name = choice(metric, IMAGE_METRICS, "class_logit")
    n = choice(as_int(count), IMAGE_COUNTS, IMAGE_COUNTS[0])
    samples = test_canvases()[:n]
    if not samples:
        raise InputError("no test images: they need scikit-learn (pip install 'headscope[vision]')")
    labelled = digit_classes(model)
    images = [
        ScoringImage(s.pixels, s.label if labelled else None, f"test-{i}")
        for i, s in enumerate(samples)
    ]
    report = progress or (lambda done, total, label: None)
    with session.lock:
        scores = score_image_heads(
            model, images, methods=("ablation",), metric=metric_name, progress=report
        )
    interval = scores.interval("ablation")
    mean = scores.mean("ablation")
    unit = "Δ logit" if metric_name == "class_logit" else "Δ accuracy"
    heatmap = importance_heatmap(
        mean,
        title=f"Harm to the {metric_name.replace('_', ' ')} when one head is zeroed",
        colorbar_title=unit,
        interval=(interval.low, interval.high),
        support=f"{interval.level:.0%} bootstrap over {len(images)} images",
    )
    report(90, 100, "pruning curve…")
    with session.lock:
        fractions, curves, clean = image_pruning_curves(
            model, images, {"ablation": mean}, metric=metric_name
        )
    chance = 1 / model.spec.d_vocab
    title = "Greedy pruning curve" + (
        f" (chance {chance:.2f})" if metric_name == "accuracy" else ""
    )
    curve = pruning_curve(
        fractions,
        {f"by {name}": values for name, values in curves.items()},
        metric_name=metric_name.replace("_", " "),
        baseline=clean,
        title=title,
    )
    source = "their labels" if labelled else "the model's own predictions (no labels)"
    top = torch.nan_to_num(mean.double(), nan=-torch.inf).flatten().argmax()
    layer, head = divmod(int(top), model.spec.n_heads)
    message = (
        f"{len(images)} held-out test canvases scored on {source} · metric: "
        f"{scores.metric.name} ({scores.metric.description}; {scores.metric.better}) · all "
        f"heads: {clean:.3f} · most important: layer {layer}, head {head} "
        f"({float(mean[layer, head]):.3f}, interval {float(interval.low[layer, head]):.3f} to "
        f"{float(interval.high[layer, head]):.3f})"
    )
    return heatmap, curve, alert(message, kind="info")


# -- layout --------------------------------------------------------------------------------------


def needs_vision(session: ModelSession) -> list:
    name = session.spec.name if session.spec is not None else session.name
    return [
        *page_header("Vision", "Images through a vision transformer.", "vis-message"),
        card(
            None,
            alert(
                f"This page needs a vision model (ViT, DeiT); {name} reads text. Start the "
                "dashboard with --model toy-vit, or a ViT directory saved with save_pretrained.",
                kind="info",
            ),
        ),
    ]


def needs_text(session: ModelSession, page: routes.Page) -> list:
    """A text page's content for a vision model."""
    return [
        *page_header(page.title, page.description, f"{page.kind}-needs-text"),
        card(
            None,
            alert(
                f"The {page.title} page reads text prompts; {session.spec.name} is a vision "
                "model. Its views are on the Vision page.",
                kind="info",
            ),
            dcc.Link("Open the Vision page", href=routes.VISION.path),
        ),
    ]


def pages_for(session: ModelSession, pages: dict) -> dict:
    """The page layouts the router serves: unchanged for a text model; for a
    vision model the Vision page at / and /vision, and every text page says it
    needs a text model."""
    if not is_vision(session):
        return pages
    routed = {kind: functools.partial(needs_text, session, page) for kind, page in _pages()}
    routed["overview"] = pages["vision"]
    routed["vision"] = pages["vision"]
    return routed


def _pages():
    return [(page.kind, page) for page in routes.NAV_PAGES]


def layout(session: ModelSession) -> list:
    if not is_vision(session):
        return needs_vision(session)
    spec = session.spec
    samples = test_canvases()[:N_SAMPLES]
    options = [
        {"label": f"test canvas #{i}: {sample.title}", "value": i}
        for i, sample in enumerate(samples)
    ]
    return [
        *page_header(
            "Vision",
            f"One image through {spec.name}: {spec.n_layers} layers × {spec.n_heads} heads, "
            f"{spec.patch_grid[0]}×{spec.patch_grid[1]} patches of {spec.patch_size} px "
            "after [CLS].",
            "vis-message",
        ),
        dcc.Store(id="vis-image", storage_type="memory"),
        card(
            "Image",
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("Sample (toy-vit's held-out test canvases)"),
                            dcc.Dropdown(
                                id="vis-sample",
                                options=options,
                                value=0 if options else None,
                                placeholder="pick a test canvas",
                                clearable=False,
                                style={"minWidth": "340px"},
                            ),
                        ],
                    ),
                    dcc.Upload(
                        html.Div(["Drop an image here or ", html.A("choose a file")]),
                        id="vis-upload",
                        accept="image/*",
                        max_size=MAX_UPLOAD_BYTES,
                        multiple=False,
                        className="hs-upload",
                        style={
                            "border": "1px dashed #9aa3b2",
                            "borderRadius": "6px",
                            "padding": "10px 16px",
                            "cursor": "pointer",
                        },
                    ),
                ],
                style={"display": "flex", "gap": "16px", "alignItems": "end", "flexWrap": "wrap"},
            ),
            html.P(id="vis-image-line", className="hs-note"),
            note=(
                "Uploads: PNG, JPEG, GIF, BMP, WebP or TIFF up to "
                f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MiB; converted to the model's "
                f"{spec.num_channels} channel(s) and resized to {spec.image_size}×"
                f"{spec.image_size} px. toy-vit reads bright ink on a dark background."
            ),
        ),
        html.Div(
            [
                card(
                    "Rollout and relevance from [CLS]",
                    graph("vis-overlay", message="pick an image", height=340),
                    html.Div(id="vis-overlay-notes"),
                ),
                card("Prediction", html.Div(id="vis-prediction")),
            ],
            className="hs-grid-main",
        ),
        card(
            "Heads of one layer",
            dcc.Dropdown(
                id="vis-layer",
                options=[{"label": f"layer {i}", "value": i} for i in range(spec.n_layers)],
                value=spec.n_layers - 1,
                clearable=False,
                style={"maxWidth": "200px"},
            ),
            graph("vis-heads", message="pick an image", height=300),
            html.P(id="vis-heads-note", className="hs-note"),
        ),
        html.Div(
            [
                card(
                    "Attention flow from [CLS]",
                    progress_block("vis-flow"),
                    graph("vis-flow", message="solving max-flow…", height=380),
                    html.P(id="vis-flow-note", className="hs-note"),
                ),
                card(
                    "Attention by relative patch offset",
                    dcc.Dropdown(
                        id="vis-head",
                        options=head_options(spec),
                        value="0.0",
                        clearable=False,
                        style={"maxWidth": "240px"},
                    ),
                    graph("vis-offset", message="pick an image", height=380),
                    html.P(id="vis-offset-note", className="hs-note"),
                ),
            ],
            className="hs-grid-2",
        ),
        card(
            "Head importance",
            html.Div(
                [
                    dcc.Dropdown(
                        id="vis-imp-metric",
                        options=[
                            {"label": "class logit (higher better)", "value": "class_logit"},
                            {"label": "accuracy (higher better)", "value": "accuracy"},
                        ],
                        value="class_logit",
                        clearable=False,
                        style={"minWidth": "240px"},
                    ),
                    dcc.Dropdown(
                        id="vis-imp-count",
                        options=[{"label": f"{n} test images", "value": n} for n in IMAGE_COUNTS],
                        value=IMAGE_COUNTS[1],
                        clearable=False,
                        style={"minWidth": "180px"},
                    ),
                    html.Button("Score heads", id="vis-imp-run", className="hs-button", n_clicks=0),
                ],
                style={"display": "flex", "gap": "10px", "alignItems": "center"},
            ),
            progress_block("vis-imp"),
            html.Div(id="vis-imp-message"),
            html.Div(
                [
                    graph("vis-imp-heatmap", message="press Score heads", height=320),
                    graph("vis-imp-pruning", message="press Score heads", height=340),
                ],
                className="hs-grid-2",
            ),
            note=(
                "Single-head ablation (z zeroed) over held-out test canvases, on each canvas's "
                "label; intervals: percentile bootstrap over the images; pruning removes the "
                "least important heads first (Michel et al. 2019)."
            ),
        ),
        card(
            "Mean attention distance",
            graph("vis-distance", message="pick an image", height=360),
            html.P(id="vis-distance-note", className="hs-note"),
        ),
    ]


# -- callbacks -----------------------------------------------------------------------------------


def choose_image(
    session: ModelSession, trigger: object, sample: object, contents: object, filename: object
) -> tuple:
    """(store, message, sample picker) after a sample pick or an upload; an
    upload clears the picker; a refused upload keeps the current image and says why."""
    model = session.require_model()
    if trigger == "vis-upload":
        if contents is None:
            return no_update, no_update, no_update
        return upload_store(model, contents, filename), None, None
    if sample is None:
        return no_update, no_update, no_update
    return sample_store(model, sample), None, no_update


def _blank(message: str) -> object:
    return message_figure(message, height=300)


def register(app: Dash, session: ModelSession, manager) -> None:
    @app.callback(
        Output("vis-image", "data"),
        Output("vis-message", "children"),
        Output("vis-sample", "value"),
        Input("vis-sample", "value"),
        Input("vis-upload", "contents"),
        State("vis-upload", "filename"),
    )
    @guarded(
        lambda m: (no_update, alert(f"The image was not used: {m}"), no_update), "reading the image"
    )
    def _choose(sample, contents, filename):
        return choose_image(session, ctx.triggered_id, sample, contents, filename)

    @app.callback(
        Output("vis-image-line", "children"),
        Output("vis-prediction", "children"),
        Output("vis-overlay", "figure"),
        Output("vis-overlay-notes", "children"),
        Output("vis-distance", "figure"),
        Output("vis-distance-note", "children"),
        Input("vis-image", "data"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: ("", alert(m), _blank(m), None, _blank(m), ""), "the image views")
    def _views(store):
        return image_views(session, store)

    @app.callback(
        Output("vis-heads", "figure"),
        Output("vis-heads-note", "children"),
        Input("vis-image", "data"),
        Input("vis-layer", "value"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: (_blank(m), ""), "the head grid")
    def _heads(store, layer):
        return head_grid(session, store, layer)

    @app.callback(
        Output("vis-offset", "figure"),
        Output("vis-offset-note", "children"),
        Input("vis-image", "data"),
        Input("vis-head", "value"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: (_blank(m), ""), "the offset map")
    def _offset(store, head):
        return offset_view(session, store, head)

    @app.callback(
        Output("vis-flow", "figure"),
        Output("vis-flow-note", "children"),
        Input("vis-image", "data"),
        **job_options("vis-flow", manager, run_button=False),
    )
    @on_death(lambda m: (_blank(m), m), "the flow job")
    def _flow(set_progress, store):
        def report(done, total, label):
            set_progress((str(done), str(total), label))

        try:
            return flow_view(session, store, report)
        except Exception as error:
            message = describe(error, "attention flow")
            return _blank(message), message

    @app.callback(
        Output("vis-imp-heatmap", "figure"),
        Output("vis-imp-pruning", "figure"),
        Output("vis-imp-message", "children"),
        Input("vis-imp-run", "n_clicks"),
        State("vis-imp-metric", "value"),
        State("vis-imp-count", "value"),
        **job_options("vis-imp", manager),
    )
    @on_death(lambda m: (_blank(m), _blank(m), alert(m)), "the importance job")
    def _importance(set_progress, _clicks, metric, count):
        def report(done, total, label):
            set_progress((str(done), str(total), label))

        try:
            return importance_views(session, metric, count, report)
        except Exception as error:
            message = describe(error, "head importance")
            return _blank(message), _blank(message), alert(message)
