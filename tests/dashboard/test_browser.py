"""The dashboard in headless Chromium (dash.testing's dash_duo): every page
loads cleanly, the prompt box drives the maps, heads open from the overview,
the playground reacts to gates, markup in prompts stays text, and background
jobs report progress and can be cancelled. Screenshots go to artifacts/dashboard/.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import pytest
from browser_wait import until
from selenium.common.exceptions import NoAlertPresentException

from headscope.dashboard import routes
from headscope.dashboard.app import create_app

pytestmark = pytest.mark.browser

PAGE_TITLES = {
    "overview": "Overview",
    "head": "Layer 0, head 0",
    "flow": "Flow",
    "importance": "Head importance",
    "position": "Position",
    "spectral": "Spectral",
    "playground": "Ablation playground",
}
XSS = "<img src=x onerror=alert(1)>"


def idle(dash_duo, timeout: float = 30) -> None:
    """Wait until the page has no callback in flight."""
    time.sleep(0.3)
    until(dash_duo._wait_for_callbacks, timeout=timeout, poll=0.2)


def shot(dash_duo, artifacts, name: str) -> None:
    height = dash_duo.driver.execute_script("return document.body.scrollHeight")
    dash_duo.driver.set_window_size(1400, max(900, min(int(height) + 40, 4000)))
    dash_duo.driver.save_screenshot(str(artifacts / f"{name}.png"))
    dash_duo.driver.set_window_size(1400, 1000)


def type_prompt(dash_duo, text: str) -> None:
    dash_duo.clear_input("#prompt-input")
    dash_duo.find_element("#prompt-input").send_keys(text)
    dash_duo.find_element("#prompt-run").click()


def set_value(dash_duo, selector: str, text: str) -> None:
    """Set a text box's value the way React notices (typing long text is slow)."""
    dash_duo.driver.execute_script(
        "const el = arguments[0];"
        "const set = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(el), 'value').set;"
        "set.call(el, arguments[1]);"
        "el.dispatchEvent(new Event('input', {bubbles: true}));",
        dash_duo.find_element(selector),
        text,
    )


def no_alert(dash_duo) -> bool:
    try:
        dash_duo.driver.switch_to.alert  # noqa: B018
    except NoAlertPresentException:
        return True
    return False


def test_every_page_loads_without_console_errors(dash_duo, toy_model, artifacts):
    dash_duo.start_server(create_app(model=toy_model))
    for page in routes.PAGES:
        dash_duo.wait_for_page(dash_duo.server_url + page.path)
        dash_duo.wait_for_contains_text(".hs-page-title", PAGE_TITLES[page.kind], timeout=20)
        idle(dash_duo)
        assert dash_duo.find_elements(".js-plotly-plot"), page.kind
        shot(dash_duo, artifacts, f"toy-{page.kind}")
        assert dash_duo.get_logs() == [], page.kind
    dash_duo.wait_for_page(dash_duo.server_url + "/nowhere")
    dash_duo.wait_for_contains_text("#page-content", "Page not found")


def test_an_unknown_model_shows_why_on_every_page(dash_duo):
    dash_duo.start_server(create_app("no-such-model", warm_up=False))
    for page in routes.PAGES:
        dash_duo.wait_for_page(dash_duo.server_url + page.path)
        dash_duo.wait_for_contains_text("#model-message", "could not be loaded", timeout=20)
        idle(dash_duo)
        assert dash_duo.get_logs() == [], page.kind  # no server error reached the page


