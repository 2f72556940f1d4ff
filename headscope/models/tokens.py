"""TokenBatch: tokenized prompts, right-padded, with their lengths and strings;
and what the tokenizer did to a text: the words it did not know
(`unknown_words`), the special tokens put around it (`added_tokens`), and
the words a small word-level vocabulary holds (`word_vocabulary`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jaxtyping import Bool, Int
from torch import Tensor


@dataclass(frozen=True)
class TokenBatch:
    """Token ids `[batch, position]`, right-padded; `attention_mask` is True on
    real tokens. `tokens[b]` holds the token strings of prompt b (unpadded).
    `single` is True when the input was one prompt (records then drop the
    batch dim). `texts` holds the original strings when the input was text."""

    ids: Int[Tensor, "batch position"]
    attention_mask: Bool[Tensor, "batch position"]
    lengths: tuple[int, ...]
    tokens: tuple[tuple[str, ...], ...]
    single: bool
    texts: tuple[str, ...] | None = None
    prepended_bos: bool = False

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    @property
    def padded(self) -> bool:
        return min(self.lengths) != self.length

    def select(self, rows: Int[Tensor, " row"]) -> TokenBatch:
        """The batch's rows `rows` (repeats allowed) as a new, batched TokenBatch."""
        index = [int(i) for i in rows.tolist()]
        return TokenBatch(
            self.ids[rows],
            self.attention_mask[rows],
            tuple(self.lengths[i] for i in index),
            tuple(self.tokens[i] for i in index),
            False,
            None if self.texts is None else tuple(self.texts[i] for i in index),
            self.prepended_bos,
        )


# -- what the tokenizer did to the text ---------------------------------------------------------


@dataclass(frozen=True)
class UnknownWord:
    """A piece of the input the tokenizer could only map to its unk token:
    `text[start:end]` of the prompt (character offsets)."""

    text: str
    start: int
    end: int


def unknown_words(tokenizer: Any, text: str) -> tuple[UnknownWord, ...]:
    """The pieces of `text` that became the tokenizer's unk token, in order.

    Fast tokenizers map each unk token back to its characters (offsets); slow
    ones are checked word by word (whitespace-separated). A tokenizer without
    an unk token reports none; so does the unk token typed literally (it is
    not a word the tokenizer failed on)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not text:
        return ()
    literal = str(getattr(tokenizer, "unk_token", "") or "")
    found: list[UnknownWord] = []
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for token, (start, end) in zip(
            encoded["input_ids"], encoded["offset_mapping"], strict=False
        ):
            if token != unk or end <= start:
                continue
            if found and start <= found[-1].end:
                # touching unk pieces (one word split in several): report them once
                start = found.pop().start
            found.append(UnknownWord(text[start:end], start, end))
    else:
        for match in re.finditer(r"\S+", text):
            ids = tokenizer(match.group(), add_special_tokens=False)["input_ids"]
            if unk in ids:
                found.append(UnknownWord(match.group(), match.start(), match.end()))
    return tuple(word for word in found if word.text != literal)


@dataclass(frozen=True)
class AddedTokens:
    """The special tokens put around a prompt's text: `prefix` before it,
    `suffix` after it (token strings)."""

    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()

    @property
    def described(self) -> str:
        """'<bos> prepended', '[CLS] and [SEP] added', '</s> appended' or
        'no special tokens added'."""
        before, after = " ".join(self.prefix), " ".join(self.suffix)
        if before and after:
            return f"{before} and {after} added"
        if before:
            return f"{before} prepended"
        if after:
            return f"{after} appended"
        return "no special tokens added"


def added_tokens(tokenizer: Any, ids: Sequence[int], plain: Sequence[int]) -> AddedTokens:
    """What separates `ids` (a prompt as the model gets it) from `plain` (the
    same text tokenized without special tokens): the tokens before and after
    `plain` inside `ids`. Where `plain` does not occur whole in `ids`, the
    special tokens leading and trailing `ids` beyond those of `plain` count."""
    ids, plain = [int(i) for i in ids], [int(i) for i in plain]
    width = len(plain)
    start = next((i for i in range(len(ids) - width + 1) if ids[i : i + width] == plain), None)
    if start is not None:
        before, after = ids[:start], ids[start + width :]
    else:
        special = {int(i) for i in getattr(tokenizer, "all_special_ids", None) or ()}

        def run(row: list[int]) -> int:
            count = 0
            while count < len(row) and row[count] in special:
                count += 1
            return count

        lead = max(run(ids) - run(plain), 0)
        trail = max(run(ids[::-1]) - run(plain[::-1]), 0)
        before, after = ids[:lead], ids[len(ids) - trail :] if trail else []
    return AddedTokens(
        tuple(tokenizer.convert_ids_to_tokens(before)),
        tuple(tokenizer.convert_ids_to_tokens(after)),
    )


#: `word_vocabulary` lists vocabularies of at most this many entries.
SMALL_VOCABULARY = 1000


def word_vocabulary(tokenizer: Any, limit: int = SMALL_VOCABULARY) -> tuple[str, ...] | None:
    """Every word a small word-level tokenizer knows (a `tokenizers` WordLevel
    model with at most `limit` entries), special tokens left out, sorted; None
    for any other tokenizer (subwords, bytes, large vocabularies)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    if model is None or type(model).__name__ != "WordLevel":
        return None
    vocabulary = backend.get_vocab(with_added_tokens=True)
    if len(vocabulary) > limit:
        return None
    special = set(getattr(tokenizer, "all_special_tokens", None) or ())
    return tuple(sorted(word for word in vocabulary if word not in special))
