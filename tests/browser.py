"""Debian's headless chromium for the browser tests (dash.testing and selenium over
file://): the binary, the driver, and flags that keep it offline and quiet."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = Path(os.environ.get("DASH_TEST_CHROMEPATH", "/usr/bin/chromium"))
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = CHROMIUM.exists() and Path(CHROMEDRIVER).exists()
SKIP_REASON = (
    f"browser tests need {CHROMIUM} and chromedriver "
    "(Debian: apt-get install -y chromium chromium-driver)"
)
FLAGS = (
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
    # A desktop with a mouse: headless chromium reports no hover, and plotly then shows
    # its "hover" toolbars permanently.
    "--blink-settings=primaryHoverType=2,availableHoverTypes=2,primaryPointerType=4,availablePointerTypes=4",
)


def chrome_options():
    """selenium Options for headless, offline chromium."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.remote.remote_connection import RemoteConnection

    # selenium 3.141 hands urllib3 a sentinel timeout object that urllib3 2.x
    # rejects; an explicit number works with every selenium and urllib3.
    RemoteConnection.set_timeout(60)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    return options
