"""Example prompts the dashboard starts with, per model."""

from __future__ import annotations

from headscope.models.spec import ModelSpec

#: Repeated random words: the task toy-induction was trained on. The first (the
#: default) repeats 10 words: long enough that its induction heads put most of their
#: attention on the induction stripe, so the overview labels them as such (on a
#: 6-word repeat the <bos> sink still outweighs it).
TOY_PROMPTS = (
    "red cat blue dog sun tree key pen milk ship red cat blue dog sun tree key pen milk ship",
    "key pen blue open left one milk key pen blue open left one milk",
    "ship old cold star one rain ship old cold star one rain",
    "up moon salt a big moon sun up moon salt a big moon sun",
    "fish two road gold tea jump fish two road gold tea jump",
    "box right three four hot eat read box right three four hot eat read",
)

SENTENCES = (
    "The cat sat on the mat because it was tired.",
    "A man is playing a guitar on the street.",
    "The new movie is awesome and everyone loved it.",
    "Stocks fell sharply after the bank raised interest rates.",
    "She opened the window to let the fresh air in.",
    "The children are playing football in the park.",
)

SECOND_SENTENCE = "A kitten was resting on the rug."


def default_prompt(spec: ModelSpec | None) -> str:
    if spec is not None and spec.name == "toy-induction":
        return TOY_PROMPTS[0]
    return SENTENCES[0]


def prompt_set(spec: ModelSpec | None) -> tuple[str, ...]:
    """A small prompt set for head importance (importance over a set, not one prompt)."""
    if spec is not None and spec.name == "toy-induction":
        return TOY_PROMPTS
    return SENTENCES
