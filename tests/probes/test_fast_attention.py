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
