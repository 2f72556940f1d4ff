"""The view state in a real browser (dash.testing's dash_duo, headless chromium):
a URL with gates reproduces the playground (checked against `gated_run`
computed here and against the same gates set by clicking), the gates survive
navigation, the importance pickers follow the URL, a session file restores a
view, bad URL values get a message, and `create_app(record=...)` serves a
saved capture with no model. Screenshots go to artifacts/dashboard/."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, quote, urlparse

import numpy as np
import pytest
import torch
from browser_wait import until
from selenium.webdriver.common.keys import Keys

from headscope.dashboard import state
from headscope.dashboard.app import create_app
from headscope.experiments.attention import capture, gated_run

pytestmark = pytest.mark.browser

PROMPT = "red cat blue dog sun tree red cat blue dog sun"


def idle(dash_duo, timeout: float = 30) -> None:
    time.sleep(0.3)
    until(dash_duo._wait_for_callbacks, timeout=timeout, poll=0.2)


def shot(dash_duo, artifacts, name: str) -> None:
    height = dash_duo.driver.execute_script("return document.body.scrollHeight")
    dash_duo.driver.set_window_size(1400, max(900, min(int(height) + 40, 4000)))
    dash_duo.driver.save_screenshot(str(artifacts / f"{name}.png"))
    dash_duo.driver.set_window_size(1400, 1000)


def url_state(dash_duo) -> dict:
    return parse_qs(urlparse(dash_duo.driver.current_url).query, keep_blank_values=True)


def expected_run(app, toy_model, grid) -> tuple:
    """(top-1 token, its probability, loss, maps) of the prompt under `grid`, computed
    here with the experiments API (not through the dashboard), under the session's
    lock: the server runs the same model object in its own threads."""
    batch = toy_model.tokenize(PROMPT)
    with app.headscope_session.lock:
        run = gated_run(toy_model, batch, torch.tensor(grid, dtype=torch.float32))
    probabilities = run.logits[-1].float().softmax(-1)
    best = int(probabilities.argmax())
    return toy_model.tokenizer.decode([best]), float(probabilities[best]), run.loss, run.pattern


def figure_z(dash_duo, graph_id: str) -> np.ndarray:
    """The first trace's z of a plotly graph, as the browser holds it."""
    rows = dash_duo.driver.execute_script(
        "const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');"
        "const z = gd._fullData[0].z;"
        "return Array.from(z, row => Array.from(row, v => (v === null || Number.isNaN(v))"
        " ? null : v));",
        f"#{graph_id}",
    )
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


def metrics_text(dash_duo) -> str:
    return dash_duo.find_element("#play-metrics").text


def assert_metrics(dash_duo, app, toy_model, grid, note: str) -> str:
    token, p, loss, _ = expected_run(app, toy_model, grid)
    until(lambda: note in metrics_text(dash_duo), timeout=30)
    text = metrics_text(dash_duo)
    assert f"top-1: {token.strip() or token}" in text.replace("  ", " ") or token in text
    assert f"p = {p:.3f}" in text
    assert f"{loss:.4f} nats" in text
    return text


