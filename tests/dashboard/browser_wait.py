"""`until` for browser tests, tolerant of re-rendering.

dash.testing's `until` lets any exception of the condition through. A condition
that finds an element and then reads its text races the renderer: when dash
replaces the element in between, selenium raises StaleElementReferenceException
and the test fails although the page is right. Here that counts as "not yet",
and the condition is asked again at the next poll.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dash.testing.wait import until as _until
from selenium.common.exceptions import StaleElementReferenceException


def until(
    condition: Callable[[], Any],
    timeout: float,
    poll: float = 0.1,
    msg: str = "expected condition not met within timeout",
) -> Any:
    """dash.testing's `until`, with a stale element read as a condition not yet met."""

    def settled() -> Any:
        try:
            return condition()
        except StaleElementReferenceException:
            return False

    return _until(settled, timeout, poll=poll, msg=msg)
