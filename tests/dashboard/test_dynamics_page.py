"""The Dynamics page: the built-in checkpoint series over training, and a diff
of two checkpoints (docs/methods.md §2.13, §2.14)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from browser_wait import until

from headscope.analyses.dynamics import phase_change
from headscope.dashboard import dynamics, routes
from headscope.dashboard.app import create_app
from headscope.errors import InputError
from headscope.experiments.dynamics import repeat_prompts

PROMPTS = "\n".join(repeat_prompts(6, 8, seed=2))


@pytest.fixture(scope="module")
def computed():
    return dynamics.dynamics_outputs("toy-induction", PROMPTS, "induction")


def test_the_page_is_in_the_navigation():
    assert routes.DYNAMICS in routes.NAV_PAGES
    assert routes.parse_path("/dynamics").kind == "dynamics"


def test_the_series_job_and_its_store(computed):
    figure, text, store, message = computed
    assert store["steps"] == [0, 400, 550, 650, 800, 1200, 3000]
    assert store["prompts"] == 6
    result = dynamics.dynamics_from_store(json.loads(json.dumps(store).replace("NaN", "null")))
    assert json.dumps(dynamics.dynamics_store(result)) == json.dumps(store)  # round-trips
    phase = phase_change(result, 1, 3)
    assert f"between steps {phase.rise_steps[0]} and {phase.rise_steps[1]}" in text
    assert "Head 1.3" in text and "6 prompts" in text
    shown = next(trace for trace in figure.data if trace.name == "1.3")
    assert list(shown.y) == pytest.approx(result.head_series(1, 3).tolist(), abs=1e-6)
    # a new category is redrawn from the store, not recomputed
    previous = dynamics.series_figure(store, "previous_token")
    assert "previous" in previous.layout.yaxis.title.text
    assert "6 prompts" in str(message.children)


def test_the_diff_job_and_its_views():
    store, layers, message = dynamics.diff_outputs("toy-induction", PROMPTS, 0, 3000)
    assert [option["value"] for option in layers] == [0, 1]
    store = json.loads(json.dumps(store).replace("NaN", "null"))  # as the browser sends it
    heatmap, matching, table = dynamics.diff_views(store, "induction", 1)
    assert "Δ induction score" in heatmap.layout.title.text
    assert "layer 1" in matching.layout.title.text and len(matching.layout.shapes) == 4
    assert table.children[0].id == "dyn-diff-rows"
    rows = dynamics.diff_rows(dynamics.diff_from_store(store), "induction")
    row = next(r for r in rows if r["head"] == "1.3")
    assert row["label_b"].startswith("induction") and "(changed)" in row["label_b"]
    assert "n.s." not in row["delta"]
    assert "taxonomy label" in str(message.children)
    # the same step twice: nothing changes, every head matches itself
    same, _, _ = dynamics.diff_outputs("toy-induction", PROMPTS, 3000, 3000)
    diff = dynamics.diff_from_store(same)
    assert diff.identity_matched
    assert float(torch.nan_to_num(diff.deltas["induction"].mean).abs().max()) == 0.0


def test_bad_inputs_say_why():
    with pytest.raises(InputError):
        dynamics.diff_outputs("toy-induction", PROMPTS, 0, 7)
    with pytest.raises(InputError):
        dynamics.dynamics_outputs("toy-induction", "red cat red cat", "induction")
    blank = dynamics.series_figure(None, "induction")
    assert blank.layout.annotations  # a message, no data yet


@pytest.mark.browser
def test_the_page_draws_the_series_and_a_diff(dash_duo, toy_model, artifacts):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(dash_duo.server_url + "/dynamics")
    dash_duo.wait_for_contains_text(".hs-page-title", "Training dynamics", timeout=30)
    dash_duo.find_element("#dyn-run").click()
    dash_duo.wait_for_contains_text("#dyn-phase", "phase change", timeout=240)
    until(lambda: dash_duo.find_elements("#dyn-series-graph .scatterlayer"), timeout=30, poll=0.3)
    dash_duo.find_element("#dyn-diff-run").click()
    dash_duo.wait_for_element("#dyn-diff-rows", timeout=240)
    dash_duo.wait_for_contains_text("#dyn-diff-rows", "(changed)", timeout=30)
    until(lambda: dash_duo.find_elements("#dyn-diff-graph .heatmaplayer"), timeout=30, poll=0.3)
    height = dash_duo.driver.execute_script("return document.body.scrollHeight")
    dash_duo.driver.set_window_size(1200, max(900, min(int(height) + 40, 2400)))
    time.sleep(1.0)  # plotly redraws on resize
    dash_duo.driver.save_screenshot(str(artifacts / "dynamics.png"))
    assert dash_duo.get_logs() == []