def test_typing_a_prompt_updates_the_maps(dash_duo, toy_model):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_contains_text("#overview-tokens", "tree", timeout=20)
    type_prompt(dash_duo, "sun moon star fish sun moon star fish")
    dash_duo.wait_for_contains_text("#overview-tokens", "moon", timeout=20)
    dash_duo.wait_for_contains_text("#prompt-info", "9 tokens")
    assert "prompt=sun+moon" in dash_duo.driver.current_url
    idle(dash_duo)
    # the grid was redrawn for 9 tokens: its hover targets name the heads
    assert dash_duo.find_elements("#overview-grid .scatterlayer .point")
    # an empty prompt is refused with a visible message; the maps stay
    type_prompt(dash_duo, "   ")
    dash_duo.wait_for_contains_text("#model-message", "the prompt is empty")
    assert "moon" in dash_duo.find_element("#overview-tokens").text
    assert dash_duo.get_logs() == []
    # another browser tab (not opened from this one) is another session: it starts
    # from the default prompt
    dash_duo.driver.execute_script(
        "window.open(arguments[0], '_blank', 'noopener');", dash_duo.server_url + "/"
    )
    until(lambda: len(dash_duo.driver.window_handles) == 2, timeout=10)
    dash_duo.switch_window(1)
    dash_duo.wait_for_contains_text("#overview-tokens", "tree", timeout=20)
    assert "moon" not in dash_duo.find_element("#overview-tokens").text
    dash_duo.switch_window(0)
    assert "moon" in dash_duo.find_element("#overview-tokens").text


def test_clicking_a_head_in_the_overview_opens_its_detail(dash_duo, toy_model):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_element("#overview-grid .nsewdrag", timeout=20)
    idle(dash_duo)
    # the bottom-right thumbnail is layer 1, head 3 (clicks go to the nearest head)
    dash_duo.click_at_coord_fractions("#overview-grid .nsewdrag", 0.92, 0.9)
    dash_duo.wait_for_text_to_equal("#head-title", "Layer 1, head 3", timeout=20)
    assert urlparse(dash_duo.driver.current_url).path == "/head/1/3"
    # the head picker switches heads without leaving the page
    dash_duo.find_element("#pick-0-2").click()
    dash_duo.wait_for_text_to_equal("#head-title", "Layer 0, head 2")
    dash_duo.wait_for_contains_text("#head-stats", "previous-token mass")
    assert dash_duo.get_logs() == []


def test_head_deep_link_restores_head_and_prompt(dash_duo, toy_model):
    app = create_app(model=toy_model)
    dash_duo.start_server(app)
    dash_duo.wait_for_page(dash_duo.server_url + "/head/1/3?prompt=red+cat+red+cat")
    dash_duo.wait_for_text_to_equal("#head-title", "Layer 1, head 3", timeout=20)
    dash_duo.wait_for_contains_text("#prompt-info", "5 tokens")
    assert dash_duo.find_element("#prompt-input").get_attribute("value") == "red cat red cat"
    dash_duo.wait_for_page(dash_duo.server_url + "/head/7/0?prompt=red")
    dash_duo.wait_for_contains_text("#head-message", "layer 7 does not exist", timeout=20)


def test_toggling_a_head_changes_the_prediction(dash_duo, toy_model, artifacts):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(dash_duo.server_url + "/playground")
    dash_duo.wait_for_contains_text("#play-loss", "loss on the prompt", timeout=20)
    before = dash_duo.find_element("#play-metrics").text
    dash_duo.find_element("#play-gates button:nth-child(3)").click()  # head 0.2
    until(lambda: dash_duo.find_element("#play-metrics").text != before, timeout=20)
    after = dash_duo.find_element("#play-metrics").text
    assert "gated: 0.2×0" in after
    assert before.splitlines()[0] != after.splitlines()[0]  # the top-1 probability moved
    idle(dash_duo)
    shot(dash_duo, artifacts, "toy-playground-gated")
    dash_duo.find_element("#play-reset").click()
    dash_duo.wait_for_contains_text("#play-metrics", "all heads on")
    assert dash_duo.get_logs() == []


