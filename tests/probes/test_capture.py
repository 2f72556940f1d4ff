"""capture(): patterns equal Hugging Face eager attention; restriction; padding."""

from __future__ import annotations

import pytest
import torch
from tiny_models import load_eager_hf

import headscope as hs
from headscope.errors import InputError, MemoryLimitError


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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": 1}, "layers must be a list of layer indices, e.g. layers=\\[1\\], got int"),
        ({"layers": "1"}, "layers must be a list of layer indices"),
        ({"layers": [None]}, "layers must hold whole numbers, got None"),
        ({"layers": [1.9]}, "layers must hold whole numbers, got 1.9"),
        ({"layers": ["1"]}, "layers must hold whole numbers, got '1'"),
        ({"layers": [True]}, "layers must hold whole numbers, got True"),
        ({"heads": 1}, "heads must be a list of head indices, e.g. heads=\\[1\\], got int"),
        ({"heads": [True]}, "heads must hold whole numbers, got True"),
        ({"heads": [0.5]}, "heads must hold whole numbers, got 0.5"),
        ({"heads": [(0, 1.0)]}, "heads must hold whole numbers, got 1.0"),
        ({"query_tile": -4}, "query_tile must be a whole number >= 1 or None, got -4"),
        ({"query_tile": 2.5}, "query_tile must be a whole number >= 1 or None, got 2.5"),
        ({"query_tile": 0}, "query_tile must be a whole number >= 1"),
        ({"sink_k": 1.5}, "sink_k must be a whole number >= 0, got 1.5"),
        ({"sink_k": -1}, "sink_k must be a whole number >= 0"),
        ({"sink_k": True}, "sink_k must be a whole number"),
        ({"top_k": 0}, "top_k must be a whole number >= 1 or None, got 0"),
        ({"top_k": 2.0}, "top_k must be a whole number >= 1"),
        ({"max_memory": "a lot"}, "max_memory 'a lot' is not a size"),
    ],
)
def test_capture_arguments_are_checked_at_the_entry(tiny_models, kwargs, message):
    model = tiny_models["gpt2"]
    with pytest.raises(InputError, match=message):
        hs.capture(model, "t5 t6 t7", **kwargs)
    mode = "stats" if "layers" not in kwargs and "heads" not in kwargs else "maps"
    with pytest.raises(InputError, match=message):
        hs.capture(model, "t5 t6 t7", mode=mode, **kwargs)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (None, "inputs must be a prompt string, a list of prompts or a token-id tensor, got None"),
        ({"t5": 1}, "inputs must be a prompt string, .* got dict"),
        (7, "got int"),
        (torch.tensor([5, 6], dtype=torch.complex64), "integer tensor, got torch.complex64"),
    ],
)
def test_capture_refuses_inputs_that_are_not_prompts(tiny_models, inputs, message):
    with pytest.raises(InputError, match=message):
        hs.capture(tiny_models["gpt2"], inputs)


def test_index_like_layers_and_heads_are_accepted(tiny_models):
    model = tiny_models["gpt2"]
    record = hs.capture(model, "t5 t6", layers=range(1, 2), heads=(torch.tensor(2),))
    assert record.layer_index == (1,) and record.head_index == (2,)
    assert hs.capture(model, "t5 t6", layers=torch.tensor([0, 1])).layer_index == (0, 1)
    import numpy as np

    assert hs.capture(model, "t5 t6", heads=np.array([3, 1])).head_index == (1, 3)
    with pytest.raises(InputError, match="heads must hold whole numbers"):
        hs.capture(model, "t5 t6", heads=np.array([1.0]))
    with pytest.raises(InputError, match="layers must be a list of layer indices"):
        hs.capture(model, "t5 t6", layers=torch.tensor(1))


def test_top_k_is_capped_at_the_number_of_keys(tiny_models):
    model = tiny_models["llama"]
    with pytest.warns(UserWarning, match="top_k=1000000 is more than the 4 keys"):
        stats = hs.capture(model, "t5 t6 t7", mode="stats", top_k=10**6)
    assert stats.topk_keys.shape == (2, 4, 4, 4)
    full = hs.capture(model, "t5 t6 t7", mode="stats", top_k=4)
    assert torch.equal(stats.topk_keys, full.topk_keys)


def test_a_capture_that_does_not_fit_is_refused_with_the_options(tiny_models):
    """max_memory stands in for a small machine: nothing is allocated. For this
    tiny GPT-2 at 56 tokens the maps capture needs about 434 KiB (tile buffers
    147, activations 140, maps 98, one layer's maps in the kernel 49), the stats
    capture about 318 KiB."""
    model = tiny_models["gpt2"]
    prompt = " ".join(f"t{i}" for i in range(5, 60))  # 56 tokens with BOS
    with pytest.raises(MemoryLimitError) as info:
        hs.capture(model, prompt, max_memory="380KB")
    message = str(info.value)
    assert message.startswith(
        "capturing the maps of 8 heads for 1 prompt(s) of 56 tokens needs about 434 KiB ("
    )
    assert "maps 98 KiB" in message and "only 371 KiB is allowed (max_memory)" in message
    assert "options that fit: stats mode without maps (about 318 KiB)" in message
    assert "at most 4 of the 8 head maps (layers=/heads=)" in message
    assert "a shorter prompt (at most 50 tokens)" in message and "\n" not in message
    stats = hs.capture(model, prompt, mode="stats", max_memory="380KB")  # the option fits
    assert stats.entropy.shape[-1] == 56
    assert hs.capture(model, prompt, heads=[(0, 1), (1, 2)], max_memory="380KB").requested
    with pytest.raises(MemoryLimitError, match="fewer prompts per call \\(at most 1\\)"):
        hs.capture(model, [prompt] * 3, mode="stats", max_memory="380KB")
    with pytest.raises(MemoryLimitError, match="capturing the statistics of 8 heads"):
        hs.capture(model, prompt, mode="stats", max_memory="20KB")


def test_the_estimate_counts_what_capture_keeps(tiny_models, monkeypatch):
    """The maps part of the estimate is the record's size: the result is filled
    in place, layer by layer (no second copy of every map)."""
    from headscope.probes import capture as capture_module

    seen = {}
    real = capture_module.capture_estimate

    def spy(**kwargs):
        estimate = real(**kwargs)
        seen.setdefault("maps", dict((p.label, p.bytes) for p in estimate.parts)["maps"])
        return estimate

    monkeypatch.setattr(capture_module, "capture_estimate", spy)
    record = hs.capture(tiny_models["gpt2"], ["t5 t6 t7", "t8"], layers=[1], heads=[0, 3])
    assert seen["maps"] == record.pattern.numel() * record.pattern.element_size()
