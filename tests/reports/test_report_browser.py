"""report.html opened over file:// in headless chromium: the top-heads table is
visible with the ranked rows, every figure renders, and nothing is fetched."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_the_report_opens_and_shows_the_top_heads_table(report_browser, local_report, circuit):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    report_browser.get(local_report.files["html"].resolve().as_uri())
    table = WebDriverWait(report_browser, 30).until(
        expected_conditions.visibility_of_element_located((By.ID, "top-heads"))
    )
    assert report_browser.title == "headscope report: toy-induction"
    for method, rows in local_report.top_heads.items():
        shown = table.find_elements(By.CSS_SELECTOR, f'tr[data-method="{method}"]')
        assert len(shown) == 8, method
        assert all(row.is_displayed() for row in shown)
        for row, expected in zip(shown[:2], rows[:2], strict=True):
            cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            assert cells[0] == method and cells[2] == f"L{expected['layer']}.H{expected['head']}"
    first = table.find_element(By.CSS_SELECTOR, 'tr[data-method="ablation"][data-rank="1"]')
    layer, head = int(first.get_attribute("data-layer")), int(first.get_attribute("data-head"))
    assert (layer, head) in circuit.heads

    # plotly.js is inline: every figure has drawn its SVG, and nothing was fetched
    WebDriverWait(report_browser, 30).until(
        lambda driver: (
            driver.execute_script(
                "return document.querySelectorAll('.plotly-graph-div .main-svg').length"
            )
            >= 9
        )
    )
    assert report_browser.execute_script("return typeof Plotly") == "object"
    fetched = report_browser.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    assert fetched == []
    errors = [
        entry
        for entry in report_browser.get_log("browser")
        if entry.get("level") == "SEVERE" and "favicon" not in entry.get("message", "")
    ]
    assert errors == []