def test_markup_in_a_prompt_is_shown_literally(dash_duo, toy_model, artifacts):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_contains_text("#overview-tokens", "tree", timeout=20)
    type_prompt(dash_duo, f"red cat {XSS} red cat")
    dash_duo.wait_for_contains_text("#prompt-info", "tokens", timeout=20)
    until(lambda: "prompt=red+cat+%3Cimg" in dash_duo.driver.current_url, timeout=10)
    idle(dash_duo)
    assert dash_duo.find_element("#prompt-input").get_attribute("value").endswith(f"{XSS} red cat")
    assert dash_duo.find_elements("img") == []
    assert no_alert(dash_duo)
    # also on a page that puts tokens in plot labels, and in an error message
    dash_duo.wait_for_page(dash_duo.server_url + "/head/0/0?prompt=" + XSS)
    dash_duo.wait_for_contains_text("#overview-tokens, #head-title", "Layer 0", timeout=20)
    idle(dash_duo)
    assert dash_duo.find_elements("img") == [] and no_alert(dash_duo)
    shot(dash_duo, artifacts, "toy-xss-prompt")


def test_flow_page_shows_relevance_beside_rollout_and_flow(dash_duo, toy_model, artifacts):
    dash_duo.start_server(create_app(model=toy_model))
    prompt = "red cat blue dog sun tree red cat blue dog sun"
    dash_duo.wait_for_page(dash_duo.server_url + "/flow?prompt=" + prompt.replace(" ", "+"))
    dash_duo.wait_for_contains_text("#flow-figure", "relevance (Chefer et al. 2021)", timeout=60)
    figure = dash_duo.find_element("#flow-figure").text
    last = toy_model.spec.n_layers - 1
    for panel in (
        f"raw attention, layer {last}, mean over heads",
        "attention rollout",
        "attention flow",
    ):
        assert panel in figure
    dash_duo.wait_for_contains_text("#flow-notes", "on key 0 <bos>")
    assert dash_duo.find_elements("#flow-layer") and dash_duo.find_elements("#flow-head")
    idle(dash_duo)
    shot(dash_duo, artifacts, "flow")
    assert dash_duo.get_logs() == []


def test_background_job_shows_progress_and_can_be_cancelled(dash_duo, toy_model):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(dash_duo.server_url + "/importance")
    dash_duo.wait_for_element("#imp-prompts", timeout=20)
    long_set = "\n".join(
        " ".join(["red cat blue dog sun tree moon star fish bird"] * 4) for _ in range(24)
    )
    set_value(dash_duo, "#imp-prompts", long_set)
    dash_duo.find_element("#imp-methods input[value='chg']").click()
    dash_duo.find_element("#imp-run").click()
    dash_duo.wait_for_style_to_equal("#imp-progress-block", "display", "flex", timeout=20)
    dash_duo.wait_for_contains_text("#imp-progress-label", "causal head gating: step", timeout=60)
    value = float(dash_duo.find_element("#imp-progress").get_attribute("value"))
    assert value > 0
    assert dash_duo.find_element("#imp-run").get_attribute("disabled")
    dash_duo.find_element("#imp-cancel").click()
    dash_duo.wait_for_style_to_equal("#imp-progress-block", "display", "none", timeout=20)
    until(lambda: not dash_duo.find_element("#imp-run").get_attribute("disabled"), timeout=10)
    # the job never delivered: the CHG figure still asks to press Score heads
    assert "Press Score heads" in dash_duo.find_element("#imp-chg-facilitation").text
    assert dash_duo.get_logs() == []


@pytest.mark.slow
def test_encoder_playground_shows_embedding_similarity(dash_duo, minilm_model, artifacts):
    dash_duo.start_server(create_app(model=minilm_model))
    dash_duo.wait_for_page(dash_duo.server_url + "/playground")
    dash_duo.wait_for_contains_text("#play-cosine", "1.0000", timeout=30)
    assert dash_duo.find_elements("#play-similarity")
    dash_duo.find_element("#play-gates button:nth-child(1)").click()  # head 0.0
    until(lambda: "1.0000" not in dash_duo.find_element("#play-cosine").text, timeout=30)
    idle(dash_duo)
    shot(dash_duo, artifacts, "minilm-playground-gated")
    assert dash_duo.get_logs() == []


