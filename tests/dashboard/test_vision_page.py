"""The Vision page on toy-vit: its payloads against an independent run of the
Hugging Face model (eager attention, the processor's normalisation by hand),
the dashboard mode of a vision model (Vision page at /, text pages hidden and
refusing text), and, in Chromium, an uploaded image reaching the overlay."""

from __future__ import annotations

import base64
import csv
import io
import os
import time

import numpy as np
import pytest
import torch
from browser_wait import until

import headscope as hs
from headscope.dashboard import routes, shell, vision
from headscope.dashboard.app import create_app
from headscope.dashboard.session import ModelSession
from headscope.errors import InputError

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def vit():
    return hs.load_model("toy-vit")


@pytest.fixture(scope="module")
def vit_session(vit):
    return ModelSession(vit)


@pytest.fixture(scope="module")
def hf_vit():
    from transformers import ViTForImageClassification

    from headscope.models.zoo import BUILTINS

    path = BUILTINS["toy-vit"].path()
    return ViTForImageClassification.from_pretrained(path, attn_implementation="eager").eval()


def hf_run(hf_vit, canvas: np.ndarray):
    """(attention [layer, head, query, key], probabilities [class]) straight from
    Hugging Face, with toy-vit's processor (mean 0.5, std 0.5) applied by hand."""
    pixels = torch.as_tensor((canvas - 0.5) / 0.5, dtype=torch.float32)[None, None]
    with torch.no_grad():
        out = hf_vit(pixel_values=pixels, output_attentions=True)
    return torch.stack([a[0] for a in out.attentions]).double(), out.logits[0].softmax(-1)


