"""Server-side checks of what the browser sends: indices in range, choices
from a whitelist, click payloads of a known shape. Anything else is refused
with an InputError (shown on the page), never trusted."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from headscope.dashboard.session import MAX_PROMPT_CHARS
from headscope.errors import InputError
from headscope.models.spec import ModelSpec

T = TypeVar("T")


_INTEGER = re.compile(r"[+-]?\d{1,9}")


def as_int(value: object) -> int | None:
    """`value` as an int when it is one: an int (not a bool), a float with an
    integer value, or a string of up to 9 digits; None for anything else
    (inf, nan, 1.5, "x", None, lists...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    return None


def shown(value: object, limit: int = 40) -> str:
    """A short, printable repr of a value from the browser, for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_head(spec: ModelSpec, layer: object, head: object) -> tuple[int, int]:
    """(layer, head) as ints within the model; InputError otherwise."""
    layer_i, head_i = as_int(layer), as_int(head)
    if layer_i is None or head_i is None:
        raise InputError(f"layer and head must be integers, got {shown(layer)}, {shown(head)}")
    if not 0 <= layer_i < spec.n_layers:
        raise InputError(
            f"layer {layer_i} does not exist: {spec.name} has layers 0–{spec.n_layers - 1}"
        )
    if not 0 <= head_i < spec.n_heads:
        raise InputError(
            f"head {head_i} does not exist: {spec.name} has heads 0–{spec.n_heads - 1} per layer"
        )
    return layer_i, head_i


def choice(value: object, allowed: Sequence[T], default: T) -> T:
    """`value` if it is one of `allowed`, else `default`."""
    return value if value in allowed else default  # type: ignore[return-value]


def check_index(value: object, size: int, *, name: str = "index", default: int | None = None):
    """An int in [0, size); `default` (or InputError) for anything else. Negative
    values count from the end, as in Python."""
    if value is None and default is not None:
        return default
    index = as_int(value)
    if index is None:
        if default is not None:
            return default
        raise InputError(f"{name} must be an integer, got {shown(value)}")
    if index < 0:
        index += size
    if not 0 <= index < size:
        if default is not None:
            return default
        raise InputError(f"{name} {shown(value)} is out of range (0–{size - 1})")
    return index


def check_number(value: object, low: float, high: float, default: float) -> float:
    """A float clipped to [low, high]; `default` for anything not a finite number
    (bools, NaN, infinity, text that is not a number, huge values)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return default
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return default
    if not math.isfinite(number):
        return default
    return min(high, max(low, number))


def check_fraction(value: object, default: float = 1.0) -> float:
    """A float in [0, 1] (clipped); `default` for anything not a finite number."""
    return check_number(value, 0.0, 1.0, default)


def clicked_head(click_data: Any, spec: ModelSpec) -> tuple[int, int] | None:
    """(layer, head) from a head-grid or layer × head heatmap click, validated;
    None when the payload holds no head."""
    try:
        point = click_data["points"][0]
    except (TypeError, KeyError, IndexError):
        return None
    custom = point.get("customdata") if isinstance(point, dict) else None
    if isinstance(custom, (list, tuple)) and len(custom) == 2:
        layer, head = custom
    elif isinstance(point, dict) and "x" in point and "y" in point:
        layer, head = point["y"], point["x"]
    else:
        return None
    try:
        return check_head(spec, layer, head)
    except InputError:
        return None


def check_gates(value: Any, spec: ModelSpec) -> list[list[float]]:
    """A `[layer][head]` grid of gates in [0, 1]; all ones when malformed."""
    ones = [[1.0] * spec.n_heads for _ in range(spec.n_layers)]
    if not isinstance(value, list) or len(value) != spec.n_layers:
        return ones
    grid = []
    for row in value:
        if not isinstance(row, list) or len(row) != spec.n_heads:
            return ones
        grid.append([check_fraction(g, 1.0) for g in row])
    return grid


def prompt_lines(text: object, *, limit: int = 32) -> list[str]:
    """Non-empty lines of a prompt-set text box (at most `limit`, each checked
    later as a prompt)."""
    if not isinstance(text, str):
        raise InputError("the prompt set is empty: write one prompt per line")
    if len(text) > limit * MAX_PROMPT_CHARS:
        raise InputError(
            f"the prompt set has {len(text):,} characters; the dashboard takes at most "
            f"{limit * MAX_PROMPT_CHARS:,}"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError("the prompt set is empty: write one prompt per line")
    if len(lines) > limit:
        raise InputError(f"the prompt set has {len(lines)} prompts; the dashboard takes {limit}")
    return lines


def clicked_index(trigger: object, clicks: object, limit: int) -> int | None:
    """The index of the token chip whose click fired a pattern-matching callback
    (`trigger`: `ctx.triggered_id`, `{"type": ..., "index": i}`; `clicks`: the
    chips' n_clicks), or None when nothing was clicked or the index is not one
    of the `limit` chips shown."""
    if not isinstance(trigger, dict) or not isinstance(clicks, list) or not any(clicks):
        return None
    index = as_int(trigger.get("index"))
    return index if index is not None and 0 <= index < limit else None