def test_a_url_with_gates_reproduces_the_playground(dash_duo, toy_model, circuit, artifacts):
    app = create_app(model=toy_model)
    dash_duo.start_server(app)
    # the circuit's previous-token head off (so the induction layer's maps move), and
    # the induction head at half
    (pl, ph), (il, ih) = circuit.previous_head, circuit.induction_head
    assert pl < il
    grid = [[1.0] * 4, [1.0] * 4]
    grid[pl][ph], grid[il][ih] = 0.0, 0.5
    gates = f"{il}.{ih}:0.5,{pl}.{ph}:0"
    canonical = f"{pl}.{ph}:0,{il}.{ih}:0.5"
    note = f"gated: {pl}.{ph}×0, {il}.{ih}×0.5"
    url = f"/playground?prompt={quote(PROMPT)}&gates={quote(gates)}&heads={il}.{ih}"
    dash_duo.wait_for_page(dash_duo.server_url + url)
    from_url = assert_metrics(dash_duo, app, toy_model, grid, note)
    dash_duo.wait_for_text_to_equal(
        "#play-selected", f"selected head {il}.{ih}: gate 0.5", timeout=20
    )
    button = dash_duo.find_element(f"#play-gates button:nth-child({4 * pl + ph + 1})")
    assert "rgba(180, 35, 24, 0.85" in button.get_attribute("style")
    # the difference view: gated − ungated, as gated_run computes it
    dash_duo.find_element("#play-view input[value='difference']").click()
    dash_duo.wait_for_contains_text("#play-maps", "gated − all heads on", timeout=20)
    idle(dash_duo)
    _, _, _, gated = expected_run(app, toy_model, grid)
    _, _, _, clean = expected_run(app, toy_model, [[1.0] * 4, [1.0] * 4])
    expected = (gated - clean).numpy()
    assert np.abs(expected[il]).max() > 0.05  # the induction layer loses its previous token
    assert np.abs(expected[pl]).max() == 0.0  # a gate on z cannot change its own layer
    z = figure_z(dash_duo, "play-maps")
    n = expected.shape[-1]
    pitch = n + max(1, round(n * 0.12))
    for layer in range(2):
        for head in range(4):
            cell = z[layer * pitch : layer * pitch + n, head * pitch : head * pitch + n]
            np.testing.assert_allclose(cell, expected[layer, head], atol=1e-5)
    assert "Δ attention weight" in dash_duo.find_element("#play-maps").text
    dash_duo.driver.set_window_size(1400, 1500)
    dash_duo.driver.execute_script(
        "document.getElementById('play-gates').scrollIntoView({block: 'start'})"
    )
    dash_duo.driver.save_screenshot(str(artifacts / "playground-diff.png"))
    dash_duo.driver.set_window_size(1400, 1000)
    # the gates survive a visit to another page, and the URL keeps them
    dash_duo.find_element("#nav-overview").click()
    dash_duo.wait_for_contains_text("#overview-tokens", "cat", timeout=20)
    assert url_state(dash_duo)["gates"] == [canonical]
    dash_duo.find_element("#nav-playground").click()
    until(lambda: note in metrics_text(dash_duo), timeout=30)
    # the same gates set by clicking give the same playground
    dash_duo.find_element("#play-reset").click()
    dash_duo.wait_for_contains_text("#play-metrics", "all heads on", timeout=30)
    until(lambda: "gates" not in url_state(dash_duo), timeout=10)
    dash_duo.find_element(f"#play-gates button:nth-child({4 * pl + ph + 1})").click()
    until(lambda: url_state(dash_duo).get("gates") == [f"{pl}.{ph}:0"], timeout=20)
    only = [[1.0] * 4, [1.0] * 4]
    only[pl][ph] = 0.0
    assert_metrics(dash_duo, app, toy_model, only, f"gated: {pl}.{ph}×0")
    dash_duo.find_element(f"#play-gates button:nth-child({4 * il + ih + 1})").click()
    until(lambda: url_state(dash_duo).get("heads") == [f"{il}.{ih}"], timeout=20)
    # the slider: from 0 to 0.5, ten steps of 0.05 with the arrow key
    handle = dash_duo.find_element("#play-scale [role='slider']")
    for step in range(1, 11):
        handle.send_keys(Keys.ARROW_RIGHT)
        dash_duo.wait_for_text_to_equal(
            "#play-selected", f"selected head {il}.{ih}: gate {round(0.05 * step, 2):g}"
        )
    until(lambda: url_state(dash_duo).get("gates") == [canonical], timeout=20)
    until(lambda: metrics_text(dash_duo) == from_url, timeout=30)
    # a new prompt keeps the gates, on the page and in the URL
    new_prompt = "sun moon star fish sun moon star fish"
    dash_duo.clear_input("#prompt-input")
    dash_duo.find_element("#prompt-input").send_keys(new_prompt)
    dash_duo.find_element("#prompt-run").click()
    until(lambda: url_state(dash_duo).get("prompt") == [new_prompt], timeout=20)
    dash_duo.wait_for_contains_text("#play-output", "after fish", timeout=30)
    until(lambda: url_state(dash_duo).get("gates") == [canonical], timeout=10)
    assert note in metrics_text(dash_duo)
    assert f"selected head {il}.{ih}: gate 0.5" == dash_duo.find_element("#play-selected").text
    assert dash_duo.get_logs() == []


def test_bad_url_values_get_a_message_and_no_markup(dash_duo, toy_model):
    dash_duo.start_server(create_app(model=toy_model))
    url = "/playground?gates=9.9:0,1.3:0&metric=%3Cimg%20src=x%20onerror=alert(1)%3E"
    dash_duo.wait_for_page(dash_duo.server_url + url)
    dash_duo.wait_for_contains_text("#state-message", "layer 9 does not exist", timeout=20)
    assert "<img" in dash_duo.find_element("#state-message").text  # shown as text
    assert dash_duo.find_elements("#state-message img") == []
    dash_duo.wait_for_contains_text("#play-metrics", "all heads on", timeout=30)
    assert dash_duo.get_logs() == []


