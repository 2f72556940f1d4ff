"""The Contributions page: its outputs carry the sum check, encoders are told what
applies, bad choices become messages; in Chromium, on toy-induction, the numbers
the page shows for a repeated-token position sum to the logit computed here with
the model, and the largest head is an induction head. Screenshot:
artifacts/dashboard/contributions.png."""

from __future__ import annotations

import json
import time

import pytest
import torch
from browser_wait import until

from headscope.dashboard.app import create_app
from headscope.dashboard.contributions import contribution_outputs, contribution_page

PROMPT = "red cat blue tree moon red cat blue tree moon"
#: Index of the second "tree" (after <bos>): the induction circuit predicts "moon" (at
#: the second "cat", two tokens into the repeat, the toy model does not predict yet).
REPEATED = 9


def _logits(model, prompt=PROMPT):
    with torch.no_grad():
        return model.forward(model.tokenize(prompt)).logits[0].double()


def test_outputs_state_the_logit_and_the_sum_check(toy_session, toy_model):
    summary, parts, *_figures, chips = contribution_outputs(
        toy_session, {"prompt": PROMPT}, REPEATED, "next", "", 0.04
    )
    data = json.loads(parts.to_plotly_json()["props"]["data-parts"])
    logits = _logits(toy_model)
    target = int(toy_model.tokenize(PROMPT).ids[0, REPEATED + 1])
    assert data["target"] == target and data["position"] == REPEATED
    total = (
        sum(map(sum, data["heads"]))
        + sum(data["attention_bias"])
        + sum(data["mlps"])
        + data["token_embedding"]
        + data["positional_embedding"]
        + data["final_bias"]
    )
    assert total == pytest.approx(float(logits[REPEATED, target]), abs=1e-4)
    text = str(summary)
    assert f"{float(logits[REPEATED, target]):.5f}" in text
    assert "frozen" in text and "RMSNorm" in text
    assert len(chips) == len(toy_model.tokenize(PROMPT).tokens[0])


def test_an_encoder_gets_the_split_of_its_sentence_embedding(minilm_session, minilm_model):
    prompt = "The cat sat on the mat."
    summary, parts, heads, _layers, lens, _table, graph_figure = contribution_outputs(
        minilm_session, {"prompt": prompt}, 2, "top", None, 0.04
    )[:7]
    with torch.no_grad():
        embedding = minilm_model.forward(minilm_model.tokenize(prompt), embedding=True).embedding
    norm = float(embedding[0].double().norm())
    data = json.loads(parts.to_plotly_json()["props"]["data-parts"])
    total = (
        sum(map(sum, data["heads"]))
        + sum(data["attention_bias"])
        + sum(data["mlps"])
        + data["embeddings"]
        + data["norm_biases"]
    )
    assert total == pytest.approx(norm, abs=1e-4)
    text = str(summary)
    assert "post-norm" in text and "no trained LM head" in text and f"{norm:.5f}" in text
    assert heads.data and not lens.data and not graph_figure.data  # the lens and graph: n/a


def test_bad_choices_become_messages(toy_session):
    last = len(toy_session.tokenize(PROMPT).tokens[0]) - 1
    summary, *_ = contribution_page(toy_session, {"prompt": PROMPT}, last, "next", "", 0.04)
    assert "no next token" in str(summary)
    summary, *_ = contribution_page(toy_session, {"prompt": PROMPT}, 3, "top", "zebra", 0.04)
    assert "not in the vocabulary" in str(summary)
    summary, *_ = contribution_page(toy_session, {"prompt": ""}, 3, "top", "", 0.04)
    assert "empty" in str(summary)


def _parts(dash_duo) -> dict | None:
    """The page's exact parts (read in one script: the element is re-rendered)."""
    text = dash_duo.driver.execute_script(
        "const el = document.querySelector('#contrib-parts-data');"
        "return el ? el.getAttribute('data-parts') : null;"
    )
    return json.loads(text) if text else None