def _sleep_long(*args, **kwargs):
    time.sleep(120)


def test_a_killed_background_job_shows_a_message(dash_duo, toy_model, monkeypatch, tmp_path):
    """The job process of the flow page is killed (as by the OOM killer): the page
    says so and its progress bar goes away, instead of staying idle."""
    import os
    import signal

    from headscope.dashboard import flow

    monkeypatch.setattr(flow, "flow_page", _sleep_long)  # inherited by the forked job
    app = create_app(model=toy_model, warm_up=False, cache_dir=tmp_path)
    dash_duo.start_server(app)
    dash_duo.wait_for_page(dash_duo.server_url + "/flow")
    dash_duo.wait_for_style_to_equal("#flow-progress-block", "display", "flex", timeout=30)
    jobs = app.headscope_manager.running_jobs
    until(lambda: len(jobs()) == 1, timeout=20)
    time.sleep(1)  # the page has settled on its last job
    for pid in jobs():
        os.kill(pid, signal.SIGKILL)
    dash_duo.wait_for_contains_text("#flow-notes", "stopped without a result", timeout=30)
    assert "SIGKILL" in dash_duo.find_element("#flow-notes").text
    dash_duo.wait_for_style_to_equal("#flow-progress-block", "display", "none", timeout=10)
    assert dash_duo.get_logs() == []


# -- token views (issue "The dashboard as a research instrument") ------------------------------

CHIP_COLOURS = (
    "return Array.from(document.querySelectorAll('#head-token-chips .hs-tchip'))"
    ".map(c => [c.style.backgroundColor, c.classList.contains('hs-token-query'),"
    " c.dataset.weight || ''])"
)


def chip_shading(dash_duo) -> tuple[list[float], int | None, list[str]]:
    """(shade of each chip in [0, 1], the outlined chip, each chip's weight attribute)."""
    shades, outlined, weights = [], None, []
    for i, (colour, query, weight) in enumerate(dash_duo.driver.execute_script(CHIP_COLOURS)):
        if colour.startswith("rgba(31, 95, 168,"):
            shades.append(float(colour.rsplit(",", 1)[1].rstrip(")")))
        else:
            shades.append(1.0 if colour == "rgb(31, 95, 168)" else 0.0)
        outlined = i if query else outlined
        weights.append(weight)
    return shades, outlined, weights