@pytest.mark.parametrize("query", ["", "&gates=1.3:0"])
def test_a_new_prompt_run_on_a_shared_url_replaces_the_old_one(dash_duo, toy_model, query):
    """Typing a prompt and pressing Run on a page opened from a link (the prompt in
    its URL, with or without view state) draws the new prompt and keeps the state:
    the URL writer must not put the link's old prompt back."""
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(f"{dash_duo.server_url}/head/1/3?prompt={quote(PROMPT)}{query}")
    dash_duo.wait_for_contains_text("#prompt-info", "tokens", timeout=30)
    idle(dash_duo)
    fresh = "sun tree key sun tree key"
    dash_duo.driver.execute_script(
        "const box = document.getElementById('prompt-input');"
        "const set = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(box), 'value').set;"
        "set.call(box, arguments[0]); box.dispatchEvent(new Event('input', {bubbles: true}));"
        "setTimeout(() => document.getElementById('prompt-run').click(), 0);",
        fresh,
    )
    labels = (
        "const gd = document.querySelector('#head-map .js-plotly-plot');"
        "return gd && gd.data && gd.data[0] && gd.data[0].x.slice(0, 3);"
    )
    until(lambda: (dash_duo.driver.execute_script(labels) or [None])[1:] == ["1 sun", "2 tree"], 30)
    idle(dash_duo)
    assert url_state(dash_duo)["prompt"] == [fresh]
    assert dash_duo.find_element("#prompt-input").get_attribute("value") == fresh
    if query:
        assert url_state(dash_duo)["gates"] == ["1.3:0"]


def test_importance_pickers_follow_the_url(dash_duo, toy_model):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(dash_duo.server_url + "/importance?metric=embedding_cosine&target=last")
    dash_duo.wait_for_contains_text("#imp-metric", "embedding_cosine", timeout=20)
    dash_duo.wait_for_contains_text("#imp-target", "last", timeout=20)
    # choosing another target puts it in the URL
    dash_duo.select_dcc_dropdown("#imp-target", index=2)
    until(lambda: url_state(dash_duo).get("target") == ["repeats"], timeout=20)
    assert url_state(dash_duo)["metric"] == ["embedding_cosine"]
    assert dash_duo.get_logs() == []


def test_clusters_pickers_follow_the_url(dash_duo, toy_model, artifacts):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(
        dash_duo.server_url + f"/clusters?prompt={quote(PROMPT)}&layer=0&cluster=hierarchical"
    )
    # the layout's defaults are the last layer and k-means: the URL's values replace them
    dash_duo.wait_for_contains_text("#clu-layer", "layer 0", timeout=20)
    until(
        lambda: dash_duo.find_element("#clu-method input[value=hierarchical]").is_selected(),
        timeout=20,
    )
    assert not dash_duo.find_element("#clu-method input[value=kmeans]").is_selected()
    idle(dash_duo)
    shot(dash_duo, artifacts, "clusters_url_state")
    # choosing another layer puts it in the address bar; the method stays
    dash_duo.select_dcc_dropdown("#clu-layer", index=1)
    until(lambda: url_state(dash_duo).get("layer") == ["1"], timeout=20)
    assert url_state(dash_duo)["cluster"] == ["hierarchical"]
    assert url_state(dash_duo)["prompt"] == [PROMPT]
    # and the method too
    dash_duo.find_element("#clu-method input[value=kmeans]").click()
    until(lambda: url_state(dash_duo).get("cluster") == ["kmeans"], timeout=20)
    assert dash_duo.get_logs() == []


def test_dynamics_pickers_follow_the_url(dash_duo, toy_model):
    from headscope.models.checkpoints import load_checkpoints

    steps = load_checkpoints("toy-induction").steps
    a, b = steps[1], steps[-2]
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(
        dash_duo.server_url
        + f"/dynamics?score=previous_token&steps={a},{b}&delta=importance&match=1"
    )
    dash_duo.wait_for_contains_text("#dyn-category", "previous token", timeout=20)
    dash_duo.wait_for_contains_text("#dyn-a", f"step {a}", timeout=20)
    dash_duo.wait_for_contains_text("#dyn-b", f"step {b}", timeout=20)
    dash_duo.wait_for_contains_text("#dyn-key", "importance", timeout=20)
    dash_duo.wait_for_contains_text("#dyn-layer", "layer 1", timeout=20)
    # choosing another step A puts it in the address bar
    dash_duo.select_dcc_dropdown("#dyn-a", index=0)
    until(lambda: url_state(dash_duo).get("steps") == [f"{steps[0]},{b}"], timeout=20)
    assert url_state(dash_duo)["score"] == ["previous_token"]
    assert dash_duo.get_logs() == []


