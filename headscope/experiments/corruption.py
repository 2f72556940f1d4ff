"""Corrupted prompts for patching (docs/methods.md §2.5): a clean prompt with
some words changed, keeping its token count (patching puts clean z back
position by position, so both runs need the same length).

    corruption = replace_repeat(model, "red cat blue dog red cat blue dog")
    corruption.text       # "red cat blue dog sun key pen milk": the second copy replaced
    corruption.changed    # token positions whose ids differ: (5, 6, 7, 8)

Three helpers, each working on words (runs of letters or digits) and keeping every
word's token count, so the corrupted prompt lines up with the clean one token
by token:

- `replace_repeat`: the later copy of the longest repeated run of words
  (`A B C … A B C …`) replaced by words found nowhere in the prompt: nothing
  left for an induction head to copy (Olsson et al. 2022).
- `shuffle_words`: the words in a random order.
- `swap_token`: the word holding one token position replaced by another word.

Replacement words come from the model's own vocabulary: its known words for a
word-level vocabulary (toy-induction's), else whole-word tokens drawn from the
tokenizer. Everything is seeded. Where no corruption of the same length exists
(no repeat, one distinct word, no replacement of that token length) the
helpers raise InputError saying why.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel

#: A word: a run of letters or digits (punctuation and spaces stay as they are).
_WORD = re.compile(r"[^\W_]+")
#: Shuffles (or candidate rounds) tried before a helper gives up.
ATTEMPTS = 50
#: Whole-word tokens drawn from a large vocabulary as replacement candidates.
POOL_SIZE = 600


@dataclass(frozen=True)
class TokenDifference:
    """A clean and a corrupted prompt token by token: their token strings,
    the positions whose ids differ (over the common length) and whether the
    lengths agree (patching needs them to)."""

    clean_tokens: tuple[str, ...]
    corrupted_tokens: tuple[str, ...]
    changed: tuple[int, ...]

    @property
    def equal_length(self) -> bool:
        return len(self.clean_tokens) == len(self.corrupted_tokens)

    @property
    def described(self) -> str:
        """One line: both token counts, and the changed positions or the mismatch."""
        counts = f"clean {len(self.clean_tokens)} tokens, corrupted {len(self.corrupted_tokens)}"
        if not self.equal_length:
            return f"{counts}: patching needs equal token counts"
        if not self.changed:
            return f"{counts}: the two prompts have the same tokens"
        shown = ", ".join(str(p) for p in self.changed[:12])
        more = " …" if len(self.changed) > 12 else ""
        plural = "s differ" if len(self.changed) != 1 else " differs"
        return f"{counts}; {len(self.changed)} position{plural} ({shown}{more})"


@dataclass(frozen=True)
class Corruption:
    """A corrupted prompt (`text`), what was done (`description`) and how it
    differs from the clean prompt token by token (`difference`)."""

    clean: str
    text: str
    description: str
    difference: TokenDifference

    @property
    def changed(self) -> tuple[int, ...]:
        return self.difference.changed


def token_difference(model: HeadscopeModel, clean: str, corrupted: str) -> TokenDifference:
    """Tokenize both prompts (as the model sees them, special tokens included)
    and compare them position by position."""
    a, b = model.tokenize(clean), model.tokenize(corrupted)
    ids_a, ids_b = a.ids[0].tolist(), b.ids[0].tolist()
    changed = tuple(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y)
    return TokenDifference(a.tokens[0], b.tokens[0], changed)


# -- words and their tokens -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Words:
    """The words of a text: character spans and, per word, its token positions
    in the model's input (special tokens counted)."""

    text: str
    spans: tuple[tuple[int, int], ...]
    positions: tuple[tuple[int, ...], ...]
    n_tokens: int

    @property
    def words(self) -> list[str]:
        return [self.text[s:e] for s, e in self.spans]

    def counts(self) -> list[int]:
        return [len(p) for p in self.positions]

    def replaced(self, new: dict[int, str]) -> str:
        """The text with word i replaced by new[i] (the text between words kept)."""
        parts, last = [], 0
        for i, (start, end) in enumerate(self.spans):
            parts += [self.text[last:start], new.get(i, self.text[start:end])]
            last = end
        return "".join([*parts, self.text[last:]])


