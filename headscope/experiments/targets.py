"""Which tokens a loss scores: the target rule, resolved per prompt.

A head's importance depends on what it is measured on. Scored over every
token of a repeated random sequence, the loss is dominated by tokens no head
can predict (the first copy) and the gradient of the circuit heads drowns;
scored over the second copy, the induction circuit is all that matters. Rules:

- `all`: every token after the first.
- `continuation`: the prompt's target continuation (a report line's
  "target"); required.
- `repeats`: tokens an induction (copying) circuit can predict: token q when
  the bigram (x[q−1], x[q]) occurred earlier in the prompt. On
  `[BOS, r_1..r_T, r_1..r_T]` this is r_2..r_T of the second copy (r_1 of
  the second copy follows r_T, which is new).
- `last`: the last token only.
- `auto` (default): `continuation` where the prompt has one, else `repeats`
  where the prompt repeats itself (at least `MIN_REPEATS` such tokens), else
  `all`.

Every resolution is recorded with the number of tokens it scores, so a score
can say what it measured and on how much evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from headscope.errors import InputError

TargetRule = Literal["auto", "all", "continuation", "repeats", "last"]
TARGET_RULES: dict[str, str] = {
    "auto": "the target continuation where given, else the repeated tokens, else every token",
    "all": "every token after the first",
    "continuation": "the target continuation",
    "repeats": "tokens whose preceding bigram occurred earlier (predictable by copying)",
    "last": "the last token",
}
#: `auto` uses `repeats` when at least this many tokens qualify.
MIN_REPEATS = 2


def check_rule(rule: str) -> TargetRule:
    if rule not in TARGET_RULES:
        raise InputError(f"unknown target {rule!r}; choose from {', '.join(TARGET_RULES)}")
    return rule  # type: ignore[return-value]


def repeated_tokens(ids: Sequence[int]) -> list[bool]:
    """Per position q: does the bigram (ids[q−1], ids[q]) occur earlier
    (ending before q)? O(N) with a set of seen bigrams."""
    seen: set[tuple[int, int]] = set()
    marks = [False] * len(ids)
    for q in range(1, len(ids)):
        bigram = (ids[q - 1], ids[q])
        marks[q] = bigram in seen
        seen.add(bigram)
    return marks


def resolve_targets(
    rule: TargetRule, ids: Sequence[int], continuation: Sequence[bool] | None
) -> tuple[str, list[bool]]:
    """(the rule that applied, per-position target marks) for one prompt.

    `continuation[q]` marks the positions of a target continuation (None when
    the prompt has none). Raises InputError when the rule leaves no token."""
    check_rule(rule)
    n = len(ids)
    if rule == "auto":
        if continuation is not None:
            rule = "continuation"
        elif sum(repeated_tokens(ids)) >= MIN_REPEATS:
            rule = "repeats"
        else:
            rule = "all"
    if rule == "continuation":
        if continuation is None:
            raise InputError("target 'continuation' needs a target continuation on every prompt")
        marks = list(continuation)
    elif rule == "repeats":
        marks = repeated_tokens(ids)
    elif rule == "last":
        marks = [q == n - 1 for q in range(n)]
    else:
        marks = [q > 0 for q in range(n)]
    marks = [bool(m) and q > 0 for q, m in enumerate(marks)]  # nothing predicts token 0
    if not any(marks):
        raise InputError(f"target {rule!r} leaves no token to score in a prompt of {n} tokens")
    return rule, marks
