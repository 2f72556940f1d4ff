"""Prompt files: .txt and .jsonl, line-numbered errors, skip or fail."""

from __future__ import annotations

import re

import pytest

from headscope.errors import InputError
from headscope.reports.prompts import load_prompts


def test_txt_one_prompt_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\n  second prompt  \n")
    items = load_prompts(path).items
    assert [(i.prompt, i.line) for i in items] == [("first prompt", 1), ("second prompt", 3)]


def test_jsonl_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a b", "target": " c", "corrupted": "a x c"}\n{"prompt": "d"}\n')
    first, second = load_prompts(path).items
    assert (first.prompt, first.target, first.corrupted, first.line) == ("a b", " c", "a x c", 1)
    assert second.target is None and second.line == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a"]', "line 2: expected a JSON object"),
        ('{"text": "a"}', "line 2: unknown fields"),
        ('{"prompt": ""}', "line 2: needs a non-empty string 'prompt'"),
        ('{"prompt": "a", "answer": 3}', "line 2: 'answer' must be a string"),
    ],
)
def test_malformed_lines_fail_with_their_number(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n" + '{"prompt": "also ok"}\n')
    with pytest.raises(InputError, match=message):
        load_prompts(path)
    skipped = load_prompts(path, on_bad_line="skip")
    assert [i.line for i in skipped.items] == [1, 3]
    assert len(skipped.skipped) == 1 and message in skipped.skipped[0]


def test_empty_missing_and_wrong_suffix(tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="holds no prompts"):
        load_prompts(empty)
    with pytest.raises(InputError, match="no prompt file"):
        load_prompts(tmp_path / "missing.txt")
    other = tmp_path / "p.csv"
    other.write_text("a\n")
    with pytest.raises(InputError, match=r"\.txt or \.jsonl"):
        load_prompts(other)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("a\nb\n".encode("utf-16"), "is UTF-16 text (byte order mark), not UTF-8"),
        (b"\xfe\xff" + "a\nb\n".encode("utf-16-be"), "is UTF-16 text"),
        ("a\nb\n".encode("utf-32"), "is UTF-32 text (byte order mark), not UTF-8"),
        (b"ok\r\nok\r\n\xff\xfe rest", "line 3: not UTF-8 text (byte 0xff)"),
        (b"\x00\x01\x02binary", "line 1: a NUL byte"),
        (b"ok\n" + "utf-16 without a mark".encode("utf-16-le"), "line 2: a NUL byte"),
    ],
)
def test_a_file_that_is_not_utf8_fails_naming_the_file_and_line(tmp_path, data, message):
    for suffix in (".txt", ".jsonl"):
        path = tmp_path / f"p{suffix}"
        path.write_bytes(data)
        for mode in ("fail", "skip"):  # the file, not a line, is wrong: never skipped
            with pytest.raises(InputError, match=re.escape(message)) as caught:
                load_prompts(path, on_bad_line=mode)
            assert str(caught.value).startswith(str(path)) and "save it as UTF-8" in str(
                caught.value
            )


def test_a_utf8_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "caf\xc3\xa9"}\n')
    assert load_prompts(path).items[0].prompt == "café"


def test_a_lone_surrogate_is_a_malformed_line(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        '{"prompt": "ok \\ud83d\\ude00"}',
        '{"prompt": "a", "target": " b\\udc00"}',
        '{"prompt": "c"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    message = "line 2: 'target' holds a lone surrogate (\\udc00)"
    with pytest.raises(InputError, match=re.escape(message)):
        load_prompts(path)
    skipped = load_prompts(path, on_bad_line="skip")
    assert [i.prompt for i in skipped.items] == ["ok 😀", "c"]
    assert skipped.skipped[0].startswith(message)