def hover(dash_duo, selector: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(dash_duo.driver).move_to_element(dash_duo.find_element(selector)).perform()


def assert_shaded_like(dash_duo, expected, hovered: int) -> None:
    """The chips are shaded by `expected` (weights) over its max, `hovered` outlined
    (chromium keeps a colour's alpha in 1/255 steps, hence the tolerance)."""
    expected = [float(w) for w in expected]
    top = max(expected)

    def painted() -> bool:
        shades, outlined, _ = chip_shading(dash_duo)
        return outlined == hovered and all(
            abs(s - w / top) < 5e-3 for s, w in zip(shades, expected, strict=True)
        )

    until(painted, timeout=10)
    shades, _, weights = chip_shading(dash_duo)
    assert shades.index(max(shades)) == expected.index(top)
    assert all(abs(float(a) - b) < 1e-4 for a, b in zip(weights, expected, strict=True))


def test_hovering_a_token_highlights_its_keys(dash_duo, toy_model, artifacts):
    from headscope.dashboard import results

    prompt = "red cat blue dog sun tree red cat blue dog sun"
    app = create_app(model=toy_model)
    dash_duo.start_server(app)
    dash_duo.wait_for_page(dash_duo.server_url + "/head/1/3?prompt=" + prompt.replace(" ", "+"))
    dash_duo.wait_for_text_to_equal("#head-title", "Layer 1, head 3", timeout=20)
    until(lambda: len(dash_duo.find_elements("#head-token-chips .hs-tchip")) == 12, timeout=20)
    idle(dash_duo)
    session = app.headscope_session
    state = session.state(prompt)
    pattern = state.record.map(1, 3)
    # the induction head: "dog" (query 10, second copy) attends to "sun", the token after
    # the first "dog"; hovering it shades the keys by that row, darkest on the argmax
    query = 10
    key = int(pattern[query].argmax())
    assert key == 5
    hover(dash_duo, f"#head-token-chips .hs-tchip[data-index='{query}']")
    assert_shaded_like(dash_duo, pattern[query].tolist(), query)
    readout = dash_duo.find_element("#head-token-readout").text
    assert readout.startswith(f"head 1.3 · query 10 dog attends to: 5 sun {pattern[10, 5]:.4f}")
    dash_duo.driver.execute_script(
        "document.getElementById('head-token-chips').scrollIntoView({block: 'center'})"
    )
    dash_duo.driver.save_screenshot(str(artifacts / "tokens.png"))
    # "attended by": hovering a key shades the queries by their weight on it
    dash_duo.find_element("#head-token-direction input[value='from']").click()
    hover(dash_duo, f"#head-token-chips .hs-tchip[data-index='{key}']")
    assert_shaded_like(dash_duo, pattern[:, key].tolist(), key)
    assert "key 5 sun is attended by: 10 dog" in dash_duo.find_element("#head-token-readout").text
    # value-weighted attention: the map and the shading follow, for the same token
    dash_duo.find_element("#head-weighting input[value='value']").click()
    dash_duo.wait_for_contains_text("#head-map", "value-weighted", timeout=20)
    weighted = results.head_map(session, state, 1, 3, "value")
    assert_shaded_like(dash_duo, weighted[:, key].tolist(), key)
    # a head switch repaints the same token from the new head's map
    dash_duo.find_element("#pick-0-2").click()
    dash_duo.wait_for_text_to_equal("#head-title", "Layer 0, head 2", timeout=20)
    assert_shaded_like(dash_duo, results.head_map(session, state, 0, 2, "value")[:, key], key)
    idle(dash_duo)
    assert dash_duo.get_logs() == []


def test_attention_lines_and_thumbnail_cells_answer(dash_duo, toy_model, artifacts):
    from selenium.webdriver.common.action_chains import ActionChains

    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(dash_duo.server_url + "/head/1/3")
    dash_duo.wait_for_contains_text("#head-lines", "Layer 1, head 3", timeout=20)
    assert "queries" in dash_duo.find_element("#head-lines").text
    assert not dash_duo.find_elements("#head-lines .modebar-container .modebar-group")
    dash_duo.find_element("#head-lines-scope input[value='layer']").click()
    dash_duo.wait_for_contains_text("#head-lines", "Layer 1, every head", timeout=20)
    legend = dash_duo.find_element("#head-lines .legend").text
    assert all(f"head {h}" in legend for h in range(4))
    idle(dash_duo)
    dash_duo.driver.execute_script(
        "document.getElementById('head-lines').scrollIntoView({block: 'start'})"
    )
    dash_duo.driver.save_screenshot(str(artifacts / "token-lines.png"))
    # the overview's thumbnails name the query, the key and the weight of a cell
    dash_duo.wait_for_page(dash_duo.server_url + "/")
    dash_duo.wait_for_element("#overview-grid .nsewdrag", timeout=20)
    idle(dash_duo)
    drag = dash_duo.find_element("#overview-grid .nsewdrag")
    width, height = drag.size["width"], drag.size["height"]
    ActionChains(dash_duo.driver).move_to_element_with_offset(
        drag, int(width * 0.92), int(height * 0.9)
    ).perform()
    until(lambda: "weight" in dash_duo.find_element("#overview-grid .hoverlayer").text, 10)
    label = dash_duo.find_element("#overview-grid .hoverlayer").text
    assert "layer 1 · query" in label and "head 3 · key" in label
    assert dash_duo.get_logs() == []
