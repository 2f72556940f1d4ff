"""Browser set-up for dash.testing: Debian's headless chromium and chromedriver.

dash.testing builds its Chrome options from the first object returned by the
`pytest_setup_options` hook, adds `--headless` only when pytest gets
`--headless`, and starts `webdriver.Chrome(options=...)`, which finds
`chromedriver` on PATH. We pass the binary and every flag here so that a plain
`pytest` run is headless and offline.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("DASH_TEST_CHROMEPATH", "/usr/bin/chromium"))
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = CHROMIUM.exists() and Path(CHROMEDRIVER).exists()
SKIP_REASON = (
    f"browser tests need {CHROMIUM} and chromedriver "
    "(Debian: apt-get install -y chromium chromium-driver)"
)


def pytest_setup_options():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.remote.remote_connection import RemoteConnection

    # selenium 3.141 hands urllib3 a sentinel timeout object that urllib3 2.x
    # rejects; an explicit number works with every selenium and urllib3.
    RemoteConnection.set_timeout(60)

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return options


def pytest_collection_modifyitems(config, items):
    if HAVE_BROWSER:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toy_session(toy_model):
    from headscope.dashboard.session import ModelSession

    return ModelSession(toy_model)


@pytest.fixture(scope="session")
def minilm_session(minilm_model):
    from headscope.dashboard.session import ModelSession

    return ModelSession(minilm_model)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where browser tests save screenshots (git-ignored)."""
    folder = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
