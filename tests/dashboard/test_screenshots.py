"""The README's pictures: every page of the navigation (`routes.NAV_PAGES`) on the
toy model, waited for until its figures are drawn (and none shows an error),
saved as <page>.png, the whole page at a fixed width (1200 px). The PNGs are
re-compressed when pngquant or optipng is on PATH.

A plain test run saves them under artifacts/dashboard/readme/ (the working
tree stays clean); to refresh the README's copies in docs/images/ after adding
or changing a page:

    HEADSCOPE_README_SCREENSHOTS=1 pytest tests/dashboard/test_screenshots.py
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from browser_wait import until
from selenium.webdriver.common.action_chains import ActionChains

from headscope.dashboard import routes
from headscope.dashboard.app import create_app

ROOT = Path(__file__).resolve().parents[2]
#: Where the README's pictures live, and where a plain test run puts its own.
IMAGES = ROOT / "docs" / "images"
SCRATCH = ROOT / "artifacts" / "dashboard" / "readme"
WIDTH = 1200
#: The tallest picture kept (px): long pages are cut there.
MAX_HEIGHT = 2400
#: A prompt the toy model's circuit answers (a repeated word list).
PROMPT = "red cat blue dog sun tree key pen red cat blue dog sun tree key pen"
#: The head page shows toy-induction's induction head (see its MODEL_CARD.md).
INDUCTION_HEAD = (1, 3)
LONG_TEXT = " ".join(["red cat blue dog sun tree key pen milk ship"] * 10)


def _idle(dash_duo, timeout: float = 60) -> None:
    time.sleep(0.5)
    until(dash_duo._wait_for_callbacks, timeout=timeout, poll=0.2)


def _figures_drawn(dash_duo) -> bool:
    """Every plotly graph on the page has been drawn at least once."""
    return dash_duo.driver.execute_script(
        "const plots = document.querySelectorAll('.js-plotly-plot');"
        "return plots.length > 0 && Array.from(plots).every(p => p._fullLayout);"
    )


def _full_page(driver) -> bytes:
    """The whole page (up to MAX_HEIGHT) at WIDTH css px, as PNG: the viewport
    is stretched to the content's height (chromium's device metrics), so
    nothing is cut and the page lays out as in a tall window."""
    height = 900
    for _ in range(3):  # the layout may grow once the viewport is taller
        content = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        wanted = max(600, min(int(content["height"]) + 8, MAX_HEIGHT))
        if wanted == height:
            break
        height = wanted
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        time.sleep(0.8)  # plotly redraws on resize
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"format": "png", "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1}},
    )
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return base64.b64decode(shot["data"])


def _optimise(path: Path) -> None:
    if shutil.which("pngquant"):
        subprocess.run(
            ["pngquant", "--force", "--skip-if-larger", "--quality=70-95", "--output", path, path],
            check=False,
            capture_output=True,
        )
    if shutil.which("optipng"):
        subprocess.run(["optipng", "-quiet", "-o2", path], check=False, capture_output=True)


def _prepare(dash_duo, page) -> None:
    """What a page needs before it shows something worth a picture."""
    if page.kind == "long":
        box = dash_duo.find_elements("#lc-text")
        if box:
            dash_duo.driver.execute_script(
                "const el = arguments[0];"
                "const set = Object.getOwnPropertyDescriptor("
                "Object.getPrototypeOf(el), 'value').set;"
                "set.call(el, arguments[1]);"
                "el.dispatchEvent(new Event('input', {bubbles: true}));",
                box[0],
                LONG_TEXT,
            )
    buttons = ("#imp-run", "#lc-run", "#flow-run", "#patch-run", "#contrib-run", "#clu-run")
    for button in (*buttons, "#dyn-run", "#dyn-diff-run", "#ret-run"):
        found = dash_duo.find_elements(button)
        if found and found[0].is_displayed() and found[0].is_enabled():
            found[0].click()
            _idle(dash_duo, 240)


@pytest.mark.browser
def test_every_page_has_a_readme_screenshot(dash_duo, toy_model):
    folder = IMAGES if os.environ.get("HEADSCOPE_README_SCREENSHOTS") == "1" else SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    dash_duo.start_server(create_app(model=toy_model))
    dash_duo.driver.set_window_size(WIDTH, 900)
    saved = []
    for page in routes.NAV_PAGES:
        if page.kind in routes.VISION_KINDS:  # taken on toy-vit by test_vision_page.py
            continue
        address = routes.head_path(*INDUCTION_HEAD) if page.kind == "head" else page.path
        dash_duo.wait_for_page(dash_duo.server_url + routes.href(address, PROMPT))
        dash_duo.wait_for_element(".hs-page-title", timeout=30)
        _idle(dash_duo)
        _prepare(dash_duo, page)
        until(lambda: _figures_drawn(dash_duo), timeout=60, poll=0.3)
        _idle(dash_duo)
        failed = [e.text for e in dash_duo.find_elements("#page-content .hs-alert-error")]
        assert not failed, (page.kind, failed)  # no picture of a failing page
        dash_duo.driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
        # the pointer rests on the header: no hover label or toolbar in the picture
        ActionChains(dash_duo.driver).move_to_element(dash_duo.find_element(".hs-brand")).perform()
        path = folder / f"{page.kind}.png"
        path.write_bytes(_full_page(dash_duo.driver))
        _optimise(path)
        assert path.stat().st_size > 10_000, page.kind
        assert dash_duo.get_logs() == [], page.kind
        saved.append(page.kind)
    assert saved == [page.kind for page in routes.NAV_PAGES if page.kind not in routes.VISION_KINDS]


def test_the_readme_shows_and_describes_every_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in routes.NAV_PAGES:
        assert (IMAGES / f"{page.kind}.png").is_file(), page.kind
        assert f"](docs/images/{page.kind}.png)" in readme, page.kind
        assert f"- **{page.title}**:" in readme, page.title
