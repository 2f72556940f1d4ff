# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Vision transformers: attention over image patches
#
# A vision transformer (Dosovitskiy et al. 2021, *An Image is Worth 16x16 Words*) cuts an
# image into patches and reads them as tokens after a [CLS] token, whose final state is
# classified. The views here follow Li et al. 2023 (*How Does Attention Work in Vision
# Transformers? A Visual Analytics Attempt*):
#
# 1. what [CLS] reads from the image: attention rollout and flow (Abnar & Zuidema 2020)
#    and gradient-weighted relevance (Chefer et al. 2021) overlaid on the image;
# 2. each head's attention from [CLS] to the patches;
# 3. how far heads attend (mean attention distance, against uniform attention);
# 4. which heads attend to a fixed neighbour (attention by relative patch offset);
# 5. which heads matter (single-head ablation on the class logit, with intervals) and a
#    pruning curve;
# 6. the same over a folder of images, as a report.
#
# The model is the built-in `toy-vit` (3 layers × 4 heads, 16×16 grayscale images, 2×2
# patches): it classifies scikit-learn's digits placed in one quadrant of a canvas whose
# other quadrants hold shuffled, dimmer distractors, so the region that decides the class
# is known for every image.

# %%
import tempfile
import warnings
from dataclasses import replace

import plotly.io as pio
import torch

import headscope as hs
from headscope.analyses.vision import (
    PatchGeometry,
    class_token_flow,
    class_token_rollout,
    mean_attention_distance,
    offset_attention,
    region_share,
)
from headscope.experiments.attention import capture
from headscope.experiments.vision import (
    ScoringImage,
    classify,
    image_pruning_curves,
    image_relevance,
    score_image_heads,
)
from headscope.figures import heads as head_figures
from headscope.figures import vision as vision_figures
from headscope.models import vit_data

pio.renderers.default = "plotly_mimetype"  # figures as JSON: no browser, no CDN
warnings.filterwarnings("ignore", category=UserWarning)
torch.set_num_threads(1)

model = hs.load_model("toy-vit")
test = vit_data.test_split()
geometry = PatchGeometry.of(model.spec)
print(model.spec.name, model.spec.patch_grid, "patches of", model.spec.patch_size, "px")

# %% [markdown]
# ## Accuracy on the held-out canvases
#
# The model card gives the test accuracy of the 360 held-out canvases; chance is 1/10.

# %%
prediction = classify(model, test.images)
accuracy = float((prediction.top == test.labels).double().mean())
print(f"test accuracy {accuracy:.4f} over {len(test.labels)} canvases (chance 0.1)")
assert accuracy > 0.9

# %% [markdown]
# ## What [CLS] reads: rollout, flow and relevance on the image
#
# Rollout multiplies the layers' head-averaged attention, each mixed with the identity
# (the residual stream): [CLS]'s row sums to 1 over [CLS] and the patches. The digit's
# quadrant is a quarter of the image: a map that ignored the content would put 25% there.

# %%
index = 0
image = test.images[index]
quadrant = int(test.quadrants[index])
record = capture(model, model.images(image))
print(record.tokens[:4], "…", len(record.tokens), "tokens")

rollout = class_token_rollout(record.pattern, geometry)
flow = class_token_flow(record.pattern, geometry)
relevance = image_relevance(model, image)
assert abs(float(rollout.values.sum()) - 1.0) < 1e-6  # a row of a product of stochastic matrices

region = torch.zeros(geometry.grid, dtype=torch.bool)
row, col = divmod(quadrant, 2)
region[row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] = True
for name, patch_map in (
    ("rollout", rollout.patch_map),
    ("flow", flow.patch_map),
    ("relevance", relevance.patch_map),
):
    print(f"{name:9s} share on the digit's quadrant: {region_share(patch_map, region):.1%}")
assert region_share(relevance.patch_map, region) > 0.5


def shares(patch_map):
    return patch_map / patch_map.sum()


vision_figures.overlay_panels(
    image,
    {
        "rollout from [CLS]": shares(rollout.patch_map),
        "flow from [CLS]": shares(flow.patch_map),
        f"relevance, class {relevance.target}": relevance.patch_map,
    },
    title=f"digit {int(test.labels[index])}, predicted {relevance.predicted}",
)

