"""capture(mode="stats") and the kernel choice: HeadStats equal the statistics of
eager maps, maps of requested heads come along, the tiled default equals eager,
records round-trip, bad arguments are refused."""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.errors import InputError
from headscope.records.stats import HeadStats

PROMPTS = ["t5 t6 t7 t8 t9 t5 t6 t7 t8 t9", "t11 t12 t13"]


def eager_statistics(pattern: torch.Tensor, sink_k: int = 1) -> dict[str, torch.Tensor]:
    """Readable per-(layer, head, query) statistics of full `[..., query, key]` maps."""
    n = pattern.shape[-1]
    position = torch.arange(n)
    distance = (position[:, None] - position[None, :]).abs().float()
    previous = torch.zeros(n, n)
    previous[position[1:], position[:-1]] = 1
    return {
        "entropy": -torch.xlogy(pattern, pattern).sum(-1),
        "max_weight": pattern.amax(-1),
        "sink_mass": pattern[..., :sink_k].sum(-1),
        "previous_token_mass": (pattern * previous).sum(-1),
        "mean_distance": (pattern * distance).sum(-1),
        "key_mass": pattern.sum(-2),
    }


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_stats_equal_statistics_of_eager_maps(tiny_models, arch):
    model = tiny_models[arch]
    stats = hs.capture(model, PROMPTS, mode="stats", sink_k=2)
    eager = hs.capture(model, PROMPTS, kernel="eager")
    assert isinstance(stats, HeadStats) and hs.HeadStats is HeadStats and stats.maps is None
    assert stats.provenance.kernel == "tiled" and eager.provenance.kernel == "eager"
    assert stats.lengths == eager.lengths and stats.tokens == eager.tokens
    b, n = len(PROMPTS), eager.pattern.shape[-1]
    assert stats.entropy.shape == (b, model.spec.n_layers, model.spec.n_heads, n)
    assert stats.key_visibility.shape == (b, model.spec.n_layers, model.spec.n_heads, n)
    for name, expected in eager_statistics(eager.pattern, sink_k=2).items():
        torch.testing.assert_close(getattr(stats, name), expected, atol=1e-5, rtol=1e-5)
    # argmax agrees wherever the maximum is unique enough to be well defined
    short = eager.lengths[1]
    argmax = eager.pattern[1, ..., :short, :short].argmax(-1)
    assert torch.equal(stats.argmax_key[1, ..., :short], argmax)
    assert (stats.argmax_key[1, ..., short:] == -1).all()
    # every histogram holds the real queries' total mass (each row sums to 1)
    torch.testing.assert_close(
        stats.distance_histogram.sum(-1),
        torch.tensor([float(n_real) for n_real in eager.lengths])[:, None, None].expand(
            -1, model.spec.n_layers, model.spec.n_heads
        ),
    )


@pytest.mark.parametrize(("arch", "compiled"), [("gpt2", True), ("llama", True), ("bert", False)])
def test_a_padded_causal_batch_takes_the_compiled_kernel(tiny_models, arch, compiled, monkeypatch):
    """The right-padded batch of PROMPTS (whose statistics the test above checks against
    eager maps) runs every causal layer through the compiled kernel with each prompt's
    length; the bidirectional encoder takes the torch tiles."""
    from headscope.kernels import tiled

    model = tiny_models[arch]
    seen = []
    kernel = tiled.causal_attention_statistics

    def recording(*args, lengths=None, **kwargs):
        seen.append(None if lengths is None else lengths.tolist())
        return kernel(*args, lengths=lengths, **kwargs)

    monkeypatch.setattr(tiled, "causal_attention_statistics", recording)
    stats = hs.capture(model, PROMPTS, mode="stats")
    lengths = list(stats.lengths)
    assert lengths[0] > lengths[1]  # padded
    assert seen == ([lengths] * model.spec.n_layers if compiled else [])


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_tiled_maps_equal_eager_maps(tiny_models, arch):
    model = tiny_models[arch]
    tiled = hs.capture(model, PROMPTS)
    eager = hs.capture(model, PROMPTS, kernel="eager")
    torch.testing.assert_close(tiled.pattern, eager.pattern, atol=1e-5, rtol=1e-5)
    pairs = [(0, 1), (1, 3)]
    some = hs.capture(model, PROMPTS[0], heads=pairs)
    some_eager = hs.capture(model, PROMPTS[0], heads=pairs, kernel="eager")
    assert some.requested == some_eager.requested == tuple(pairs)
    torch.testing.assert_close(some.pattern, some_eager.pattern, equal_nan=True, atol=1e-5, rtol=0)


