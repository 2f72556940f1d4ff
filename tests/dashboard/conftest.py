"""Browser set-up for dash.testing: Debian's headless chromium and chromedriver.

dash.testing builds its Chrome options from the first object returned by the
`pytest_setup_options` hook, adds `--headless` only when pytest gets
`--headless`, and starts `webdriver.Chrome(options=...)`, which finds
`chromedriver` on PATH. We pass the binary and every flag here so that a plain
`pytest` run is headless and offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import HAVE_BROWSER, SKIP_REASON, chrome_options


def pytest_setup_options():
    return chrome_options()


def pytest_collection_modifyitems(config, items):
    if HAVE_BROWSER:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where browser tests save screenshots (git-ignored)."""
    folder = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
