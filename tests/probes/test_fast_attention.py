"""instrumented_attention on tiny GPT-2, Llama (grouped-query) and BERT bridges:
same logits as eager, the requested maps equal hook_pattern, statistics equal
those of the eager patterns, hook_z ablations act the same, and everything is
restored afterwards."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from tiny_models import ARCHES, build_tiny

from headscope.probes import fast_attention
from headscope.probes.fast_attention import ATTENTION_NAME, instrumented_attention

N_LAYERS, N_HEADS = 2, 4


@pytest.fixture(scope="module")
def bridges(tmp_path_factory):
    """Tiny bridges with peaked attention (init std 0.2), so that maps and stats
    differ clearly between heads and any mistake shows."""
    from transformer_lens.model_bridge import TransformerBridge

    root = tmp_path_factory.mktemp("sharp")
    logging.getLogger().setLevel(logging.ERROR)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arch in ARCHES:
            path = build_tiny(arch, root / arch, seed=3, initializer_range=0.2)
            out[arch] = TransformerBridge.boot_transformers(str(path), device="cpu").eval()
    return out


def batch_inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (2, 11), generator=g)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    ids[1, 7:] = 0
    return ids, mask


def eager_run(bridge, ids, mask, extra_hooks=()):
    patterns = {}

    def keep(layer):
        def hook(tensor, hook):
            patterns[layer] = tensor.detach().clone()

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_pattern", keep(layer)) for layer in range(N_LAYERS)]
    with torch.no_grad(), bridge.hooks(fwd_hooks=hooks + list(extra_hooks)):
        logits = bridge(ids, attention_mask=mask)
    return logits, patterns


def instrumented_run(bridge, ids, mask, extra_hooks=(), **options):
    results = {}
    with (
        torch.no_grad(),
        instrumented_attention(
            bridge, collector=lambda layer, result: results.__setitem__(layer, result), **options
        ) as scope,
    ):
        with bridge.hooks(fwd_hooks=list(extra_hooks)):
            logits = bridge(ids, attention_mask=mask)
    assert scope.calls == dict.fromkeys(range(N_LAYERS), 1)
    return logits, results


@pytest.mark.parametrize("arch", ARCHES)
def test_logits_maps_and_statistics_match_eager(bridges, arch):
    bridge = bridges[arch]
    ids, mask = batch_inputs()
    real = mask.bool()
    eager_logits, patterns = eager_run(bridge, ids, mask)
    maps_for = [(0, 1), (1, 0), (1, 3)]
    logits, results = instrumented_run(bridge, ids, mask, maps_for=maps_for, top_k=3, sink_k=2)

    torch.testing.assert_close(logits[real], eager_logits[real], atol=1e-4, rtol=1e-4)
    # hook_pattern is post hoc on BERT and lives on padded rows too: compare real rows.
    rows = real[:, None, :, None]
    for layer in range(N_LAYERS):
        pattern = patterns[layer] * rows
        result = results[layer]
        heads = [head for lay, head in maps_for if lay == layer]
        assert result.map_heads == tuple(heads)
        torch.testing.assert_close(result.maps, pattern[:, heads], atol=1e-5, rtol=1e-5)
        assert torch.equal(result.query_mask, real)

        entropy = -torch.xlogy(pattern, pattern).sum(-1)
        torch.testing.assert_close(result.entropy, entropy, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result.max_weight, pattern.amax(-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result.sink_mass, pattern[..., :2].sum(-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result.key_mass, pattern.sum(-2), atol=1e-5, rtol=1e-5)
        top = torch.topk(pattern, 3, dim=-1).values
        torch.testing.assert_close(result.topk_weights, top, atol=1e-5, rtol=1e-5)
        position = torch.arange(11)
        distance = (position[:, None] - position[None, :]).abs().float()
        torch.testing.assert_close(
            result.mean_distance, (pattern * distance).sum(-1), atol=1e-5, rtol=1e-5
        )
        assert (result.argmax_key[~real[:, None].expand(-1, N_HEADS, -1)] == -1).all()


@pytest.mark.parametrize("arch", ARCHES)
def test_hook_z_ablation_acts_the_same(bridges, arch):
    bridge = bridges[arch]
    ids, mask = batch_inputs()
    real = mask.bool()

    def zero_head(tensor, hook):
        tensor = tensor.clone()
        tensor[:, :, 2] = 0.0
        return tensor

    ablation = [("blocks.0.attn.hook_z", zero_head)]
    clean, _ = eager_run(bridge, ids, mask)
    eager, _ = eager_run(bridge, ids, mask, ablation)
    instrumented, _ = instrumented_run(bridge, ids, mask, ablation)
    assert (eager - clean)[real].abs().max() > 1e-3  # the ablation matters
    torch.testing.assert_close(instrumented[real], eager[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHES)
def test_pattern_hook_does_not_fire_and_q_k_v_z_do(bridges, arch):
    bridge = bridges[arch]
    ids, mask = batch_inputs()
    fired = []

    def record(name):
        def hook(tensor, hook):
            fired.append(name)

        return hook

    names = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_pattern")
    hooks = [(f"blocks.1.attn.{name}", record(name)) for name in names]
    instrumented_run(bridge, ids, mask, hooks, stats=False)
    assert sorted(fired) == sorted(names[:4])


def test_everything_is_restored_after_an_exception(bridges):
    bridge = bridges["llama"]
    ids, mask = batch_inputs()
    before, _ = eager_run(bridge, ids, mask)

    def explode(layer, result):
        raise KeyError("collector failed")

    with (
        torch.no_grad(),
        pytest.raises(KeyError),
        instrumented_attention(bridge, collector=explode),
    ):
        bridge(ids, attention_mask=mask)
    assert bridge.original_model.config._attn_implementation == "eager"
    assert not fast_attention._ACTIVE
    for block in bridge.blocks:
        assert "forward" not in vars(block.attn)
        assert "forward" not in vars(block.attn.original_component)
    after, patterns = eager_run(bridge, ids, mask)
    assert len(patterns) == N_LAYERS
    torch.testing.assert_close(after, before)


def test_gpt2_patch_is_per_instance_and_removed(bridges):
    bridge = bridges["gpt2"]
    with instrumented_attention(bridge, collector=lambda layer, result: None):
        assert "_reconstruct_attention" in vars(bridge.blocks[0].attn)
        with pytest.raises(RuntimeError, match="already instrumented"):
            with instrumented_attention(bridge, collector=lambda layer, result: None):
                pass
    assert "_reconstruct_attention" not in vars(bridge.blocks[0].attn)


def test_registry_entry_refuses_calls_outside_a_scope():
    fast_attention.register_attention()
    module = torch.nn.Linear(2, 2)
    q = torch.zeros(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match=ATTENTION_NAME):
        fast_attention.headscope_attention_forward(module, q, q, q, None)


def test_bad_map_selection_is_refused(bridges):
    with pytest.raises(ValueError, match="out of range"):
        with instrumented_attention(
            bridges["gpt2"], collector=lambda layer, result: None, maps_for=[(2, 0)]
        ):
            pass


def test_structured_masks_reach_the_kernel(bridges, monkeypatch):
    """No [batch, 1, N, N] mask is built for plain causal / bidirectional models."""
    seen = []
    original = fast_attention.tiled_attention

    def spy(*args, **kwargs):
        seen.append((kwargs["attn_mask"], kwargs["key_padding_mask"], kwargs["causal"]))
        return original(*args, **kwargs)

    ids, mask = batch_inputs()
    monkeypatch.setattr(fast_attention, "tiled_attention", spy)
    for arch in ARCHES:
        seen.clear()
        instrumented_run(bridges[arch], ids, mask)
        assert len(seen) == N_LAYERS
        assert all(explicit is None for explicit, _, _ in seen)
        assert all(padding is not None for _, padding, _ in seen)
        assert all(causal == (arch != "bert") for _, _, causal in seen)


def test_gradients_through_attention_are_refused(bridges):
    ids, mask = batch_inputs()
    with instrumented_attention(bridges["gpt2"], collector=lambda layer, result: None):
        with pytest.raises(RuntimeError, match="forward-only"):
            bridges["gpt2"](ids, attention_mask=mask)


# -- the other families: fused QKV, ALiBi, softcap, sliding windows, GPT-Neo ------------------

FAMILY_NAMES = ("GPT-NeoX", "GPT-Neo", "Mistral", "Gemma 2", "Phi-3", "BLOOM", "Falcon")


@pytest.fixture(scope="module")
def family_bridges(tmp_path_factory):
    """Tiny bridges of tests/families.py (features switched on, peaked attention)."""
    from families import BY_NAME
    from transformer_lens.model_bridge import TransformerBridge

    root = tmp_path_factory.mktemp("families")
    logging.getLogger().setLevel(logging.ERROR)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in FAMILY_NAMES:
            path = BY_NAME[name].build(root / name.replace(" ", "_"))
            out[name] = TransformerBridge.boot_transformers(str(path), device="cpu").eval()
    return out


def long_inputs(padded: bool = True):
    """Two 12-token rows (longer than the families' window of 4), the second padded."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    if padded:
        mask[1, 9:] = 0
        ids[1, 9:] = 0
    return ids, mask


def spy_on_kernel(monkeypatch):
    seen = []
    original = fast_attention.tiled_attention

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fast_attention, "tiled_attention", spy)
    return seen


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_other_families_match_eager_and_fire_q_k_v_z(family_bridges, name):
    bridge = family_bridges[name]
    ids, mask = long_inputs()
    real = mask.bool()
    eager_logits, patterns = eager_run(bridge, ids, mask)
    fired = []

    def record(point):
        def hook(tensor, hook):
            fired.append(point)

        return hook

    points = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_pattern")
    hooks = [(f"blocks.1.attn.{point}", record(point)) for point in points]
    logits, results = instrumented_run(
        bridge, ids, mask, hooks, maps_for={1: range(N_HEADS)}, query_tile=5
    )
    torch.testing.assert_close(logits[real], eager_logits[real], atol=1e-5, rtol=1e-5)
    pattern = patterns[1] * real[:, None, :, None]
    torch.testing.assert_close(results[1].maps, pattern, atol=1e-5, rtol=1e-5)
    entropy = -torch.xlogy(pattern, pattern).sum(-1)
    torch.testing.assert_close(results[1].entropy, entropy, atol=1e-5, rtol=1e-5)
    assert torch.equal(results[1].query_mask, real)
    assert sorted(fired) == sorted(points[:4])


