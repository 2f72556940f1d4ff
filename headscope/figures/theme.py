"""The stylesheet shared by the dashboard and the HTML report (`theme.css`, package
data beside this module): colours and fonts as CSS variables (`--hs-ink`,
`--hs-mono`, ...), body text, headings, cards, grids and tables as `hs-` classes.

    THEME_CSS  # the stylesheet's text, read once at import

Both pages inline it (no network, no asset folder), so they look alike.
"""

from __future__ import annotations

from importlib.resources import files

THEME_CSS: str = files("headscope.figures").joinpath("theme.css").read_text(encoding="utf-8")

__all__ = ["THEME_CSS"]