def _words(model: HeadscopeModel, text: str) -> _Words:
    full = model.tokenize(text)  # InputError: empty, too long, not text
    plain = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = plain.get("offset_mapping")
    if offsets is None:
        raise InputError(
            f"{model.spec.name}'s tokenizer gives no character offsets, so words cannot be "
            "matched to tokens; write the corrupted prompt by hand"
        )
    prefix = len(model.added_tokens(text).prefix)
    n_tokens = full.lengths[0]
    if prefix + len(offsets) > n_tokens:
        raise InputError("the tokenizer's tokens do not line up with the prompt's; edit by hand")
    spans = tuple((m.start(), m.end()) for m in _WORD.finditer(text))
    positions: list[list[int]] = [[] for _ in spans]
    word = 0
    for j, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        while word < len(spans) and spans[word][1] <= start:
            word += 1
        if word < len(spans) and start < spans[word][1] and end > spans[word][0]:
            positions[word].append(prefix + j)
    return _Words(text, spans, tuple(tuple(p) for p in positions), n_tokens)


def _candidates(model: HeadscopeModel, seed: int) -> list[str]:
    """Replacement words: the known words of a word-level vocabulary, else up to
    POOL_SIZE whole-word tokens of the tokenizer (alphabetic, 3–10 letters)."""
    known = model.word_vocabulary()
    if known:
        return list(known)
    tokenizer = model.tokenizer
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = list(range(len(tokenizer)))
    random.Random(seed).shuffle(ids)
    pool: list[str] = []
    for token_id in ids:
        if token_id in special:
            continue
        word = tokenizer.decode([token_id]).strip()
        if 3 <= len(word) <= 10 and word.isascii() and word.isalpha() and word.islower():
            pool.append(word)
            if len(pool) >= POOL_SIZE:
                break
    return list(dict.fromkeys(pool))


def _token_counts(model: HeadscopeModel, words: Sequence[str]) -> list[int]:
    """Tokens of each word written after a space (as most words of a prompt are)."""
    if not words:
        return []
    rows = model.tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return [len(row) for row in rows]


def _proposals(model: HeadscopeModel, pool: list[str], count: int, rng: random.Random) -> list[str]:
    """Replacement candidates of `count` tokens (on their own, after a space):
    pool words, and for a word of several tokens also pool words written
    together (an unknown compound splits into pieces), shuffled."""
    counts = _token_counts(model, pool)
    found = [w for w, n in zip(pool, counts, strict=True) if n == count]
    if count > 1 and len(found) < ATTEMPTS and len(pool) >= 2:
        joined = {
            "".join(rng.sample(pool, rng.randint(2, min(count, 3)))) for _ in range(40 * ATTEMPTS)
        }
        trials = sorted(joined)
        found += [
            w for w, n in zip(trials, _token_counts(model, trials), strict=True) if n == count
        ]
    rng.shuffle(found)
    return found


def _replace_words(
    model: HeadscopeModel,
    parsed: _Words,
    chosen: Sequence[int],
    exclude: set[str],
    seed: int,
) -> str:
    """The text with each word in `chosen` replaced by a different word with
    the same number of tokens where it stands, none of them in `exclude` and no
    two alike; InputError when none is found. A word of k > 1 tokens may be
    replaced by candidates written together (see `_proposals`)."""
    rng = random.Random(seed)
    pool = [w for w in _candidates(model, seed) if w.lower() not in exclude]
    counts = parsed.counts()
    proposals = {n: _proposals(model, pool, n, rng) for n in sorted({counts[i] for i in chosen})}
    tried: dict[int, int] = dict.fromkeys(chosen, 0)
    new: dict[int, str] = {}
    pending = list(chosen)
    for _ in range(ATTEMPTS):
        for index in pending:
            options = proposals[counts[index]]
            used = set(new.values())
            while tried[index] < len(options) and options[tried[index]] in used:
                tried[index] += 1
            if tried[index] >= len(options):
                pending = [index]
                break
            new[index] = options[tried[index]]
            tried[index] += 1
        else:
            trial = _words(model, parsed.replaced(new))
            pending = [i for i in chosen if trial.counts()[i] != counts[i]]
            if not pending and trial.n_tokens == parsed.n_tokens:
                return trial.text
            for index in pending:
                new.pop(index)
            continue
        break
    words = parsed.words
    missing = ", ".join(f"{words[i]!r} ({counts[i]} tokens)" for i in (pending or chosen)[:5])
    raise InputError(
        f"found no replacement with the same token count, absent from the prompt, for "
        f"{missing}; write the corrupted prompt by hand"
    )