def test_stats_with_requested_maps_and_round_trip(tiny_models, tmp_path):
    model = tiny_models["llama"]
    stats = hs.capture(model, PROMPTS[0], mode="stats", heads=[(1, 2)], top_k=3)
    assert stats.maps is not None and stats.maps.requested is None
    assert stats.maps.layer_index == (1,) and stats.maps.head_index == (2,)
    full = hs.capture(model, PROMPTS[0], kernel="eager")
    torch.testing.assert_close(stats.maps.pattern[0, 0], full.pattern[1, 2], atol=1e-5, rtol=0)
    top = torch.topk(full.pattern, 3, dim=-1)
    torch.testing.assert_close(stats.topk_weights, top.values, atol=1e-5, rtol=0)
    stats.save(tmp_path / "stats")
    assert HeadStats.load(tmp_path / "stats").equals(stats)


def test_toy_induction_statistics_show_its_heads(toy_model):
    from headscope.models.induction_data import repeated_random_batch

    generator = torch.Generator().manual_seed(0)
    ids, layout = repeated_random_batch(
        4, 20, prefix_length=3, vocab=(3, 64), bos_id=1, generator=generator
    )
    stats = hs.capture(toy_model, ids, mode="stats")
    previous = stats.previous_token_mass[:, 0, :, 1:].mean((0, -1))  # layer 0, per head
    assert previous.max() > 0.8
    # the induction head attends one past the previous occurrence: distance T − 1
    second = slice(layout.second_start + 1, layout.length)
    distance = stats.mean_distance[:, 1, :, second].mean((0, -1))
    assert (distance - (layout.repeat_length - 1)).abs().min() < 2.0
    assert (distance - (layout.repeat_length - 1)).abs().max() > 4.0  # not every head


def test_bad_arguments_are_refused(tiny_models):
    model = tiny_models["gpt2"]
    with pytest.raises(InputError, match="unknown capture mode"):
        hs.capture(model, "t5 t6", mode="everything")
    with pytest.raises(InputError, match="unknown kernel"):
        hs.capture(model, "t5 t6", kernel="flash")
    with pytest.raises(InputError, match="tiled kernel"):
        hs.capture(model, "t5 t6", mode="stats", kernel="eager")


@pytest.mark.parametrize("kernel", ["tiled", "eager"])
def test_capture_stops_after_the_last_attention_it_needs(tiny_models, kernel):
    model = tiny_models["gpt2"]
    batch = model.tokenize("t5 t6 t7 t8")
    before = model.forward(batch).logits
    calls = []
    handle = model.bridge.unembed.register_forward_hook(lambda *args: calls.append(1))
    try:
        hs.capture(model, batch, kernel=kernel)
        if kernel == "tiled":
            hs.capture(model, batch, mode="stats")
        assert calls == []  # no [N, vocab] logits were computed
        model.forward(batch)
        assert calls == [1]
    finally:
        handle.remove()
    assert torch.equal(model.forward(batch).logits, before)


def test_4k_token_capture_equals_statistics_of_eager_maps(tmp_path):
    """A 4096-token stats capture (the long-context path: 32 query tiles, 4k-key
    rows) against the eager maps of two heads, and identities for every head."""
    from tiny_models import VOCAB, tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    n = 4096
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=n, initializer_range=0.2
    )
    GPT2LMHeadModel(config).eval().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model = hs.load_model(tmp_path)
    ids = torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(1))

    stats = hs.capture(model, ids, mode="stats", sink_k=4)
    assert stats.entropy.shape == (2, 4, n)
    position = torch.arange(n, dtype=torch.float32)
    # every real query's row sums to 1: per head, the histogram and the key mass hold n
    torch.testing.assert_close(stats.distance_histogram.sum(-1), torch.full((2, 4), float(n)))
    torch.testing.assert_close(stats.key_mass.sum(-1), torch.full((2, 4), float(n)))
    assert torch.equal(stats.key_visibility, (n - position).expand(2, 4, n))
    assert ((stats.argmax_key >= 0) & (stats.argmax_key <= position.long())).all()
    assert (stats.entropy <= torch.log(position + 1) + 1e-4).all()

    pairs = [(0, 1), (1, 2)]
    eager = hs.capture(model, ids, heads=pairs, kernel="eager")
    assert eager.layer_index == (0, 1) and eager.head_index == (1, 2)
    pattern = torch.stack([eager.pattern[0, 0], eager.pattern[1, 1]])  # the two pairs
    del eager
    layers, heads = [0, 1], [1, 2]
    for name, value in eager_statistics(pattern, sink_k=4).items():
        got = getattr(stats, name)[layers, heads]
        torch.testing.assert_close(got, value, atol=1e-5, rtol=1e-5, msg=name)
    top2 = torch.topk(pattern, 2, dim=-1)
    clear = top2.values[..., 0] - top2.values[..., 1] > 1e-4  # a well-defined argmax
    assert clear.sum() > n  # most rows (the first has one key)
    assert torch.equal(stats.argmax_key[layers, heads][clear], top2.indices[..., 0][clear])
