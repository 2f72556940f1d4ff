"""The Patching page: its callback bodies (default corruption, token counts,
no map when the corruption leaves the metric unchanged) and, in headless
Chromium, the toy circuit found by activation patching with the "replace the
repeated half" corruption, checked against an independent computation.
The screenshot goes to artifacts/dashboard/patching.png."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from browser_wait import until

from headscope.analyses.ranking import top_heads
from headscope.dashboard import patching, routes
from headscope.dashboard.app import create_app
from headscope.dashboard.examples import default_prompt
from headscope.errors import InputError
from headscope.experiments.ablation import ablation_scores
from headscope.experiments.metrics import next_token_loss
from headscope.experiments.patching import activation_patching

#: A clean − corrupted harm above this (nats) puts a head in the circuit ablation finds.
CIRCUIT_HARM = 0.1


def _store(prompt: str) -> dict:
    return {"prompt": prompt}


def _second_copy_targets(model, prompt: str) -> torch.Tensor:
    """The tokens of the second copy of `A … A …` after its first word, by hand."""
    words = prompt.split()
    half = len(words) // 2
    assert words[:half] == words[half:]
    ids = model.tokenize(prompt).ids
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[0, 1 + half + 1 :] = True  # <bos>, the first copy, the second copy's first word
    return targets


def test_the_page_is_in_the_navigation():
    assert "patching" in routes.PAGE_KINDS
    assert routes.parse_path("/patching").kind == "patching"
    kinds = [page.kind for page in routes.NAV_PAGES]
    assert kinds.index("patching") > kinds.index("importance")


def test_a_new_prompt_starts_with_its_repeat_replaced(toy_session):
    prompt = default_prompt(toy_session.spec)
    text, note = patching.default_corruption(toy_session, _store(prompt))
    assert "replace the repeated half" in note
    assert text.split()[:10] == prompt.split()[:10]
    assert set(text.split()[10:]).isdisjoint(prompt.split())
    # no repeat: the first word is swapped instead
    text, note = patching.default_corruption(toy_session, _store("red cat blue dog"))
    assert text.split()[1:] == ["cat", "blue", "dog"] and text.split()[0] != "red"


def test_token_counts_warn_when_they_differ(toy_session):
    prompt = "red cat blue dog red cat blue dog"
    _, corrupted_chips, counts = patching.token_views(
        toy_session, _store(prompt), "red cat blue dog red cat blue dog sun"
    )
    text = str(counts.children)
    assert "9 tokens" in text and "10" in text and "equal token counts" in text
    assert len(corrupted_chips) == 10
    with pytest.raises(InputError, match="equal token counts"):
        patching.patching_outputs(
            toy_session, _store(prompt), "red cat blue dog red cat", ["activation"]
        )


def test_no_map_when_the_corruption_leaves_the_metric_unchanged(toy_session):
    prompt = "red cat blue dog red cat blue dog"
    # The last word changed: no logit before it sees it and the loss scores the clean
    # word there, so the gap is 0.
    *figures, message = patching.patching_outputs(
        toy_session, _store(prompt), "red cat blue dog red cat blue sun", ["activation"]
    )
    assert "does not change the metric" in str(message.children)
    assert "meaningless" in str(message.children)
    for figure in figures:
        assert not [trace for trace in figure.data if trace.type == "heatmap"]


def test_more_pairs_give_intervals_and_pairs_without_gap_are_left_out(toy_session, toy_model):
    prompt = "red cat blue dog sun red cat blue dog sun"
    corrupted = "red cat blue dog sun key pen milk ship tree"
    second = "one two three four one two three four"
    second_corrupted = "one two three four big box cup door"
    pairs = (
        f"{second} || {second_corrupted}\n\n{prompt} || red cat blue dog sun red cat blue dog moon"
    )
    activation, _, positions, message = patching.patching_outputs(
        toy_session, _store(prompt), corrupted, ["activation"], pairs=pairs
    )
    text = str(message.children)
    assert "2 prompt pairs" in text and "left out pair 3" in text  # its last word only
    # the map is the mean over the two pairs of activation patching on each
    expected = []
    for clean, bad in ((prompt, corrupted), (second, second_corrupted)):
        clean_ids = toy_model.tokenize(clean).ids
        metric = next_token_loss(_second_copy_targets(toy_model, clean), labels=clean_ids)
        expected.append(
            activation_patching(toy_model, clean_ids, toy_model.tokenize(bad).ids, metric)
        )
    mean = torch.stack(expected).mean(0)
    heatmap = activation.data[0]
    assert np.allclose(np.asarray(heatmap.z, dtype=np.float64), mean.numpy(), atol=1e-5)
    assert "95% bootstrap over 2 prompt pairs" in heatmap.hovertemplate
    low, high = np.asarray(heatmap.customdata)[..., 0], np.asarray(heatmap.customdata)[..., 1]
    assert (low <= mean.numpy() + 1e-6).all() and (high >= mean.numpy() - 1e-6).all()
    # the position map stays on the prompt box's pair
    assert len(positions.data[0].x) == toy_model.tokenize(prompt).lengths[0]
    with pytest.raises(InputError, match="line 1 of the prompt pairs"):
        patching.patching_outputs(
            toy_session, _store(prompt), corrupted, ["activation"], pairs="no separator"
        )


PROMPT = {"prompt": "red cat blue dog red cat blue dog"}
CRAFTED = [
    # (callback output, inputs, changed, text the answer must carry)
    (
        "patch-helper-note",
        {"prompt-store.data": PROMPT, "patch-swap.n_clicks": 1, "patch-swap-position.value": "x"},
        ["patch-swap.n_clicks"],
        "integer",
    ),
    (
        "patch-helper-note",
        {"prompt-store.data": PROMPT, "patch-swap.n_clicks": 2, "patch-swap-position.value": 0},
        ["patch-swap.n_clicks"],
        "special token",
    ),
    (
        "patch-helper-note",
        {"prompt-store.data": {"prompt": "red cat \ud800 dog"}},
        ["prompt-store.data"],
        "lone surrogate",
    ),
    (
        "patch-counts",
        {"prompt-store.data": PROMPT, "patch-corrupted.value": "red " * 250_000},
        ["patch-corrupted.value"],
        "characters",
    ),
    (
        "patch-activation",
        {"prompt-store.data": PROMPT, "patch-run.n_clicks": 1, "patch-methods.value": "all"},
        ["patch-run.n_clicks"],
        "choose at least one method",
    ),
    (
        "patch-activation",
        {
            "prompt-store.data": PROMPT,
            "patch-run.n_clicks": 1,
            "patch-methods.value": ["activation"],
            "patch-corrupted.value": "red cat blue dog red cat blue sun",
            "patch-metric.value": {"x": 1},
            "patch-rows.value": "layer-99",
            "patch-pairs.value": 12,
        },
        ["patch-run.n_clicks"],
        "the prompt pairs must be text",
    ),
]


def test_crafted_requests_get_a_message(toy_model):
    from dash_client import DashClient, text_of

    from headscope.dashboard.app import stop_app

    app = create_app(model=toy_model, warm_up=False)
    try:
        client = DashClient(app)
        for output, values, changed, expected in CRAFTED:
            response = client.call(output, values, changed=changed)
            body = text_of(response)
            assert response.status_code == 200, body[:300]
            assert expected in body and "Traceback" not in body, (output, body[:300])
            assert len(response.data) < 200_000
    finally:
        stop_app(app)


# -- in the browser --------------------------------------------------------------------------


def _idle(dash_duo, timeout: float = 30) -> None:
    time.sleep(0.3)
    until(dash_duo._wait_for_callbacks, timeout=timeout, poll=0.2)


def _shot(dash_duo, artifacts, name: str) -> None:
    height = dash_duo.driver.execute_script("return document.body.scrollHeight")
    # The window's own bars take some of its height: leave room below the page.
    dash_duo.driver.set_window_size(1400, max(900, min(int(height) + 200, 4000)))
    time.sleep(0.5)  # plotly redraws on resize
    dash_duo.driver.save_screenshot(str(artifacts / f"{name}.png"))
    dash_duo.driver.set_window_size(1400, 1000)


def _figure(dash_duo, graph_id: str) -> dict:
    """The drawn heatmap of a graph: z (rows of numbers) and y labels."""
    return dash_duo.driver.execute_script(
        "const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');"
        "const trace = gd._fullData.find(t => t.type === 'heatmap');"
        "if (!trace) { return null; }"
        "return {z: Array.from(trace.z, row => Array.from(row)),"
        "        y: trace.y ? Array.from(trace.y) : null};",
        f"#{graph_id}",
    )


@pytest.mark.browser
def test_activation_patching_finds_the_toy_circuit(dash_duo, toy_model, artifacts):
    dash_duo.start_server(create_app(model=toy_model, warm_up=False))
    dash_duo.wait_for_page(dash_duo.server_url + "/patching")
    dash_duo.wait_for_contains_text(".hs-page-title", "Patching", timeout=20)
    dash_duo.wait_for_contains_text("#patch-counts", "positions differ", timeout=30)
    dash_duo.find_element("#patch-replace-repeat").click()
    dash_duo.wait_for_contains_text("#patch-helper-note", "replaced the repeat", timeout=20)
    _idle(dash_duo)
    clean = default_prompt(toy_model.spec)
    corrupted = dash_duo.find_element("#patch-corrupted").get_attribute("value")
    assert corrupted.split()[:10] == clean.split()[:10] and corrupted != clean
    dash_duo.find_element("#patch-run").click()
    dash_duo.wait_for_contains_text("#patch-message", "activation patching, largest", timeout=180)
    _idle(dash_duo)
    message = dash_duo.find_element("#patch-message").text
    for words in ("clean", "corrupted", "gap", "9 scored tokens", "0 = the corrupted run"):
        assert words in message

    # The page's map equals activation patching called directly, with the metric
    # built here by hand (the second copy's predictable tokens, scored on the clean ids).
    clean_ids = toy_model.tokenize(clean).ids
    corrupted_ids = toy_model.tokenize(corrupted).ids
    targets = _second_copy_targets(toy_model, clean)
    expected = activation_patching(
        toy_model, clean_ids, corrupted_ids, next_token_loss(targets, labels=clean_ids)
    )
    page = torch.tensor(_figure(dash_duo, "patch-activation")["z"], dtype=torch.float64)
    assert page.shape == (2, 4)
    assert torch.allclose(page, expected, atol=1e-5)

    # The circuit found independently: the heads whose zero ablation on the clean
    # prompt raises the loss on those tokens by more than CIRCUIT_HARM nats.
    harm = ablation_scores(toy_model, clean_ids, metric=next_token_loss(targets))
    circuit = {(layer, head) for layer in range(2) for head in range(4) if harm[layer, head] > 0.1}
    assert 2 <= len(circuit) <= 4  # a circuit, not every head
    found = top_heads(page, 3)
    assert set(found) <= circuit, (found, circuit)
    assert page[found[0]] > 0.05  # restores a real share of the gap

    # The (head × position) map: the top heads, one column per token. A last-layer
    # head changes only its own position's logits, so its positions add up to it.
    positions = _figure(dash_duo, "patch-positions")
    assert positions["y"][: len(found)] == [f"L{layer} H{head}" for layer, head in found]
    grid = np.array(positions["z"], dtype=np.float64)
    assert grid.shape[1] == clean_ids.shape[1]
    for row, name in enumerate(positions["y"]):
        layer, head = int(name[1]), int(name.split("H")[1])
        assert np.abs(grid[row, :11]).max() < 1e-6  # before the first changed token
        if layer == 1:
            assert abs(grid[row].sum() - expected[layer, head].item()) < 1e-4
    assert _figure(dash_duo, "patch-attribution") is not None
    _shot(dash_duo, artifacts, "patching")

    # Counts that differ are said, with both counts.
    dash_duo.driver.execute_script(
        "const el = arguments[0];"
        "const set = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(el), 'value').set;"
        "set.call(el, arguments[1]);"
        "el.dispatchEvent(new Event('input', {bubbles: true}));",
        dash_duo.find_element("#patch-corrupted"),
        corrupted + " red",
    )
    dash_duo.wait_for_contains_text("#patch-counts", "21 tokens and the corrupted prompt 22")
    logs = dash_duo.get_logs()
    assert logs == [], [entry["message"][-1500:] for entry in logs]
