"""The browser tests' `until`: a stale element is "not yet", anything else is raised."""

from __future__ import annotations

import pytest
from browser_wait import until
from dash.testing import errors
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException


def _answers(*answers):
    """A condition that gives (or raises) each answer in turn, and counts its calls."""
    calls = []

    def condition():
        answer = answers[min(len(calls), len(answers) - 1)]
        calls.append(answer)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return condition, calls


def test_a_stale_element_is_asked_again_until_the_condition_holds():
    condition, calls = _answers(StaleElementReferenceException("re-rendered"), "", "done")
    assert until(condition, timeout=5, poll=0.01) == "done"
    assert len(calls) == 3


def test_a_condition_stale_to_the_end_times_out():
    condition, _ = _answers(StaleElementReferenceException("re-rendered"))
    with pytest.raises(errors.TestingTimeoutError):
        until(condition, timeout=0.1, poll=0.01)


def test_other_errors_are_not_swallowed():
    condition, calls = _answers(NoSuchElementException("#missing"), True)
    with pytest.raises(NoSuchElementException):
        until(condition, timeout=5, poll=0.01)
    assert len(calls) == 1