def _result(model: HeadscopeModel, clean: str, text: str, description: str) -> Corruption:
    difference = token_difference(model, clean, text)
    if not difference.equal_length or not difference.changed:  # guarded by the helpers
        raise InputError(f"the corruption failed: {difference.described}")
    return Corruption(clean, text, description, difference)


# -- the helpers ----------------------------------------------------------------------------------


def repeated_span(words: Sequence[str]) -> tuple[int, int, int] | None:
    """(first start, second start, length) of the longest run of words that
    occurs twice without overlap (the earliest such pair), or None when no run
    of 2 or more words repeats. O(n²) time and memory over n words."""
    n = len(words)
    best = (0, 0, 0)
    previous = [0] * (n + 1)
    for i in range(1, n + 1):
        current = [0] * (n + 1)
        for j in range(i + 1, n + 1):
            if words[i - 1] == words[j - 1]:
                current[j] = min(previous[j - 1] + 1, j - i)
                if current[j] > best[2]:
                    best = (i - current[j], j - current[j], current[j])
        previous = current
    return best if best[2] >= 2 else None


def replace_repeat(model: HeadscopeModel, text: str, *, seed: int = 0) -> Corruption:
    """The later copy of the prompt's longest repeated run of words replaced by
    words that occur nowhere in the prompt, each with the token count of the
    word it replaces: for `A B C … A B C …` prompts, it leaves an induction
    head nothing to copy. InputError when no run of 2 or more words repeats."""
    parsed = _words(model, text)
    words = parsed.words
    found = repeated_span(words)
    if found is None:
        raise InputError(
            "the prompt has no repeated run of 2 or more words (as in 'A B C … A B C …'), "
            "so there is no repeated half to replace"
        )
    first, second, length = found
    chosen = list(range(second, second + length))
    corrupted = _replace_words(model, parsed, chosen, {w.lower() for w in words}, seed)
    return _result(
        model,
        text,
        corrupted,
        f"replaced the repeat of words {first}–{first + length - 1} (words "
        f"{second}–{second + length - 1}) by {length} words absent from the prompt",
    )


def shuffle_words(model: HeadscopeModel, text: str, *, seed: int = 0) -> Corruption:
    """The prompt's words in a random order (seeded), a shuffle that changes
    the tokens and keeps their count. InputError for fewer than two distinct
    words."""
    parsed = _words(model, text)
    words = parsed.words
    if len(set(words)) < 2:
        raise InputError("shuffling needs at least two different words in the prompt")
    rng = random.Random(seed)
    for _ in range(ATTEMPTS):
        order = list(range(len(words)))
        rng.shuffle(order)
        corrupted = parsed.replaced({i: words[j] for i, j in enumerate(order)})
        difference = token_difference(model, text, corrupted)
        if difference.equal_length and difference.changed:
            return Corruption(text, corrupted, f"shuffled the {len(words)} words", difference)
    raise InputError(
        f"no shuffle of the words kept the token count in {ATTEMPTS} tries; edit by hand"
    )


def swap_token(model: HeadscopeModel, text: str, position: int, *, seed: int = 0) -> Corruption:
    """The word holding token `position` (counted as the model sees the
    prompt, special tokens included) replaced by a word absent from the prompt
    with the same token count. InputError for a position out of range or on a
    special token."""
    parsed = _words(model, text)
    if isinstance(position, bool) or not isinstance(position, int):
        raise InputError(f"the position must be an integer, got {position!r}")
    if not 0 <= position < parsed.n_tokens:
        raise InputError(
            f"position {position} is out of range: the prompt has tokens 0–{parsed.n_tokens - 1}"
        )
    owner = [i for i, p in enumerate(parsed.positions) if position in p]
    if not owner:
        token = model.tokenize(text).tokens[0][position]
        raise InputError(
            f"position {position} is {token!r}, a special token the tokenizer adds, not part of "
            "a word; pick another position"
        )
    index = owner[0]
    words = parsed.words
    corrupted = _replace_words(model, parsed, [index], {w.lower() for w in words}, seed)
    new = _words(model, corrupted).words[index]
    return _result(model, text, corrupted, f"replaced word {index} {words[index]!r} by {new!r}")


__all__ = [
    "Corruption",
    "TokenDifference",
    "repeated_span",
    "replace_repeat",
    "shuffle_words",
    "swap_token",
    "token_difference",
]
