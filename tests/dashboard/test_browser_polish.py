"""The polish list of the dashboard: small panels without a permanent toolbar,
log axes written as powers of ten, no gap trailing the overview grid, the
Position page limited to the strongest heads and pairs (with "show every
head"), one Run button on the Importance page, a refused prompt marking the
previous results stale, and a long prompt offered its last tokens instead of
a refusal. Screenshots go to artifacts/dashboard/polish-*.png."""

from __future__ import annotations

import time

import numpy as np
import pytest
from browser_wait import until

from headscope.dashboard import routes
from headscope.dashboard.app import create_app
from headscope.dashboard.position import TOP_HEADS, TOP_PAIRS
from headscope.dashboard.refusals import keep_last_tokens
from headscope.figures.long import sinks_over_position
from headscope.figures.maps import head_grid
from headscope.figures.position import influence_by_distance, sink_scores
from headscope.figures.spectral import singular_spectra

# -- without a browser ---------------------------------------------------------------------------


def test_log_axes_are_labelled_as_powers_of_ten_only():
    rng = np.random.default_rng(0)
    figures = [
        sinks_over_position(rng.random(20), rng.random(20), ["t"] * 20, head="0.0"),
        singular_spectra({"QK": rng.random(8) + 0.01}, log_y=True),
        influence_by_distance(rng.random((2, 6)) + 0.01, log_y=True),
    ]
    for figure in figures:
        axis = figure.layout.yaxis
        assert axis.type == "log"
        # "power": 10⁻³ rather than SI "1m" beside "0.001"; no "2", "5" between decades
        assert axis.exponentformat == "power" and axis.minorloglabels == "none"


def test_the_overview_grid_ends_with_the_last_head():
    """The canvas holds heads and the gaps between them, none after the last."""
    n_layers, n_heads, n = 2, 4, 9
    maps = np.random.default_rng(1).random((n_layers, n_heads, n, n)).astype(np.float32)
    figure = head_grid(maps)
    z = np.asarray(figure.data[0].z, dtype=float)
    gap = figure.layout.meta["pitch"] - figure.layout.meta["size"]
    assert z.shape == (n_layers * n + (n_layers - 1) * gap, n_heads * n + (n_heads - 1) * gap)
    assert np.isfinite(z[:, -1]).any() and np.isfinite(z[-1, :]).any()
    assert len(figure.layout.xaxis.categoryarray) == z.shape[1]


def test_sink_map_keeps_the_strongest_heads_in_model_order():
    layers, heads, keys = 6, 12, 10
    scores = np.random.default_rng(2).random((layers, heads, keys)).astype(np.float32) * 0.5
    sinks = np.zeros_like(scores, dtype=bool)
    sinks[5, 11, 0] = True  # a weak head with a marked sink is kept
    figure = sink_scores(scores, [f"t{i}" for i in range(keys)], sinks=sinks, max_heads=TOP_HEADS)
    rows = list(figure.data[0].y)
    assert len(rows) == TOP_HEADS and f"top {TOP_HEADS} of 72 heads" in figure.layout.title.text
    flat = scores.reshape(-1, keys).max(axis=1)
    flat[5 * heads + 11] += 10
    expected = sorted(np.argsort(-flat)[:TOP_HEADS])
    assert rows == [f"L{i // heads}.H{i % heads}" for i in expected]
    assert "L5.H11" in rows and list(figure.data[1].y) == ["L5.H11"]
    assert len(sink_scores(scores, [f"t{i}" for i in range(keys)]).data[0].y) == 72


@pytest.mark.parametrize("which", ["toy", "minilm"])
def test_a_long_prompt_keeps_its_last_tokens(which, toy_session, minilm_session):
    session = toy_session if which == "toy" else minilm_session
    model = session.model
    words = "red cat blue dog sun tree key pen " if which == "toy" else "unbelievably tokenized "
    text = words * 200
    kept, n, dropped = keep_last_tokens(session, text)
    assert text.endswith(kept) and dropped == len(text) - len(kept)
    length = int(session.tokenize(kept).lengths[0])
    assert length <= session.token_limit  # it fits; cut at a word, so nearly exactly
    assert length == session.token_limit if which == "toy" else length > session.token_limit - 8
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    tail = model.tokenizer(kept, add_special_tokens=False)["input_ids"]
    assert n == len(tail) and tail == ids[-n:]  # the very last tokens of the prompt
    assert keep_last_tokens(session, "red cat") is None  # it fits already
    assert keep_last_tokens(session, "   ") is None


# -- in the browser ------------------------------------------------------------------------------


def idle(dash_duo, timeout: float = 60) -> None:
    time.sleep(0.3)
    until(dash_duo._wait_for_callbacks, timeout=timeout, poll=0.2)


def shot(dash_duo, artifacts, name: str) -> None:
    dash_duo.driver.execute_script("window.scrollTo(0, 0);")
    height = dash_duo.driver.execute_script("return document.documentElement.scrollHeight")
    dash_duo.driver.set_window_size(1400, max(900, min(int(height) + 40, 4000)))
    time.sleep(0.5)
    dash_duo.driver.save_screenshot(str(artifacts / f"{name}.png"))
    dash_duo.driver.set_window_size(1400, 1000)


