"""Shared report fixtures: a 12-prompt subset of examples/induction.jsonl, a
fast config (3 shards of 4 prompts, CHG with 2 seeds and 20 steps), one
uninterrupted local report per session, and the toy-induction circuit read
off captured patterns with the taxonomy scores (not hard-coded)."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import CHROMEDRIVER, HAVE_BROWSER, SKIP_REASON, chrome_options

from headscope.reports.config import ReportConfig

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "induction.jsonl"
SUBSET = 12
FAST = {"shard_size": 4, "seeds": 2, "chg_steps": 20}


def pytest_collection_modifyitems(config, items):
    if HAVE_BROWSER:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "browser" in item.keywords and "reports" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    """The first SUBSET lines of examples/induction.jsonl."""
    path = tmp_path_factory.mktemp("prompts") / "induction.jsonl"
    lines = EXAMPLES.read_text(encoding="utf-8").splitlines()[:SUBSET]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def fast_config(prompts_file) -> ReportConfig:
    return ReportConfig(model="toy-induction", prompts=str(prompts_file), **FAST)


@pytest.fixture(scope="session")
def local_report(toy_model, fast_config, tmp_path_factory):
    """One uninterrupted local report: the reference for resume and Ray."""
    from headscope.reports.job import run_report

    out = tmp_path_factory.mktemp("report-local")
    return run_report(fast_config, out, model=toy_model, progress=False)


@pytest.fixture(scope="session")
def report_browser():
    """Headless chromium over selenium, offline (tests/browser.py)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = chrome_options()
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