def test_sliding_windows_stay_structured(family_bridges, monkeypatch):
    """Mistral (registry) and Phi-3 (reconstructed) get the window and a padding
    mask, not an N × N mask, with and without padding; Gemma 2 alternates."""
    from families import WINDOW

    seen = spy_on_kernel(monkeypatch)
    for padded in (True, False):
        ids, mask = long_inputs(padded)
        for name in ("Mistral", "Phi-3"):
            seen.clear()
            instrumented_run(family_bridges[name], ids, mask)
            assert [call["window"] for call in seen] == [WINDOW, WINDOW]
            assert all(call["attn_mask"] is None for call in seen)
            assert all(call["key_padding_mask"] is not None for call in seen)
        seen.clear()
        instrumented_run(family_bridges["Gemma 2"], ids, mask)
        assert [call["window"] for call in seen] == [WINDOW, None]
        assert all(call["attn_mask"] is None for call in seen)


def test_softcap_and_alibi_reach_the_kernel(family_bridges, monkeypatch):
    from families import SOFTCAP

    from headscope.kernels.masks import alibi_slopes

    seen = spy_on_kernel(monkeypatch)
    ids, mask = long_inputs()
    instrumented_run(family_bridges["Gemma 2"], ids, mask)
    assert [call["softcap"] for call in seen] == [SOFTCAP, SOFTCAP]
    assert all(call["scale"] == 16**-0.5 for call in seen)  # query_pre_attn_scalar
    seen.clear()
    instrumented_run(family_bridges["BLOOM"], ids, mask)
    for call in seen:  # BLOOM's slopes are headscope's ALiBi slopes
        torch.testing.assert_close(call["alibi_slopes"], alibi_slopes(N_HEADS))
        assert call["softcap"] is None and call["attn_mask"] is None
    seen.clear()
    instrumented_run(family_bridges["GPT-Neo"], ids, mask)
    assert [(call["window"], call["scale"]) for call in seen] == [(None, 1.0), (4, 1.0)]


