"""The Clusters page: its callback bodies on toy-induction and minilm (the induction
heads share a cluster whose check says ablating both costs more than either alone), the
layer heat map redrawn from the stored result, and, in headless Chromium, the page run
end to end until the cluster table shows. The screenshot goes to
artifacts/dashboard/clusters.png."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from browser_wait import until

from headscope.dashboard import clusters, routes
from headscope.dashboard.app import create_app
from headscope.dashboard.examples import TOY_PROMPTS
from headscope.errors import InputError
from headscope.experiments.redundancy import redundancy


def test_the_page_is_in_the_navigation():
    assert "clusters" in routes.PAGE_KINDS
    assert routes.parse_path("/clusters").kind == "clusters"


@pytest.fixture(scope="module")
def toy_outputs(toy_session):
    return clusters.cluster_outputs(toy_session, "\n".join(TOY_PROMPTS))


def test_toy_induction_heads_share_a_checked_cluster(toy_session, toy_outputs):
    elbow, cross, bars, _table, store, message = toy_outputs
    # the page shows exactly what experiments.redundancy computes for the same prompts
    expected = redundancy(toy_session.require_model(), list(TOY_PROMPTS))
    rows = clusters.cluster_rows(expected)
    pair = [row for row in rows if row["heads"] == "1.0, 1.3"]
    assert len(pair) == 1, rows
    row = pair[0]
    assert row["verdict"] != "one head: nothing to compare"
    check = expected.ablation_of(1, 0)
    assert check is not None
    whole, single = check.whole_interval(), check.single_interval()
    assert float(whole.mean[0]) > float(single.mean.max())
    assert row["whole"].startswith(f"{float(whole.mean[0]):+.3f}")
    # every row of the table is one cluster; every head appears once per layer
    shown = [h for r in rows for h in r["heads"].split(", ")]
    assert sorted(shown) == sorted(f"{layer}.{head}" for layer in range(2) for head in range(4))
    text = str(message.children)
    assert "Pearson" in text and "Baseline" in text and "prompts" in text
    assert len(store["layers"]) == 2 and store["layers"][1]["k"] == len(
        expected.clusters.layers[1].clusters
    )
    assert len(bars.data) == 1 and len(cross.data) == 1 and len(elbow.data) == 4


def test_the_layer_map_comes_from_the_store(toy_outputs):
    store = toy_outputs[4]
    figure = clusters.layer_heatmap(store, 1)
    order = figure.data[0].x
    assert set(order) == {"1.0", "1.1", "1.2", "1.3"}
    # clusters are contiguous in the order: 1.0 and 1.3 sit next to each other
    positions = sorted(list(order).index(name) for name in ("1.0", "1.3"))
    assert positions[1] - positions[0] == 1
    assert clusters.layer_heatmap(None, 0).layout.annotations  # a message, no data yet
    assert clusters.layer_heatmap(store, "7").data[0].x == figure.data[0].x  # out of range: last


def test_fixed_k_and_hierarchical_choices_are_used(toy_session):
    outputs = clusters.cluster_outputs(
        toy_session, "\n".join(TOY_PROMPTS[:3]), "hierarchical", "4", "mean"
    )
    store = outputs[4]
    assert all(layer["k"] == 4 and layer["method"] == "hierarchical" for layer in store["layers"])
    assert "mean ablation" in str(outputs[5].children)


def test_bad_inputs_say_why(toy_session):
    with pytest.raises(InputError):
        clusters.cluster_outputs(toy_session, "   ")
    with pytest.raises(InputError):
        clusters.cluster_outputs(toy_session, "red cat red cat", k="9")


def test_minilm_page_runs_in_seconds(minilm_session):
    start = time.perf_counter()
    outputs = clusters.cluster_outputs(
        minilm_session,
        "The cat sat on the mat.\nA man is playing a guitar.\nThe children play outside.",
    )
    elapsed = time.perf_counter() - start
    assert len(outputs[4]["layers"]) == 6
    assert "embedding_cosine" in str(outputs[5].children)
    assert elapsed < 60


@pytest.mark.browser
def test_the_page_shows_the_cluster_table(dash_duo, toy_model, artifacts):
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(dash_duo.server_url + "/clusters")
    dash_duo.wait_for_contains_text(".hs-page-title", "Head clusters", timeout=30)
    dash_duo.find_element("#clu-run").click()
    dash_duo.wait_for_element("#clu-cluster-table", timeout=120)
    dash_duo.wait_for_contains_text("#clu-cluster-table", "1.0, 1.3", timeout=30)
    until(lambda: dash_duo.find_elements("#clu-heatmap .heatmaplayer"), timeout=30, poll=0.3)
    assert "Pearson" in dash_duo.find_element("#clu-message").text
    # the wide table exports one record per row, keyed by its header's titles
    table = dash_duo.find_element("#clu-cluster-table")
    titles = [th.text.strip() for th in table.find_elements("css selector", "thead th")]
    shown = [
        [td.text.strip() for td in tr.find_elements("css selector", "td")]
        for tr in table.find_elements("css selector", "tbody tr")
    ]
    script = "return window.headscopeExport.tableText(arguments[0], 'clusters', arguments[1]);"
    data = json.loads(dash_duo.driver.execute_script(script, table, "json"))
    assert data["columns"] == titles and len(titles) > 2
    assert [[row[t] for t in titles] for row in data["rows"]] == shown
    text = dash_duo.driver.execute_script(script, table, "csv")
    records = list(csv.DictReader(io.StringIO(text)))
    assert [[r[t].lstrip("'") for t in titles] for r in records] == shown
    assert dash_duo.find_elements(".hs-panel:has(> #clu-cluster-table) .hs-export-button")
    height = dash_duo.driver.execute_script("return document.body.scrollHeight")
    dash_duo.driver.set_window_size(1400, max(900, min(int(height) + 40, 4000)))
    dash_duo.driver.save_screenshot(str(artifacts / "clusters.png"))
    assert dash_duo.get_logs() == []
