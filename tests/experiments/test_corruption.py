"""Corruption helpers: every corrupted prompt keeps the clean prompt's token
count and really changes tokens (the ones asked for, no others); impossible
requests are refused with InputError; the longest repeated run of words is
found as a hand count says."""

from __future__ import annotations

import pytest

from headscope.errors import InputError
from headscope.experiments.corruption import (
    repeated_span,
    replace_repeat,
    shuffle_words,
    swap_token,
    token_difference,
)

TOY = "red cat blue dog sun tree key pen milk ship red cat blue dog sun tree key pen milk ship"


def _ids(model, text):
    return model.tokenize(text).ids[0].tolist()


def test_repeated_span_known_answers():
    assert repeated_span("a b c a b c".split()) == (0, 3, 3)
    # the runs may be apart; the longest wins over an earlier shorter one
    assert repeated_span("x y x y q r s t u r s t u".split()) == (5, 9, 4)
    # overlapping copies do not count: "a a a a" holds "a a" twice, not "a a a"
    assert repeated_span("a a a a".split()) == (0, 2, 2)
    assert repeated_span("a b c d".split()) is None
    assert repeated_span("a a".split()) is None  # one word is not a run


def test_replacing_the_repeat_changes_exactly_the_second_copy(toy_model):
    corruption = replace_repeat(toy_model, TOY)
    clean, corrupted = _ids(toy_model, TOY), _ids(toy_model, corruption.text)
    assert len(corrupted) == len(clean) == 21
    changed = [i for i, (a, b) in enumerate(zip(clean, corrupted, strict=True)) if a != b]
    assert changed == list(range(11, 21)) == list(corruption.changed)  # <bos> + 10 words, then
    words = TOY.split()
    new = corruption.text.split()[10:]
    assert not set(new) & set(words)  # nothing left to copy from the first half
    assert len(set(new)) == 10  # and no new repeat inside the replaced half
    assert not toy_model.unknown_words(corruption.text)  # in-vocabulary words only
    assert corruption.text.split()[:10] == words[:10]


def test_replace_repeat_is_seeded(toy_model):
    assert (
        replace_repeat(toy_model, TOY, seed=3).text == replace_repeat(toy_model, TOY, seed=3).text
    )
    assert (
        replace_repeat(toy_model, TOY, seed=3).text != replace_repeat(toy_model, TOY, seed=4).text
    )


def test_replace_repeat_finds_a_repeat_apart_from_its_copy(toy_model):
    text = "sun moon red cat blue one two red cat blue"
    corruption = replace_repeat(toy_model, text)
    assert corruption.text.split()[:7] == text.split()[:7]
    assert set(corruption.text.split()[7:]).isdisjoint(text.split())
    assert list(corruption.changed) == [8, 9, 10]


def test_shuffling_keeps_the_words_and_changes_the_order(toy_model):
    corruption = shuffle_words(toy_model, TOY, seed=1)
    assert sorted(corruption.text.split()) == sorted(TOY.split())
    assert corruption.text != TOY
    clean, corrupted = _ids(toy_model, TOY), _ids(toy_model, corruption.text)
    assert len(clean) == len(corrupted)
    assert corruption.changed and all(clean[i] != corrupted[i] for i in corruption.changed)


def test_swapping_one_token_changes_that_token_only(toy_model):
    corruption = swap_token(toy_model, TOY, 3)
    clean, corrupted = _ids(toy_model, TOY), _ids(toy_model, corruption.text)
    assert [i for i in range(len(clean)) if clean[i] != corrupted[i]] == [3]
    assert corruption.text.split()[2] not in TOY.split()


def test_impossible_requests_are_refused(toy_model):
    with pytest.raises(InputError, match="no repeated run"):
        replace_repeat(toy_model, "red cat blue dog")
    with pytest.raises(InputError, match="two different words"):
        shuffle_words(toy_model, "cat cat cat")
    with pytest.raises(InputError, match="special token"):
        swap_token(toy_model, TOY, 0)  # <bos>
    with pytest.raises(InputError, match="out of range"):
        swap_token(toy_model, TOY, 21)
    with pytest.raises(InputError, match="integer"):
        swap_token(toy_model, TOY, "3")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="empty"):
        replace_repeat(toy_model, "   ")
    # a repeat of every word the vocabulary has: no absent word is left to put in
    everything = " ".join(toy_model.word_vocabulary())
    with pytest.raises(InputError, match="no replacement"):
        replace_repeat(toy_model, f"{everything} {everything}")


def test_token_difference_lists_both_counts(toy_model):
    difference = token_difference(toy_model, "red cat blue", "red cat blue dog")
    assert not difference.equal_length
    assert "clean 4 tokens, corrupted 5" in difference.described
    same = token_difference(toy_model, "red cat", "red dog")
    assert same.equal_length and same.changed == (2,)


def test_subword_words_keep_their_token_counts(minilm_model):
    # [CLS] … [SEP], punctuation kept, and a word of several word pieces.
    text = "Interpretability researchers love transformers. Interpretability researchers love transformers."
    tokenizer = minilm_model.tokenizer
    assert len(tokenizer("Interpretability", add_special_tokens=False)["input_ids"]) > 1
    for corruption in (
        replace_repeat(minilm_model, text),
        shuffle_words(minilm_model, text),
        swap_token(minilm_model, text, 1),
    ):
        clean, corrupted = _ids(minilm_model, text), _ids(minilm_model, corruption.text)
        assert len(clean) == len(corrupted)
        assert corruption.changed
        assert corrupted[0] == clean[0] and corrupted[-1] == clean[-1]  # [CLS], [SEP]
    repeat = replace_repeat(minilm_model, text)
    assert repeat.text.startswith("Interpretability researchers love transformers. ")
    assert repeat.text.endswith(".")
    half = len(_ids(minilm_model, "Interpretability researchers love transformers.")) - 1
    assert min(repeat.changed) >= half  # the first copy (and [CLS]) untouched