def reference_rollout_row(attention: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """[CLS]'s row of Abnar & Zuidema's rollout: Â_l = (1 − r)·mean_h A_l + r·I, Â_L ⋯ Â_1."""
    n = attention.shape[-1]
    product = torch.eye(n, dtype=torch.float64)
    for layer in attention:
        product = ((1 - residual) * layer.mean(0) + residual * torch.eye(n)) @ product
    return product[0]


def heatmaps(figure) -> list[np.ndarray]:
    return [np.asarray(trace.z, dtype=float) for trace in figure.data if trace.type == "heatmap"]


def png_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# -- payloads ------------------------------------------------------------------------------------


def test_the_prediction_and_rollout_overlay_match_hugging_face(vit_session, hf_vit):
    sample = vision.test_canvases()[0]
    store = vision.sample_store(vit_session.model, 0)
    line, table, overlay, notes, *_ = vision.image_views(vit_session, store)
    assert "test canvas #0" in line
    attention, probabilities = hf_run(hf_vit, sample.pixels)
    top = int(probabilities.argmax())
    text = str(table)
    assert f"{top} (probability {float(probabilities[top]):.3f})" in text
    assert "chance (baseline)" in text and "0.100" in text
    verdict = "correct" if top == sample.label else "wrong"
    assert f"{sample.label} ({verdict})" in text

    row = reference_rollout_row(attention)
    assert float(row.sum()) == pytest.approx(1.0, abs=1e-6)  # rollout rows sum to 1
    patches = row[1:].reshape(8, 8)
    rollout_z, relevance_z = heatmaps(overlay)
    np.testing.assert_allclose(rollout_z, (patches / patches.sum()).numpy(), atol=1e-5)
    assert relevance_z.sum() == pytest.approx(1.0, abs=1e-5)
    assert f"{float(row[0]):.1%} of it stays on [CLS]" in str(notes)


def test_the_rollout_and_relevance_favour_the_digits_quadrant(vit_session):
    """toy-vit's canvases: only the digit's quadrant decides the class (uniform 25%)."""
    store = vision.sample_store(vit_session.model, 0)
    overlay = vision.image_views(vit_session, store)[2]
    region = vision.quadrant_region((8, 8), vision.test_canvases()[0].quadrant).numpy()
    for z in heatmaps(overlay):
        assert z[region].sum() / z.sum() > 0.4


def test_the_head_grid_shows_each_heads_cls_row(vit_session, hf_vit):
    store = vision.sample_store(vit_session.model, 1)
    attention, _ = hf_run(hf_vit, vision.test_canvases()[1].pixels)
    figure, note = vision.head_grid(vit_session, store, 1)
    assert "uniform attention gives every token 0.0154" in note  # 1/65
    grids = heatmaps(figure)
    assert len(grids) == 4
    for head, z in enumerate(grids):
        np.testing.assert_allclose(z, attention[1, head, 0, 1:].reshape(8, 8).numpy(), atol=1e-6)
    # A layer outside the model falls back to the last one.
    last = heatmaps(vision.head_grid(vit_session, store, 99)[0])[0]
    np.testing.assert_allclose(last, attention[2, 0, 0, 1:].reshape(8, 8).numpy(), atol=1e-6)


def test_the_offset_map_holds_the_patch_to_patch_mass(vit_session, hf_vit):
    store = vision.sample_store(vit_session.model, 2)
    attention, _ = hf_run(hf_vit, vision.test_canvases()[2].pixels)
    figure, note = vision.offset_view(vit_session, store, "2.3")
    mass = np.asarray(figure.data[0].customdata, dtype=float)[..., 0]
    # Σ over offsets = mean over patch queries of their attention to patches.
    expected = float(attention[2, 3, 1:, 1:].sum(-1).mean())
    assert mass.sum() == pytest.approx(expected, abs=1e-5)
    # The centre (dy 0, dx 0) is each patch's attention to itself.
    self_mass = float(torch.diagonal(attention[2, 3, 1:, 1:]).mean())
    assert mass[7, 7] == pytest.approx(self_mass, abs=1e-6)
    assert "Peak at dy" in note
    assert vision.parse_head("nonsense", vit_session.spec) == (0, 0)


def test_the_distance_figure_matches_the_closed_form(vit_session, hf_vit):
    store = vision.sample_store(vit_session.model, 3)
    attention, _ = hf_run(hf_vit, vision.test_canvases()[3].pixels)
    distance = vision.image_views(vit_session, store)[4]
    rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    centres = (np.stack([rows.ravel(), cols.ravel()], -1) + 0.5) * 2.0  # 2 px patches
    pixels = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    expected = (attention[:, :, 1:, 1:].numpy() * pixels).sum(-1).mean(-1)  # [layer, head]
    for head, trace in enumerate(t for t in distance.data if t.type == "scatter"):
        np.testing.assert_allclose(np.asarray(trace.y, dtype=float), expected[:, head], atol=1e-4)


def test_an_uploaded_canvas_is_classified_like_the_sample(vit_session):
    sample = vision.test_canvases()[4]
    as_png = png_url((sample.pixels * 255).round().astype(np.uint8))
    store, message, picker = vision.choose_image(
        vit_session, "vis-upload", 0, as_png, "../digit.png"
    )
    assert (
        message is None
        and picker is None
        and store["name"] == "digit.png"
        and store["source"] == "upload"
    )
    from_upload = vision.image_views(vit_session, store)
    from_sample = vision.image_views(vit_session, vision.sample_store(vit_session.model, 4))
    assert "uploaded: digit.png" in from_upload[0]
    # The 8-bit PNG changes pixels by at most 1/510: the same top class.
    assert (
        str(from_upload[1]).split("probability")[0] == str(from_sample[1]).split("probability")[0]
    )


def test_a_larger_rgb_upload_is_resized_to_the_models_view(vit_session):
    rgb = np.zeros((48, 64, 3), dtype=np.uint8)
    rgb[:, 32:, :] = 255  # right half white
    store, *_ = vision.choose_image(vit_session, "vis-upload", None, png_url(rgb), "half.png")
    assert store["shape"] == [16, 16, 1] and store["original"] == [64, 48]
    pixels = np.frombuffer(base64.b64decode(store["pixels"]), np.float32).reshape(16, 16)
    np.testing.assert_allclose(pixels[:, :7], 0.0, atol=1e-6)
    np.testing.assert_allclose(pixels[:, 9:], 1.0, atol=1e-6)
    assert "resized from 64×48" in vision.image_views(vit_session, store)[0]


def test_a_file_that_is_not_an_image_is_refused(vit_session):
    text = "data:text/plain;base64," + base64.b64encode(b"just text").decode()
    with pytest.raises(InputError, match="not an image"):
        vision.choose_image(vit_session, "vis-upload", 0, text, "notes.txt")
    with pytest.raises(InputError):
        vision.image_views(vit_session, {"shape": [16, 16, 1], "pixels": "AAAA"})


def test_importance_and_the_pruning_curve(vit_session, hf_vit):
    heatmap, curve, message = vision.importance_views(vit_session, "accuracy", 32)
    samples = vision.test_canvases()[:32]
    correct = [int(hf_run(hf_vit, s.pixels)[1].argmax()) == s.label for s in samples]
    clean = sum(correct) / len(correct)
    values = np.asarray(curve.data[0].y, dtype=float)
    assert values[0] == pytest.approx(clean)  # nothing pruned: the clean accuracy
    assert values[-1] <= clean
    assert f"all heads: {clean:.3f}" in str(message)
    assert "32 held-out test canvases" in str(message)
    grid = heatmaps(heatmap)[0]
    assert grid.shape == (3, 4) and np.isfinite(grid).all()
    assert "bootstrap over 32 images" in heatmap.data[0].hovertemplate


# -- the dashboard mode of a vision model ----------------------------------------------------------


def test_a_vision_model_lands_on_the_vision_page(vit_session):
    pages = {kind: (lambda kind=kind: [kind]) for kind in routes.PAGE_KINDS}
    routed = vision.pages_for(vit_session, pages)
    assert routed["overview"]() == ["vision"] and routed["vision"]() == ["vision"]
    assert "needs" not in str(routed["vision"]())
    assert "reads text prompts" in str(routed["flow"]())
    assert "reads text prompts" in str(shell.render_page(routed, "/head/0/0"))


def test_a_text_models_pages_are_unchanged(toy_session):
    pages = {kind: (lambda kind=kind: [kind]) for kind in routes.PAGE_KINDS}
    assert vision.pages_for(toy_session, pages) is pages
    assert "needs a vision model" in str(vision.layout(toy_session))


def test_the_navigation_shows_the_models_own_pages(vit_session, toy_session):
    def links(component) -> list:
        found = [component] if str(getattr(component, "id", "")).startswith("nav-") else []
        children = getattr(component, "children", None)
        for child in children if isinstance(children, list) else [children]:
            if child is not None and not isinstance(child, str):
                found += links(child)
        return found

    def hidden(session) -> set[str]:
        nav = links(shell.layout(session))
        assert len(nav) == len(routes.NAV_PAGES)
        return {link.id[4:] for link in nav if link.style == {"display": "none"}}

    text_kinds = {kind for kind in routes.PAGE_KINDS if kind != "vision"}
    assert hidden(vit_session) == text_kinds
    assert hidden(toy_session) == {"vision"}


def test_text_never_reaches_a_vision_model(vit_session):
    with pytest.raises(InputError, match="vision model"):
        vit_session.tokenize("/etc/hosts")


def test_the_app_of_a_vision_model_serves_the_vision_page(vit):
    app = create_app(model=vit, warm_up=False)
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/vision").status_code == 200


# -- in the browser ------------------------------------------------------------------------------


@pytest.mark.browser
def test_an_uploaded_image_shows_the_overlay(dash_duo, vit, artifacts, tmp_path):
    from test_screenshots import IMAGES, SCRATCH, WIDTH, _full_page, _optimise

    canvas = vision.test_canvases()[5]
    path = tmp_path / "my digit <7>.png"
    upscaled = np.kron(canvas.pixels, np.ones((8, 8)))  # 128 × 128: the page resizes it
    Image.fromarray((upscaled * 255).round().astype(np.uint8)).save(path)

    dash_duo.start_server(create_app(model=vit))
    dash_duo.driver.set_window_size(WIDTH, 1000)
    dash_duo.wait_for_page(dash_duo.server_url + "/")
    dash_duo.wait_for_contains_text(".hs-page-title", "Vision", timeout=30)
    assert not dash_duo.find_element("#nav-overview").is_displayed()
    assert dash_duo.find_element("#nav-vision").is_displayed()
    dash_duo.wait_for_contains_text("#vis-image-line", "test canvas #0", timeout=30)

    dash_duo.find_element("#vis-upload input[type=file]").send_keys(str(path))
    dash_duo.wait_for_contains_text("#vis-image-line", "my digit <7>.png", timeout=30)
    dash_duo.wait_for_contains_text("#vis-image-line", "resized from 128×128", timeout=30)

    def overlay_drawn() -> bool:
        return dash_duo.driver.execute_script(
            "const plot = document.querySelector('#vis-overlay .js-plotly-plot');"
            "return !!(plot && plot._fullData && plot._fullData.some(t => t.type === 'heatmap'));"
        )

    until(overlay_drawn, timeout=30, poll=0.3)
    assert dash_duo.find_elements("#vis-overlay .heatmaplayer, #vis-overlay image")
    # The overlay's CSV export: 64 patch cells per map, each map a share summing to 1.
    from test_export import _download, _downloads

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _downloads(dash_duo.driver, downloads)
    button = "#vis-overlay + .hs-export .hs-export-button[data-format=csv]"
    text = _download(dash_duo, downloads, button, "overview-vis-overlay.csv")
    rows = [row for row in csv.DictReader(io.StringIO(text)) if row["type"] == "heatmap"]
    traces = {row["trace"] for row in rows}
    assert len(traces) == 2  # rollout and relevance
    for trace in traces:
        cells = [float(row["z"]) for row in rows if row["trace"] == trace]
        assert len(cells) == 64 and sum(cells) == pytest.approx(1.0, abs=1e-4)
    dash_duo.find_element("#vis-imp-run").click()
    dash_duo.wait_for_contains_text("#vis-imp-message", "most important", timeout=120)
    dash_duo.wait_for_contains_text("#vis-flow-note", "max-flow from [CLS]", timeout=120)
    time.sleep(1.0)
    assert not dash_duo.find_elements("#page-content .hs-alert-error")
    dash_duo.driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
    (artifacts / "vision.png").write_bytes(_full_page(dash_duo.driver))
    folder = IMAGES if os.environ.get("HEADSCOPE_README_SCREENSHOTS") == "1" else SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vision.png").write_bytes((artifacts / "vision.png").read_bytes())
    _optimise(folder / "vision.png")
    assert dash_duo.get_logs() == []


def test_a_tiny_deit_with_two_prefix_tokens_and_rgb(tmp_path):
    """DeiT: [CLS] and a distillation token before a 4×4 grid of RGB patches, 5 classes
    named LABEL_k (so test canvases carry no label the model knows)."""
    from tiny_models import build_tiny_vision, load_eager_hf_vision

    directory = build_tiny_vision(tmp_path / "deit", "deit")
    session = ModelSession(hs.load_model(str(directory)))
    store = vision.sample_store(session.model, 0)
    assert store["shape"] == [12, 12, 3]
    line, table, *_ = vision.image_views(session, store)
    assert "resized from 16×16" in line and "true label" not in str(table)
    pixels = np.frombuffer(base64.b64decode(store["pixels"]), np.float32).reshape(12, 12, 3)
    values = torch.from_numpy((pixels - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = load_eager_hf_vision(directory)(pixel_values=values, output_attentions=True)
    grids = heatmaps(vision.head_grid(session, store, 1)[0])
    for head, z in enumerate(grids):
        expected = out.attentions[1][0, head, 0, 2:].reshape(4, 4).numpy()
        np.testing.assert_allclose(z, expected, atol=1e-5)
    message = vision.importance_views(session, "class_logit", 32)[2]
    assert "the model's own predictions" in str(message)
