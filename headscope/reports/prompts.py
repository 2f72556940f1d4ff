"""Prompt files for batch reports: `.txt` (one prompt per line) or `.jsonl`.

A JSONL line is an object with "prompt" and, as the metric needs, "target",
"corrupted" (for attribution patching), "answer" and "wrong" (for logit
difference). Malformed lines are reported with their line numbers.

Files are UTF-8 (a leading byte order mark is dropped), decoded strictly: a
UTF-16 file, a binary file, bytes that are not UTF-8 or a NUL byte fail with
the line they are on, whatever `on_bad_line` says (the file, not a line, is
wrong); a JSON string holding a lone surrogate (`"\\ud800"`, no character) is
a malformed line.
"""

from __future__ import annotations

import codecs
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
    for number, raw in enumerate(read_text(path).splitlines(), start=1):
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


def read_text(path: Path) -> str:
    """The file's text, strictly UTF-8 (a leading UTF-8 byte order mark
    dropped); InputError naming the file, the line and what to do otherwise."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the prompt file {path}: {error.strerror or error}") from None
    fix = "save it as UTF-8 text"
    for boms, name in (
        ((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE), "UTF-32"),
        ((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE), "UTF-16"),
    ):
        if data.startswith(boms):
            raise InputError(f"{path} is {name} text (byte order mark), not UTF-8; {fix}")
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = _line_of(data[: error.start].decode("utf-8"))
        raise InputError(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
            f"is it binary or UTF-16? {fix}"
        ) from None
    nul = text.find("\0")
    if nul >= 0:
        raise InputError(
            f"{path} line {_line_of(text[:nul])}: a NUL byte; is it binary or UTF-16? {fix}"
        )
    return text


def _line_of(before: str) -> int:
    """The 1-based line (as `str.splitlines` numbers them) of the character after `before`."""
    return len((before + "x").splitlines())


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
    for field, value in data.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            bad = ord(value[error.start])
            raise InputError(
                f"line {number}: '{field}' holds a lone surrogate (\\u{bad:04x}), which is no "
                "character; remove it or escape a whole pair"
            ) from None
    return PromptItem(line=number, **{k: v for k, v in data.items()})
