"""The Retrieval page: its callback body on the toy (the copying heads 1.0 and 1.3
come out as retrieval heads in every panel, the labels table and the message carry
their evidence), encoders refused with a reason, and, in headless Chromium, the page
run end to end, its settings set from the URL and written back to it. The screenshot
goes to artifacts/dashboard/retrieval.png."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
import torch
from browser_wait import until

from headscope.analyses.retrieval import rank_by
from headscope.dashboard import retrieval, routes
from headscope.dashboard.app import create_app
from headscope.errors import InputError

COPYING = {(1, 0), (1, 3)}


def test_the_page_is_in_the_navigation():
    assert "retrieval" in routes.PAGE_KINDS
    assert routes.parse_path("/retrieval").kind == "retrieval"


@pytest.fixture(scope="module")
def outputs(toy_session):
    stages = []
    result = retrieval.study_outputs(
        toy_session, 8, 12, 1, 4, lambda done, total, label: stages.append((done, total, label))
    )
    return result, stages


def test_the_toy_copying_heads_lead_every_panel(outputs):
    (ret, gates, peak, echo, checks, table, message), stages = outputs
    for figure in (ret, gates, peak):
        grid = figure.data[0].z
        assert set(rank_by(torch.tensor(grid), 2)) == COPYING
        assert "chance" in figure.data[0].hovertemplate
        assert "support" in figure.data[0].hovertemplate
    assert echo.data[0].z is not None
    # the check bars: the top heads changed copy far worse than streaming heads
    top, streaming = checks.data[1].y, checks.data[2].y
    assert all(t < 0.2 for t in top) and all(s > 0.5 for s in streaming)
    text = str(table)
    for head in ("1.0", "1.3"):
        assert head in text
    assert "retrieval" in text and "streaming" in text and "dormant" in text
    words = str(message.children)
    assert "copy steps" in words and "chance" in words and "KL" in words
    assert stages[0][0] == 0 and stages[-1][0] == 4 and all(s[1] == 5 for s in stages)


def test_encoders_are_refused_with_a_reason(minilm_session):
    with pytest.raises(InputError, match="causal language model"):
        retrieval.study_outputs(minilm_session)


@pytest.mark.browser
def test_the_page_runs_in_the_browser(dash_duo, toy_model, artifacts):
    dash_duo.start_server(create_app(model=toy_model, warm_up=False))
    # the URL's settings replace the inputs' defaults (16, 16, 1, 4), and the run uses them
    dash_duo.wait_for_page(dash_duo.server_url + "/retrieval?retrieval=8,12,1,4")
    dash_duo.wait_for_contains_text(".hs-page-title", "Retrieval and streaming", timeout=30)
    until(lambda: settings(dash_duo)[:2] == ["8", "12"], timeout=20)
    dash_duo.find_element("#ret-run").click()
    dash_duo.wait_for_element("#ret-label-table", timeout=240)
    dash_duo.wait_for_contains_text("#ret-label-table", "dormant", timeout=30)
    until(lambda: dash_duo.find_elements("#ret-retrieval .heatmaplayer"), timeout=30, poll=0.3)
    message = dash_duo.find_element("#ret-message").text
    assert "copy steps" in message and "8 prompts, 12 tokens copied" in message
    height = dash_duo.driver.execute_script("return document.body.scrollHeight")
    dash_duo.driver.set_window_size(1400, max(900, min(int(height) + 40, 4000)))
    dash_duo.driver.save_screenshot(str(artifacts / "retrieval.png"))
    # an edited setting goes to the address bar, with the others
    window = dash_duo.find_element("#ret-window")
    window.clear()
    window.send_keys("6")
    until(lambda: url_retrieval(dash_duo) == ["8,12,1,6"], timeout=20)
    assert dash_duo.get_logs() == []


def settings(dash_duo) -> list[str]:
    return [
        dash_duo.find_element(f"#{key}").get_attribute("value") for key in retrieval.SETTING_IDS
    ]


def url_retrieval(dash_duo) -> list[str] | None:
    return parse_qs(urlparse(dash_duo.driver.current_url).query).get("retrieval")