# %% [markdown]
# ## Each head's attention from [CLS]
#
# One layer's heads side by side, on one colour scale (uniform attention: 1/65 per token).

# %%
last = model.spec.n_layers - 1
cls_rows = record.pattern[last, :, 0, :]
vision_figures.head_overlays(
    image, geometry.to_grid(cls_rows)[None], layer_index=[last], title=f"layer {last}"
)

# %% [markdown]
# ## How far heads attend
#
# Mean attention distance: for each patch query, Σ_k A[q, k]·‖pos(q) − pos(k)‖ over the
# patch keys, averaged over the queries. Known answers: a head attending each patch to
# itself has distance 0; uniform attention over the patches gives the dashed baseline.

# %%
eye = torch.zeros(geometry.n_tokens, geometry.n_tokens)
eye[range(geometry.n_tokens), range(geometry.n_tokens)] = 1.0
assert float(mean_attention_distance(eye, geometry).distance) == 0.0

batch = model.images(test.images[:64])
maps = capture(model, batch).pattern  # [image, layer, head, query, key]
distance = mean_attention_distance(maps, geometry)
vision_figures.attention_distance_figure(distance, n_images=64)

# %% [markdown]
# ## Attention by relative patch offset
#
# The mass a patch query puts on the patch at (dy, dx) from it, divided by what uniform
# attention would put there (1 = no preference). A head that attends to a fixed neighbour
# shows one bright cell.

# %%
offsets = offset_attention(maps.mean(0), geometry)  # [layer, head, dy, dx], mean over images
dy, dx = offsets.peak()
for layer in range(model.spec.n_layers):
    print(
        f"layer {layer}: peak offsets (dy, dx) per head",
        [(int(dy[layer, h]), int(dx[layer, h])) for h in range(model.spec.n_heads)],
    )
vision_figures.offset_figure(
    replace(offsets, mass=offsets.mass[0, 0]), layer=0, head=0, relative=True
)

# %% [markdown]
# ## Which heads matter
#
# Single-head ablation (the head's output z zeroed) on the logit of each image's label,
# averaged over 64 held-out canvases with percentile-bootstrap intervals; the greedy
# pruning curve then removes the least important heads first (Michel et al. 2019).

# %%
images = [ScoringImage(test.images[i], int(test.labels[i])) for i in range(64)]
scores = score_image_heads(model, images, methods=("ablation",), metric="class_logit")
importance = scores.mean("ablation")
interval = scores.interval("ablation")
top = importance.flatten().argsort(descending=True)[:3].tolist()
print("most important heads:", [divmod(i, model.spec.n_heads) for i in top])
head_figures.importance_heatmap(
    importance,
    title="harm to the class logit when one head is zeroed",
    colorbar_title="Δ logit",
    interval=(interval.low, interval.high),
    support="95% bootstrap over 64 images",
)

# %%
fractions, curves, clean = image_pruning_curves(
    model, images, {"ablation": importance}, metric="accuracy"
)
assert abs(curves["ablation"][0] - clean) < 1e-9  # nothing pruned: the clean accuracy
head_figures.pruning_curve(fractions, curves, metric_name="accuracy", baseline=clean)

# %% [markdown]
# ## A report over a folder of images
#
# `headscope vision-report --model toy-vit --images DIR` does all of the above over a
# folder: class-named sub-folders (or a `labels.csv`) give labels. Here, 24 test canvases
# written as PNGs into a temporary folder.

# %%
from headscope.reports.vision import vision_report, write_test_canvases

with tempfile.TemporaryDirectory() as scratch:
    folder = write_test_canvases(f"{scratch}/digits", 24)
    _, _, report = vision_report(model, folder, f"{scratch}/report", overlays=1)
document = report.document
print(
    f"accuracy {document['accuracy']['value']:.3f} "
    f"(95% Wilson interval {document['accuracy']['interval'][0]:.3f}–"
    f"{document['accuracy']['interval'][1]:.3f}) over {document['n_images']} images"
)
report.figures["overlay-0"]
