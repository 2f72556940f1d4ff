"""Prompt files for batch reports: `.txt` (one prompt per line) or `.jsonl`.

A JSONL line is an object with "prompt" and, as the metric needs, "target",
"corrupted" (for attribution patching), "answer" and "wrong" (for logit
difference). Malformed lines are reported with their line numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from headscope.errors import InputError

FIELDS = ("prompt", "target", "corrupted", "answer", "wrong")


@dataclass(frozen=True)
class PromptItem:
    """One prompt and its optional companions; `line` is its 1-based line number."""

    prompt: str
    line: int
    target: str | None = None
    corrupted: str | None = None
    answer: str | None = None
    wrong: str | None = None


@dataclass(frozen=True)
class PromptSet:
    items: tuple[PromptItem, ...]
    skipped: tuple[str, ...]  # one message per skipped line


def load_prompts(path: str | Path, *, on_bad_line: Literal["fail", "skip"] = "fail") -> PromptSet:
    """Read prompts; raise InputError for a missing or empty file, or (with
    on_bad_line="fail") for the first malformed JSONL line, naming its number."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no prompt file at {path}")
    if path.suffix not in (".txt", ".jsonl"):
        raise InputError(f"prompt files must be .txt or .jsonl, got {path.name}")
    items: list[PromptItem] = []
    skipped: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        if path.suffix == ".txt":
            items.append(PromptItem(prompt=raw.strip(), line=number))
            continue
        try:
            items.append(_parse_json_line(raw, number))
        except InputError as error:
            if on_bad_line == "fail":
                raise
            skipped.append(str(error))
    if not items:
        raise InputError(f"{path} holds no prompts")
    return PromptSet(tuple(items), tuple(skipped))


def _parse_json_line(raw: str, number: int) -> PromptItem:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InputError(f"line {number}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise InputError(f"line {number}: expected a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InputError(f"line {number}: unknown fields {unknown}; allowed: {list(FIELDS)}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"line {number}: needs a non-empty string 'prompt'")
    for field in FIELDS[1:]:
        if field in data and not isinstance(data[field], str):
            raise InputError(f"line {number}: '{field}' must be a string")
    return PromptItem(line=number, **{k: v for k, v in data.items()})