def _click(dash_duo, selector: str) -> None:
    dash_duo.driver.execute_script("document.querySelector(arguments[0]).click();", selector)


@pytest.mark.browser
def test_the_page_shows_parts_that_sum_to_the_logit(dash_duo, toy_model, circuit, artifacts):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(
        dash_duo.server_url + "/contributions?prompt=" + PROMPT.replace(" ", "+")
    )
    dash_duo.wait_for_contains_text(".hs-page-title", "Contributions", timeout=20)
    dash_duo.wait_for_element("#contrib-parts-data", timeout=30)
    _click(dash_duo, f"#contrib-tokens button:nth-of-type({REPEATED + 1})")
    until(lambda: (_parts(dash_duo) or {}).get("position") == REPEATED, timeout=30, poll=0.2)
    time.sleep(0.5)
    data = _parts(dash_duo)
    shown_heads = dash_duo.driver.execute_script(
        "const z = document.querySelector('#contrib-heads .js-plotly-plot')._fullData[0].z;"
        "return Array.from(z, row => Array.from(row));"
    )
    logits = _logits(toy_model)
    target = int(logits[REPEATED].argmax())  # the page's default: the top prediction
    assert data["target"] == target
    assert target == int(toy_model.tokenize(PROMPT).ids[0, REPEATED + 1])  # the circuit works
    expected = float(logits[REPEATED, target])
    heads = torch.tensor(shown_heads, dtype=torch.float64)
    assert torch.allclose(heads, torch.tensor(data["heads"], dtype=torch.float64), atol=1e-5)
    total = (
        float(heads.sum())
        + sum(data["attention_bias"])
        + sum(data["mlps"])
        + data["token_embedding"]
        + data["positional_embedding"]
        + data["final_bias"]
    )
    assert total == pytest.approx(expected, abs=1e-4)
    assert f"{expected:.5f}" in dash_duo.find_element("#contrib-summary").text
    best = divmod(int(heads.flatten().argmax()), toy_model.spec.n_heads)
    assert best in circuit.induction_heads
    for selector in ("#contrib-layers", "#contrib-lens", "#contrib-graph"):
        assert dash_duo.find_elements(f"{selector} .js-plotly-plot"), selector
    height = dash_duo.driver.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);"
    )
    dash_duo.driver.set_window_size(1400, max(900, min(int(height) + 80, 4000)))
    time.sleep(0.6)
    dash_duo.driver.save_screenshot(str(artifacts / "contributions.png"))
    # Only this page's errors: while the shareable-state work is in progress, callbacks
    # of other pages (e.g. `imp-metric`) log missing-id errors on every page.
    mine = [
        entry["message"][:600]
        for entry in dash_duo.get_logs()
        if "contrib" in entry["message"].split("The string ids")[0]
    ]
    assert mine == []


@pytest.mark.browser
def test_the_encoder_page_splits_the_sentence_embedding(dash_duo, minilm_model, artifacts):
    dash_duo.start_server(create_app(model=minilm_model))
    prompt = "The cat sat on the mat."
    dash_duo.wait_for_page(
        dash_duo.server_url + "/contributions?prompt=" + prompt.replace(" ", "+")
    )
    dash_duo.wait_for_element("#contrib-parts-data", timeout=60)
    dash_duo.wait_for_contains_text("#contrib-summary", "post-norm encoder", timeout=30)
    with torch.no_grad():
        embedding = minilm_model.forward(minilm_model.tokenize(prompt), embedding=True).embedding
    assert (
        f"{float(embedding[0].double().norm()):.5f}"
        in dash_duo.find_element("#contrib-summary").text
    )
    time.sleep(0.5)
    height = dash_duo.driver.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);"
    )
    dash_duo.driver.set_window_size(1400, max(900, min(int(height) + 80, 4000)))
    time.sleep(0.6)
    dash_duo.driver.save_screenshot(str(artifacts / "contributions-minilm.png"))
