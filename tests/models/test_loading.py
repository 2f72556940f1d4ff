"""load_model over tiny GPT-2 / Llama (GQA) / BERT checkpoints, and its errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import load_eager_hf

import headscope as hs
from headscope.errors import HubUnreachableError, InputError, ModelNotFoundError


def test_spec_describes_each_architecture(tiny_models):
    gpt2, llama, bert = (
        tiny_models["gpt2"].spec,
        tiny_models["llama"].spec,
        tiny_models["bert"].spec,
    )
    assert (gpt2.n_layers, gpt2.n_heads, gpt2.n_kv_heads, gpt2.d_head) == (2, 4, 4, 8)
    assert gpt2.causal and gpt2.positional == "learned" and gpt2.has_lm_head
    assert llama.n_kv_heads == 2 and llama.group_size == 2 and llama.positional == "rotary"
    assert not bert.causal and bert.architecture == "BertForMaskedLM"
    for spec in (gpt2, llama, bert):
        assert spec.d_model == spec.n_heads * spec.d_head == 32
        assert spec.d_vocab == 100 and spec.n_ctx == 64


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_bridge_logits_match_hugging_face(tiny_models, tiny_dirs, arch):
    model = tiny_models[arch]
    batch = model.tokenize(["t5 t6 t7 t8 t9", "t10 t11 t12"])
    hf = load_eager_hf(tiny_dirs[arch])
    with torch.no_grad():
        expected = hf(batch.ids, attention_mask=batch.attention_mask.long()).logits
        got = model.forward(batch).logits
    real = batch.attention_mask
    assert torch.allclose(got[real], expected[real], atol=1e-4)


def test_tokenize_pads_right_and_keeps_lengths(tiny_models):
    model = tiny_models["llama"]
    batch = model.tokenize(["t5 t6 t7", "t8"])
    assert batch.lengths == (4, 2)  # BOS prepended for a causal model
    assert batch.prepended_bos
    assert batch.ids[1, 2:].tolist() == [model.spec.pad_token_id] * 2
    assert batch.attention_mask.sum(1).tolist() == [4, 2]
    assert batch.tokens[1] == ("<bos>", "t8")


def test_tokenize_rejects_bad_input(tiny_models):
    model = tiny_models["gpt2"]
    with pytest.raises(InputError, match="empty"):
        model.tokenize("   ")
    with pytest.raises(InputError, match="no prompts"):
        model.tokenize([])
    with pytest.raises(InputError, match="context is 64 tokens"):
        model.tokenize(" ".join(["t5"] * 80))
    with pytest.raises(InputError, match=r"lie in \[0, 100\)"):
        model.tokenize(torch.tensor([1, 2, 500]))
    with pytest.raises(InputError, match="integer"):
        model.tokenize(torch.zeros(3))


def test_token_ids_are_used_as_given(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize(torch.tensor([7, 8, 9]))
    assert batch.single and batch.ids.tolist() == [[7, 8, 9]] and batch.texts is None


def test_offline_hub_name_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError) as info:
        hs.load_model("gpt2")
    message = str(info.value)
    assert "hub cannot be reached" in message and "save_pretrained" in message


def test_typo_suggests_the_builtin(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="Did you mean 'toy-induction'"):
        hs.load_model("toy_induction")


def test_missing_directory_is_reported(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model directory"):
        hs.load_model(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        hs.load_model(tmp_path)


def test_weights_hash_depends_on_weights(tiny_dirs, tmp_path):
    from tiny_models import build_tiny

    other = build_tiny("gpt2", tmp_path / "other", seed=1)
    first = hs.load_model(tiny_dirs["gpt2"]).weights_hash
    again = hs.load_model(tiny_dirs["gpt2"]).weights_hash
    assert first == again and len(first) == 64
    assert hs.load_model(other).weights_hash != first


def test_added_tokens_match_what_tokenize_feeds_the_model(tiny_models):
    """The description comes from the ids: what `tokenize` adds around the
    text's own tokens (causal models get a BOS; the tiny BERT's tokenizer adds
    nothing)."""
    for arch, model in tiny_models.items():
        text = "t5 t6 t7"
        ids = model.tokenize(text).ids[0].tolist()
        plain = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        added = model.added_tokens(text)
        assert len(ids) == len(added.prefix) + len(plain) + len(added.suffix)
        expected = "no special tokens added" if arch == "bert" else "<bos> prepended"
        assert added.described == expected, arch


def test_unknown_words_on_tiny_models(tiny_models):
    model = tiny_models["gpt2"]
    found = model.unknown_words("t5 hello t6 t999")
    assert [(w.text, w.start, w.end) for w in found] == [("hello", 3, 8), ("t999", 12, 16)]
    assert model.unknown_words("t5 t6") == ()
    assert model.word_vocabulary() == tuple(sorted(f"t{i}" for i in range(3, 100)))


def test_text_that_is_not_valid_unicode_is_refused_with_one_line(toy_model):
    from headscope.errors import InputError

    with pytest.raises(InputError, match="not valid text at character 4"):
        toy_model.tokenize("red \udcff cat")  # what Python makes of the byte 0xff in argv
    with pytest.raises(InputError, match="prompt 1 is not valid text"):
        toy_model.tokenize(["red cat", "blue \ud800 dog"])


def test_a_command_line_prompt_with_invalid_bytes_gives_one_line(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from headscope.cli import main; "
        "sys.argv = ['headscope', 'capture', '--model', 'toy-induction', '--prompt', "
        "'red \\udcff cat']; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("headscope: error: ")
    assert "not valid text" in lines[0]
