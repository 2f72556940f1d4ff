"""What the tokenizer did to a prompt: unknown words, the special tokens put
around it, and the words of a small word-level vocabulary."""

from __future__ import annotations

import pytest

from headscope.models.tokens import (
    AddedTokens,
    UnknownWord,
    added_tokens,
    unknown_words,
    word_vocabulary,
)
from headscope.models.toy_training import WORD_RANGE

SENTENCE = "The cat sat on the mat because it was tired"


def test_toy_reports_the_words_outside_its_vocabulary(toy_model):
    vocabulary = toy_model.tokenizer.get_vocab()
    expected = [word for word in SENTENCE.split() if word not in vocabulary]
    assert len(expected) > len(SENTENCE.split()) / 2  # the README-style sentence: mostly unknown
    found = toy_model.unknown_words(SENTENCE)
    assert [word.text for word in found] == expected
    for word in found:  # the offsets point at the words in the prompt
        assert SENTENCE[word.start : word.end] == word.text
    # every position reported is one the model sees as <unk>
    ids = toy_model.tokenize(SENTENCE).ids[0].tolist()
    assert ids.count(toy_model.tokenizer.unk_token_id) == len(found)


def test_toy_words_are_known(toy_model):
    words = toy_model.tokenizer.convert_ids_to_tokens(list(range(*WORD_RANGE)))
    assert toy_model.unknown_words(" ".join(words)) == ()
    assert toy_model.unknown_words("red cat\nblue   dog") == ()


def test_typing_the_unk_token_is_not_an_unknown_word(toy_model):
    assert [w.text for w in toy_model.unknown_words("red <unk> zebra")] == ["zebra"]


def test_minilm_knows_a_normal_sentence(minilm_model):
    assert minilm_model.unknown_words(SENTENCE + ".") == ()
    assert minilm_model.unknown_words("Stocks fell sharply after the bank raised rates.") == ()
    found = minilm_model.unknown_words("a cat ☃ on a mat")
    assert [w.text for w in found] == ["☃"] and found[0].start == 6


def test_no_unk_token_means_no_unknown_words():
    class NoUnk:
        unk_token_id = None

    assert unknown_words(NoUnk(), "anything at all") == ()


def test_slow_tokenizers_are_checked_word_by_word():
    class Slow:
        is_fast = False
        unk_token = "<unk>"
        unk_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            known = {"red": 5, "cat": 6}
            return {"input_ids": [known.get(w, 0) for w in text.split()]}

    assert unknown_words(Slow(), "red zebra cat  ox") == (
        UnknownWord("zebra", 4, 9),
        UnknownWord("ox", 15, 17),
    )


def test_special_tokens_are_described_from_the_ids(toy_model, minilm_model):
    toy = toy_model.added_tokens()
    assert toy == AddedTokens(prefix=("<bos>",)) and toy.described == "<bos> prepended"
    bert = minilm_model.added_tokens(SENTENCE)
    assert bert == AddedTokens(prefix=("[CLS]",), suffix=("[SEP]",))
    assert bert.described == "[CLS] and [SEP] added"


def test_added_tokens_descriptions_and_fallback():
    assert AddedTokens().described == "no special tokens added"
    assert AddedTokens(suffix=("</s>",)).described == "</s> appended"

    class Tok:
        all_special_ids = (0, 1)

        def convert_ids_to_tokens(self, ids):
            return [f"<{i}>" for i in ids]

    assert added_tokens(Tok(), [0, 5, 6, 1], [5, 6]) == AddedTokens(("<0>",), ("<1>",))
    # the text's tokens change next to a special token: the special ones still count
    assert added_tokens(Tok(), [0, 7, 6, 1], [5, 6]) == AddedTokens(("<0>",), ("<1>",))


def test_word_vocabulary_of_the_toy_only(toy_model, minilm_model):
    words = toy_model.word_vocabulary()
    expected = toy_model.tokenizer.convert_ids_to_tokens(list(range(*WORD_RANGE)))
    assert words == tuple(sorted(expected)) and len(words) == WORD_RANGE[1] - WORD_RANGE[0]
    assert "<bos>" not in words and "<unk>" not in words
    assert minilm_model.word_vocabulary() is None  # WordPiece, 30k entries
    assert word_vocabulary(toy_model.tokenizer, limit=10) is None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_causal_models_get_a_bos(tiny_models, arch):
    model = tiny_models[arch]
    assert model.added_tokens("t5 t6").described == "<bos> prepended"