@pytest.mark.parametrize("name", ["GPT-NeoX", "BLOOM", "GPT-Neo"])
def test_new_patches_are_per_instance_and_restored(family_bridges, name):
    bridge = family_bridges[name]
    ids, mask = long_inputs()
    before, _ = eager_run(bridge, ids, mask)
    inner = bridge.blocks[0].attn.original_component

    def explode(layer, result):
        raise KeyError("collector failed")

    with torch.no_grad(), pytest.raises(KeyError):
        with instrumented_attention(bridge, collector=explode):
            if name == "GPT-Neo":
                assert "_attn" in vars(inner)
                # the class is untouched
                assert vars(type(inner))["_attn"].__qualname__ == "GPTNeoSelfAttention._attn"
            else:
                assert "_reconstruct_attention" in vars(bridge.blocks[0].attn)
            with pytest.raises(RuntimeError, match="already instrumented"):
                with instrumented_attention(bridge, collector=explode):
                    pass
            bridge(ids, attention_mask=mask)
    for block in bridge.blocks:
        assert "_reconstruct_attention" not in vars(block.attn)
        for module in block.attn.original_component.modules():
            assert "_attn" not in vars(module)
    assert not fast_attention._ACTIVE
    after, patterns = eager_run(bridge, ids, mask)
    assert len(patterns) == N_LAYERS
    torch.testing.assert_close(after, before)


