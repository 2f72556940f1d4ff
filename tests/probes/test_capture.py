"""capture(): patterns equal Hugging Face eager attention; restriction; padding."""

from __future__ import annotations

import pytest
import torch
from tiny_models import load_eager_hf

import headscope as hs
from headscope.errors import InputError


def hf_attentions(directory, batch):
    hf = load_eager_hf(directory)
    with torch.no_grad():
        out = hf(batch.ids, attention_mask=batch.attention_mask.long(), output_attentions=True)
    return torch.stack(out.attentions, dim=1)  # [batch, layer, head, query, key]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_single_prompt_patterns_equal_eager(tiny_models, tiny_dirs, arch):
    model = tiny_models[arch]
    record = hs.capture(model, "t5 t9 t13 t5 t9 t13 t40")
    expected = hf_attentions(tiny_dirs[arch], model.tokenize("t5 t9 t13 t5 t9 t13 t40"))[0]
    n = 8 if model.spec.causal else 7  # causal models get a BOS prepended
    assert record.pattern.shape == expected.shape == (2, 4, n, n)
    assert record.pattern.dtype == torch.float32
    assert torch.allclose(record.pattern, expected, atol=1e-5)
    assert (record.tokens[0] == "<bos>") == model.spec.causal and len(record.tokens) == n


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_padded_batch_equals_eager_and_single_prompts(tiny_models, tiny_dirs, arch):
    model = tiny_models[arch]
    prompts = ["t5 t6 t7 t8 t9 t10", "t11 t12"]
    record = hs.capture(model, prompts)
    batch = model.tokenize(prompts)
    expected = hf_attentions(tiny_dirs[arch], batch)
    bos = int(model.spec.causal)
    n, short_n = 6 + bos, 2 + bos
    assert record.pattern.shape == (2, 2, 4, n, n) and record.lengths == (n, short_n)
    short = record.prompt(1)
    assert torch.allclose(short.pattern, expected[1, :, :, :short_n, :short_n], atol=1e-5)
    assert torch.allclose(short.pattern, hs.capture(model, prompts[1]).pattern, atol=1e-5)
    assert torch.allclose(record.pattern[0], expected[0], atol=1e-5)
    # padded query rows and key columns are exactly zero
    assert record.pattern[1, :, :, short_n:].abs().sum() == 0
    assert record.pattern[1, :, :, :, short_n:].abs().sum() == 0


def test_capture_does_not_change_logits(tiny_models):
    model = tiny_models["llama"]
    batch = model.tokenize("t5 t6 t7 t8")
    before = model.forward(batch).logits
    hs.capture(model, batch)
    ones = torch.ones(model.spec.n_layers, model.spec.n_heads)
    with hs.gate_heads(model, ones):
        gated = model.forward(batch).logits
    assert torch.equal(model.forward(batch).logits, before)
    assert torch.allclose(gated, before, atol=1e-6)


def test_layers_and_heads_restrict_what_is_kept(tiny_models):
    model = tiny_models["gpt2"]
    full = hs.capture(model, "t5 t6 t7 t8")
    some = hs.capture(model, "t5 t6 t7 t8", layers=[1], heads=[0, 2])
    assert some.pattern.shape == (1, 2, 5, 5)
    assert some.layer_index == (1,) and some.head_index == (0, 2)
    assert torch.equal(some.map(1, 2), full.map(1, 2))
    with pytest.raises(KeyError):
        some.map(0, 0)


def test_head_pairs_fill_only_the_requested_maps(tiny_models):
    model = tiny_models["gpt2"]
    full = hs.capture(model, "t5 t6 t7 t8")
    pairs = hs.capture(model, "t5 t6 t7 t8", heads=[(0, 1), (1, 3)])
    assert pairs.layer_index == (0, 1) and pairs.head_index == (1, 3)
    assert torch.equal(pairs.map(1, 3), full.map(1, 3))
    assert torch.isnan(pairs.pattern[0, 1]).all()  # (0, 3) was not requested
    with pytest.raises(KeyError):
        pairs.map(0, 3)


def test_grouped_query_gives_one_map_per_query_head(tiny_models):
    model = tiny_models["llama"]
    record = hs.capture(model, "t5 t6 t7")
    assert record.spec.n_kv_heads == 2 and record.pattern.shape[1] == 4
    assert torch.allclose(record.pattern.sum(-1), torch.ones(2, 4, 4), atol=1e-5)


def test_bad_head_selection(tiny_models):
    model = tiny_models["gpt2"]
    with pytest.raises(InputError, match="layer 5 is out of range"):
        hs.capture(model, "t5", layers=[5])
    with pytest.raises(InputError, match="head 9 is out of range"):
        hs.capture(model, "t5", heads=[9])
    with pytest.raises(InputError, match="at least one"):
        hs.capture(model, "t5", heads=[])


def test_record_provenance(tiny_models):
    model = tiny_models["bert"]
    record = hs.capture(model, "t5 t6")
    assert record.provenance.model_name == model.spec.name
    assert record.provenance.weights_hash == model.weights_hash
    assert record.provenance.texts == ("t5 t6",)
    assert record.provenance.headscope_version == hs.__version__
    assert record.spec == model.spec
    assert not any(isinstance(v, torch.nn.Module) for v in vars(record).values())
