"""Vision experiments on toy-vit: relevance lands on the quadrant that decides
the class; head scores and pruning curves agree with forwards run by hand."""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.analyses.vision import region_share
from headscope.errors import InputError
from headscope.experiments.scoring import pruning_curves, score_heads
from headscope.experiments.vision import (
    ScoringImage,
    classify,
    image_relevance,
)
from headscope.models import vit_data
from headscope.probes.run import run

N_IMAGES = 16


@pytest.fixture(scope="module")
def toy_vit():
    return hs.load_model("toy-vit")


@pytest.fixture(scope="module")
def test_split():
    return vit_data.test_split()


def _quadrant_mask(quadrant: int) -> torch.Tensor:
    """The 4×4 block of the 8×8 patch grid under a 16×16 canvas quadrant."""
    mask = torch.zeros(8, 8, dtype=torch.bool)
    row, col = divmod(quadrant, 2)
    mask[row * 4 : (row + 1) * 4, col * 4 : (col + 1) * 4] = True
    return mask


def test_relevance_puts_most_mass_on_the_quadrant_that_decides_the_class(toy_vit, test_split):
    """Only the digit's quadrant decides the class (the others hold shuffled
    digits); it is a quarter of the patches, so a uniform map gives 0.25."""
    shares, hits = [], []
    for i in range(N_IMAGES):
        quadrant = int(test_split.quadrants[i])
        relevance = image_relevance(toy_vit, test_split.images[i])
        assert relevance.patch_map.shape == (8, 8)
        assert float(relevance.patch_map.sum()) == pytest.approx(1.0)
        shares.append(region_share(relevance.patch_map, _quadrant_mask(quadrant)))
        by_quadrant = [region_share(relevance.patch_map, _quadrant_mask(q)) for q in range(4)]
        hits.append(max(range(4), key=by_quadrant.__getitem__) == quadrant)
    assert sum(hits) >= 0.9 * N_IMAGES, hits
    assert sorted(shares)[N_IMAGES // 2] > 0.5, shares  # the median


def test_moving_the_digit_moves_the_relevance(toy_vit):
    """The same digit and distractors, the digit in each quadrant in turn."""
    digits, labels = vit_data.digits()
    _, test = vit_data.split()
    digit = digits[test[:1]]
    distractors = 0.5 * digits[test[1:4]].reshape(1, 3, 8, 8).flip(-1).transpose(-1, -2)
    for quadrant in range(4):
        canvas = vit_data.place(digit, torch.tensor([quadrant]), distractors)[0]
        relevance = image_relevance(toy_vit, canvas, target=int(labels[test[0]]))
        assert region_share(relevance.patch_map, _quadrant_mask(quadrant)) > 0.5


def test_relevance_explains_the_asked_class(toy_vit, test_split):
    image = test_split.images[0]
    relevance = image_relevance(toy_vit, image, target=3)
    prediction = classify(toy_vit, image)
    assert relevance.target == 3
    assert relevance.predicted == int(prediction.top[0])
    assert relevance.logit == pytest.approx(float(prediction.logits[0, 3]), abs=1e-5)
    with pytest.raises(InputError, match="outside"):
        image_relevance(toy_vit, image, target=10)


def _class_logits_with_gates(model, batch, gates):
    with hs.gate_heads(model, gates), torch.no_grad():
        return run(model, batch).output.logits


def test_ablation_scores_equal_class_logit_changes_by_hand(toy_vit, test_split):
    images = [ScoringImage(test_split.images[i], int(test_split.labels[i])) for i in range(8)]
    scores = score_heads(toy_vit, images, methods=("ablation",), metric="class_logit")
    assert scores.metric.name == "class_logit" and scores.prompt_targets == ("label",) * 8
    batch = toy_vit.tokenize(test_split.images[:8])
    labels = test_split.labels[:8]
    clean = _class_logits_with_gates(toy_vit, batch, torch.ones(3, 4))
    clean_logit = clean.gather(-1, labels[:, None])[:, 0]
    torch.testing.assert_close(scores.clean.float(), clean_logit.float(), atol=1e-4, rtol=0)
    ranking = scores.methods["ablation"].ranking()
    for layer, head, _ in ranking[:3]:
        gates = torch.ones(3, 4)
        gates[layer, head] = 0.0
        ablated = _class_logits_with_gates(toy_vit, batch, gates).gather(-1, labels[:, None])[:, 0]
        # Harm = clean − ablated for a higher-is-better metric, mean over images.
        expected = float((clean_logit - ablated).mean())
        assert float(scores.mean("ablation")[layer, head]) == pytest.approx(expected, abs=1e-4)


def test_pruning_curve_ends_match_forwards_by_hand(toy_vit, test_split):
    images = [ScoringImage(test_split.images[i], int(test_split.labels[i])) for i in range(24)]
    order = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    fractions, curves, clean = pruning_curves(toy_vit, images, {"index": order}, metric="accuracy")
    batch = toy_vit.tokenize(test_split.images[:24])
    labels = test_split.labels[:24]
    everything = _class_logits_with_gates(toy_vit, batch, torch.ones(3, 4))
    nothing = _class_logits_with_gates(toy_vit, batch, torch.zeros(3, 4))
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert clean == pytest.approx(float((everything.argmax(-1) == labels).float().mean()))
    assert curves["index"][0] == pytest.approx(clean)
    assert curves["index"][-1] == pytest.approx(
        float((nothing.argmax(-1) == labels).float().mean())
    )


def test_gating_on_the_class_logit_and_refusals(toy_vit, test_split):
    images = [test_split.images[i] for i in range(2)]
    reports = []
    scores = score_heads(
        toy_vit,
        images,
        methods=("chg", "gradient"),
        metric="class_logit",
        chg_seeds=1,
        chg_steps=2,
        progress=lambda done, total, label: reports.append((done, total, label)),
    )
    # progress within each method too: CHG's steps; the gradient's start, then one per image
    done = [d for d, _, _ in reports]
    assert done == sorted(done) and reports[-1] == (200, 200, "done")
    assert any(label.startswith("causal head gating: step 2/") for *_, label in reports)
    assert [d for d, _, label in reports if label == "gradient…"] == [100, 150, 200]
    assert scores.methods["chg"].scores.shape == (1, 3, 4)
    assert scores.methods["gradient"].scores.shape == (2, 3, 4)
    assert scores.prompt_targets == ("predicted", "predicted")
    with pytest.raises(InputError, match="piecewise constant"):
        score_heads(toy_vit, images, methods=("chg",), metric="accuracy")
    with pytest.raises(InputError, match="does not apply to an image classifier"):
        score_heads(toy_vit, images, methods=("ablation",), metric="loss")
    with pytest.raises(InputError, match="do not run on images"):
        score_heads(toy_vit, images, methods=("attribution",), metric="class_logit")


def test_rollout_from_cls_on_toy_vit_sums_to_one(toy_vit, test_split):
    from headscope.analyses.flow import rollout
    from headscope.analyses.vision import PatchGeometry, class_token_rollout

    record = hs.capture(toy_vit, test_split.images[0])
    geometry = PatchGeometry.of(record.spec)
    assert geometry == PatchGeometry((8, 8), 2, 1)
    full = rollout(record.pattern)[-1]  # [token, token], every row
    torch.testing.assert_close(full.sum(-1), torch.ones(65, dtype=torch.float64))
    from_cls = class_token_rollout(record.pattern, geometry)
    assert float(from_cls.values.sum()) == pytest.approx(1.0, abs=1e-6)  # float32 maps
    assert float(from_cls.patch_map.sum()) + from_cls.prefix_share == pytest.approx(1.0)