def test_attention_routes(bridges, family_bridges):
    route = fast_attention.attention_route
    assert route(bridges["gpt2"].blocks[0].attn).startswith("fused-QKV bridge")
    assert "routed back" in route(bridges["llama"].blocks[0].attn)
    assert route(bridges["bert"].blocks[0].attn).endswith("attention registry")
    assert route(family_bridges["Falcon"].blocks[0].attn).startswith("fused-QKV rotary")
    assert "ALiBi" in route(family_bridges["BLOOM"].blocks[0].attn)
    assert "GPTNeoSelfAttention._attn" in route(family_bridges["GPT-Neo"].blocks[1].attn)
    with pytest.raises(NotImplementedError, match="BLOOM"):
        route(torch.nn.Linear(2, 2))


def test_mask_function_keeps_sliding_windows_structured():
    from transformers.masking_utils import (
        chunked_causal_mask_function,
        sliding_window_bidirectional_mask_function,
        sliding_window_causal_mask_function,
    )

    padding = torch.ones(2, 10, dtype=torch.long)
    padding[1, 7:] = 0
    common = {"batch_size": 2, "q_length": 10, "kv_length": 10, "allow_is_causal_skip": True}
    sliding = fast_attention.headscope_mask(
        **common, mask_function=sliding_window_causal_mask_function(3), attention_mask=padding,
        local_size=3,
    )  # fmt: skip
    assert sliding.shape == (2, 10) and fast_attention.mask_window(sliding) == 3
    assert torch.equal(sliding, padding.bool())
    assert fast_attention.mask_window(padding) is None  # the caller's mask is not tagged
    unpadded = fast_attention.headscope_mask(
        **common, mask_function=sliding_window_causal_mask_function(3), local_size=3
    )
    assert unpadded.all() and fast_attention.mask_window(unpadded) == 3
    # chunked attention also passes local_size: it is told apart and materialized
    left = torch.zeros(2, dtype=torch.long)
    chunked = fast_attention.headscope_mask(
        **common, mask_function=chunked_causal_mask_function(3, left), local_size=3
    )
    assert chunked.shape == (2, 1, 10, 10) and fast_attention.mask_window(chunked) is None
    assert not chunked[0, 0, 3, 2]  # a new chunk starts at 3
    both = fast_attention.headscope_mask(
        **{**common, "allow_is_causal_skip": False},
        mask_function=sliding_window_bidirectional_mask_function(3),
        local_size=3,
    )
    assert both.shape == (2, 1, 10, 10)


def test_explicit_masks_give_the_kernel_their_padding():
    """A materialized mask hides padded keys from every query: those positions
    are padding, so padded queries are left out of the statistics."""
    from headscope.kernels.masks import dense_mask, key_padding_from_lengths

    padding = key_padding_from_lengths([6, 4], 6)
    mask = dense_mask(6, 6, causal=True, key_padding_mask=padding, window=2)
    key_padding, explicit, causal = fast_attention._interpret_mask(mask, True, 6, 6)
    assert torch.equal(key_padding, padding) and torch.equal(explicit, mask) and not causal
    additive = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    key_padding, _, _ = fast_attention._interpret_mask(additive, True, 6, 6)
    assert torch.equal(key_padding, padding)
    unpadded = dense_mask(6, 6, causal=True, window=2)
    assert fast_attention._interpret_mask(unpadded, True, 6, 6)[0] is None
