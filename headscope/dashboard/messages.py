"""User-visible messages: turn exceptions into one readable line, and keep a
failing callback from taking the page (or the server) down."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from dash import html
from dash.exceptions import PreventUpdate

from headscope.errors import HeadscopeError

log = logging.getLogger("headscope.dashboard")


_SURROGATE = re.compile("[\ud800-\udfff]")

#: Longest message shown on a page (the server log keeps the whole of it).
MAX_MESSAGE_CHARS = 2_000


def safe_text(text: object, limit: int = 20_000) -> str:
    """`text` made safe to send back to the browser: a string, lone surrogates
    replaced by U+FFFD (JSON encoders refuse them), at most `limit` characters."""
    if not isinstance(text, str):
        return ""
    text = text[:limit] + ("…" if len(text) > limit else "")
    return _SURROGATE.sub("\ufffd", text)


def describe(error: BaseException, what: str = "the computation") -> str:
    """One line for the page: the message of errors a user can fix, the type
    and message of anything else (the traceback goes to the server log)."""
    if isinstance(error, HeadscopeError):
        return safe_text(str(error), MAX_MESSAGE_CHARS)
    if isinstance(error, MemoryError):
        return f"{what} ran out of memory; try a shorter prompt"
    text = str(error) or type(error).__name__
    return safe_text(f"{what} failed: {type(error).__name__}: {text}", MAX_MESSAGE_CHARS)


def alert(text: str | None, *, kind: str = "error") -> html.Div | None:
    """A message box (rendered as text, never as HTML), or None for no message."""
    if not text:
        return None
    shown = safe_text(text, MAX_MESSAGE_CHARS) if isinstance(text, str) else text
    return html.Div(shown, className=f"hs-alert hs-alert-{kind}", role="alert")


def guarded(fallback: Callable[[str], Sequence[Any]], what: str = "the computation"):
    """Decorate a callback body: on an exception, log it and return
    `fallback(message)` (the callback's outputs with the message in place)
    instead of letting it reach dash. PreventUpdate passes through."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except PreventUpdate:
                raise
            except HeadscopeError as error:
                return fallback(describe(error, what))
            except Exception as error:
                log.exception("dashboard callback %s failed", function.__name__)
                return fallback(describe(error, what))

        return wrapper

    return decorate