def type_prompt(dash_duo, text: str) -> None:
    box = dash_duo.find_element("#prompt-input")
    dash_duo.driver.execute_script(
        "const el = arguments[0];"
        "const set = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(el), 'value').set;"
        "set.call(el, arguments[1]);"
        "el.dispatchEvent(new Event('input', {bubbles: true}));",
        box,
        text,
    )
    dash_duo.find_element("#prompt-run").click()


def stale(dash_duo) -> bool:
    return "hs-stale" in (dash_duo.find_element("#page-content").get_attribute("class") or "")


@pytest.mark.browser
def test_a_refused_prompt_marks_the_results_stale_and_a_long_one_is_offered_truncation(
    dash_duo, toy_model, toy_session, artifacts
):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_contains_text("#overview-tokens", "tree", timeout=30)
    idle(dash_duo)
    assert not stale(dash_duo)
    # small panels carry no toolbar at all; the large grid only on hover
    assert not dash_duo.find_elements("#overview-entropy .modebar")
    assert dash_duo.find_elements("#overview-grid .modebar--hover")

    type_prompt(dash_duo, "   ")
    dash_duo.wait_for_contains_text("#model-message", "the prompt is empty", timeout=20)
    until(lambda: stale(dash_duo), timeout=10)
    assert "previous prompt" in dash_duo.find_element("#model-message").text
    assert not dash_duo.find_elements("#prompt-truncate")  # nothing to shorten

    long_prompt = "sun moon star fish " * 60  # 240 words: the toy model takes 128 tokens
    type_prompt(dash_duo, long_prompt)
    dash_duo.wait_for_contains_text("#model-message", "context is 128 tokens", timeout=20)
    until(lambda: stale(dash_duo), timeout=10)
    kept, n, _ = keep_last_tokens(toy_session, long_prompt)
    link = dash_duo.wait_for_element("#prompt-truncate", timeout=10)
    assert link.text == f"Keep the last {n} tokens" and n == 127  # <bos> + 127 = 128
    shot(dash_duo, artifacts, "polish-refused-long-prompt")
    link.click()
    dash_duo.wait_for_contains_text("#prompt-info", "128 tokens", timeout=30)
    idle(dash_duo)
    until(lambda: not stale(dash_duo), timeout=10)
    assert dash_duo.find_element("#prompt-input").get_attribute("value") == kept
    assert "moon" in dash_duo.find_element("#overview-tokens").text
    assert "prompt=" in dash_duo.driver.current_url
    assert dash_duo.find_element("#model-message").text == ""
    logs = dash_duo.get_logs()
    assert logs == [], [entry["message"][-300:] for entry in logs]


@pytest.mark.browser
def test_the_importance_page_has_one_run_button(dash_duo, toy_model):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(dash_duo.server_url + "/importance")
    dash_duo.wait_for_contains_text(".hs-page-title", "Head importance", timeout=30)
    idle(dash_duo)
    labels = [b.text.strip() for b in dash_duo.find_elements("button") if b.is_displayed()]
    assert labels.count("Run") == 1, labels
    assert dash_duo.find_element("#imp-run").text == "Score heads"


@pytest.mark.browser
def test_the_position_page_shows_the_strongest_heads_then_every_head(
    dash_duo, minilm_model, artifacts
):
    """MiniLM: 72 heads. The sink map shows the TOP_HEADS strongest, the pair
    list names the TOP_PAIRS strongest; "show every head" draws all 72 rows."""
    prompt = "the cat sat on the mat . the dog sat on the log . " * 3

    def rows() -> int:
        return dash_duo.driver.execute_script(
            "const gd = document.querySelector('#pos-sinks .js-plotly-plot');"
            "return gd && gd.data && gd.data.length ? gd.data[0].y.length : 0;"
        )

    dash_duo.start_server(create_app(model=minilm_model))
    dash_duo.wait_for_page(dash_duo.server_url + routes.href("/position", prompt))
    dash_duo.wait_for_contains_text(".hs-page-title", "Position", timeout=30)
    until(lambda: rows() > 0, timeout=60)
    idle(dash_duo)
    assert rows() == TOP_HEADS
    line = dash_duo.find_element("#pos-sink-heads").text
    if dash_duo.find_elements("#pos-all-pairs"):  # more pairs than named: the rest fold away
        named = line.split("\n")[0].split(": ", 1)[1].split(". Rule")[0]
        assert named.count("→") == TOP_PAIRS
    shot(dash_duo, artifacts, "polish-position-minilm")
    dash_duo.find_element("#pos-all-heads input").click()
    until(lambda: rows() == 72, timeout=30)
    idle(dash_duo)
    logs = dash_duo.get_logs()
    assert logs == [], [entry["message"][-300:] for entry in logs]
