"""Export of a panel's data (headscope.dashboard.export): the CSV a user downloads
from the Head page's map holds the head's attention weights, computed here
independently with `headscope.capture` on the same prompt; the JSON export holds
the same numbers; a table exports its rows; every panel has the buttons."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from browser_wait import until

import headscope as hs
from headscope.dashboard import routes
from headscope.dashboard.app import create_app
from headscope.dashboard.components import graph, stats_table
from headscope.figures.style import message_figure

PROMPT = "red cat blue dog sun red cat blue dog sun"


def test_every_graph_and_table_carries_export_buttons():
    panel = graph("some-panel", height=300)
    assert panel.className == "hs-panel"
    figure, controls = panel.children
    assert figure.id == "some-panel"
    formats = [button.to_plotly_json()["props"]["data-format"] for button in controls.children[1:]]
    assert formats == ["csv", "json"]
    assert len(graph("quiet", export=False).children) == 1
    known = message_figure("a figure known when the page is built")
    assert graph("static", figure=known).children[0].figure is known
    table = stats_table([("entropy", "1.0")], name="stats")
    assert table.children[0].className == "hs-stats"
    assert table.children[1].children[1].to_plotly_json()["props"]["data-kind"] == "table"


def _downloads(driver, folder: Path) -> None:
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)}
    )


def _download(dash_duo, folder: Path, selector: str, name: str) -> str:
    """Click an export button and return the downloaded file's text."""
    before = set(folder.iterdir())
    button = dash_duo.find_element(selector)
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()

    def arrived():
        new = [p for p in set(folder.iterdir()) - before if not p.name.endswith(".crdownload")]
        return new[0] if new else None

    path = until(arrived, timeout=20, poll=0.2)
    assert path.name == name
    time.sleep(0.2)
    return path.read_text(encoding="utf-8")


@pytest.mark.browser
def test_head_map_exports_its_weights_as_csv_and_json(dash_duo, toy_model, tmp_path):
    layer, head = 1, 3
    expected = hs.capture(toy_model, PROMPT).pattern[layer, head].float().numpy()
    n = expected.shape[-1]
    dash_duo.start_server(create_app(model=toy_model))
    _downloads(dash_duo.driver, tmp_path)
    dash_duo.wait_for_page(dash_duo.server_url + routes.href(routes.head_path(layer, head), PROMPT))
    dash_duo.wait_for_contains_text(".hs-page-title", f"Layer {layer}, head {head}", timeout=30)
    until(
        lambda: dash_duo.driver.execute_script(
            "const gd = document.querySelector('#head-map .js-plotly-plot');"
            "return !!(gd && gd.data && gd.data.length && gd.data[0].type === 'heatmap');"
        ),
        timeout=30,
    )
    time.sleep(0.5)
    buttons = "#head-map + .hs-export .hs-export-button"
    text = _download(dash_duo, tmp_path, f"{buttons}[data-format=csv]", "head-1-3-head-map.csv")
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["type"] == "heatmap"]
    assert len(rows) == n * n  # tidy: one row per cell
    got = np.full((n, n), np.nan)
    for row in rows:
        got[int(row["i"]), int(row["j"])] = float(row["z"])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert {row["x_title"] for row in rows} == {"key"}
    assert {row["y_title"] for row in rows} == {"query"}
    assert rows[0]["x"] == "0 <bos>" and rows[0]["y"] == "0 <bos>"  # labels lose plotly's escapes

    text = _download(dash_duo, tmp_path, f"{buttons}[data-format=json]", "head-1-3-head-map.json")
    data = json.loads(text)
    assert data["panel"] == "head-map"
    z = np.array(data["traces"][0]["z"], dtype=float)
    np.testing.assert_allclose(z, expected, atol=1e-6)
    np.testing.assert_allclose(z, got, atol=0)  # the two formats hold the same numbers

    # a table exports its rows; the file is named after its card
    table = dash_duo.find_element(".hs-stats")
    shown = [td.text for td in table.find_elements("css selector", "td")]
    card = table.find_element("xpath", "ancestor::div[contains(@class, 'hs-card')]")
    title = card.find_element("css selector", "h3").text.strip().lower()
    selector = ".hs-panel:has(> .hs-stats) .hs-export-button[data-format=csv]"
    text = _download(dash_duo, tmp_path, selector, f"head-1-3-{title}.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["name"], r["value"]) for r in rows] == list(
        zip(shown[::2], shown[1::2], strict=True)
    )
    assert dash_duo.get_logs() == []


@pytest.mark.browser
def test_overview_thumbnails_export_raw_weights(dash_duo, toy_model):
    """The grid shows each map over its own max (z) and keeps the weights in
    customdata: the export holds both, and customdata is the captured weight."""
    pattern = hs.capture(toy_model, PROMPT).pattern.float().numpy()
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.wait_for_page(dash_duo.server_url + routes.href("/", PROMPT))
    until(
        lambda: dash_duo.driver.execute_script(
            "const gd = document.querySelector('#overview-grid .js-plotly-plot');"
            "return !!(gd && gd.data && gd.data.length === 2);"
        ),
        timeout=30,
    )
    text = dash_duo.driver.execute_script(
        "const gd = document.querySelector('#overview-grid .js-plotly-plot');"
        "return window.headscopeExport.graphText(gd, 'overview-grid', 'csv');"
    )
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["type"] == "heatmap"]
    checked = 0
    for row in rows:
        if row["customdata"] == "":
            continue  # the gaps between thumbnails
        layer = int(row["y"].split(" ")[1])
        query = int(row["y"].split("· query ")[1].split(" ")[0])
        head = int(row["x"].split(" ")[1])
        key = int(row["x"].split("· key ")[1].split(" ")[0])
        weight = pattern[layer, head, query, key]
        assert float(row["customdata"]) == pytest.approx(weight, abs=1e-6)
        peak = pattern[layer, head].max()
        assert float(row["z"]) == pytest.approx(weight / peak, abs=1e-5)
        checked += 1
    n = pattern.shape[-1]
    assert checked == pattern.shape[0] * pattern.shape[1] * n * n