def test_a_session_file_restores_the_view(dash_duo, toy_model, tmp_path):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(dash_duo.server_url + "/")
    dash_duo.wait_for_contains_text("#overview-tokens", "tree", timeout=20)
    document = state.session_document(
        "toy-induction", "/playground", PROMPT, {"gates": "1.3:0", "heads": "1.3"}, None
    )
    saved = tmp_path / "session.json"
    saved.write_text(state.session_json(document))
    dash_duo.find_element("#session-upload input[type=file]").send_keys(str(saved))
    dash_duo.wait_for_contains_text("#play-metrics", "gated: 1.3×0", timeout=30)
    assert urlparse(dash_duo.driver.current_url).path == "/playground"
    assert dash_duo.find_element("#prompt-input").get_attribute("value") == PROMPT
    # a session of another model is refused, saying which
    other = tmp_path / "other.json"
    other.write_text(state.session_json({**document, "model": "minilm"}))
    dash_duo.find_element("#session-upload input[type=file]").send_keys(str(other))
    dash_duo.wait_for_contains_text("#state-message", "saved with the model 'minilm'", timeout=20)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    dash_duo.find_element("#session-upload input[type=file]").send_keys(str(broken))
    dash_duo.wait_for_contains_text("#state-message", "not valid JSON", timeout=20)
    assert dash_duo.get_logs() == []


def test_a_saved_capture_is_served_with_no_model(dash_duo, toy_model, artifacts, tmp_path):
    record = capture(toy_model, toy_model.tokenize(PROMPT))
    record.save(tmp_path / "capture")
    app = create_app(record=tmp_path / "capture")
    session = app.headscope_session
    assert session.model is None  # no model object anywhere in the session
    assert not any(type(value).__name__ == "HeadscopeModel" for value in vars(session).values())
    dash_duo.start_server(app)
    dash_duo.wait_for_contains_text("#overview-tokens", "tree", timeout=20)
    dash_duo.wait_for_element("#overview-grid .nsewdrag", timeout=20)
    assert "no model loaded" in dash_duo.find_element("#prompt-info").text
    assert dash_duo.find_element("#prompt-input").get_attribute("readonly") is not None
    idle(dash_duo)
    # the thumbnails are the saved maps
    z = figure_z(dash_duo, "overview-grid")
    pattern = record.pattern.numpy()
    n = pattern.shape[-1]
    pitch = n + max(1, round(n * 0.12))
    cell = z[pitch : pitch + n, 3 * pitch : 3 * pitch + n]
    np.testing.assert_allclose(cell, pattern[1, 3] / pattern[1, 3].max(), atol=1e-5)
    shot(dash_duo, artifacts, "record-overview")
    # a thumbnail opens the head page of the capture
    dash_duo.click_at_coord_fractions("#overview-grid .nsewdrag", 0.92, 0.9)
    dash_duo.wait_for_text_to_equal("#rec-head-title", "Layer 1, head 3", timeout=20)
    dash_duo.wait_for_contains_text("#rec-head-stats", "entropy", timeout=20)
    # a page that needs a model says so
    dash_duo.find_element("#nav-playground").click()
    dash_duo.wait_for_contains_text("#needs-model", "This page needs a model", timeout=20)
    assert "--model toy-induction" in dash_duo.find_element("#needs-model").text
    idle(dash_duo)
    assert dash_duo.get_logs() == []


def test_a_saved_report_shows_its_scores(dash_duo, toy_model, artifacts, tmp_path):
    from pathlib import Path

    from headscope.reports.config import ReportConfig
    from headscope.reports.job import run_report

    examples = Path(__file__).resolve().parents[2] / "examples" / "induction.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(examples.read_text().splitlines()[:4]) + "\n")
    config = ReportConfig(
        model="toy-induction", prompts=str(prompts), methods=("ablation", "gradient")
    )
    run_report(config, tmp_path / "report", model=toy_model, progress=False)
    app = create_app(report=tmp_path / "report")
    assert app.headscope_session.model is None
    dash_duo.start_server(app)
    dash_duo.wait_for_page(dash_duo.server_url + "/importance")
    dash_duo.wait_for_contains_text("#report-method-ablation", "ablation", timeout=20)
    dash_duo.wait_for_element("#report-ablation .js-plotly-plot .heatmaplayer", timeout=20)
    traces = dash_duo.driver.execute_script(
        "return JSON.stringify(document.querySelector('#report-ablation .js-plotly-plot').data);"
    )
    assert "95% bootstrap over 4 prompts" in traces  # each cell's hover gives its interval
    idle(dash_duo)
    shot(dash_duo, artifacts, "report-importance")
    dash_duo.find_element("#nav-flow").click()
    dash_duo.wait_for_contains_text("#needs-model", "This page needs a model", timeout=20)
    dash_duo.find_element("#nav-overview").click()
    dash_duo.wait_for_contains_text("#page-content", "What the report measured", timeout=20)
    assert dash_duo.get_logs() == []
