"""Head gates on z: zero/mean/resample, batched gates, gradients, hook cleanup."""

from __future__ import annotations

import pytest
import torch
from tiny_models import load_eager_hf

import headscope as hs
from headscope.errors import InputError


def _o_proj(hf, arch: str, layer: int):
    if arch == "gpt2":
        return hf.transformer.h[layer].attn.c_proj
    if arch == "llama":
        return hf.model.layers[layer].self_attn.o_proj
    return hf.bert.encoder.layer[layer].attention.output.dense


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_zero_gate_equals_removing_the_head_by_hand(tiny_models, tiny_dirs, arch):
    model = tiny_models[arch]
    batch = model.tokenize("t5 t6 t7 t8 t9")
    layer, head, d_head = 1, 2, model.spec.d_head
    hf = load_eager_hf(tiny_dirs[arch])

    def drop_head(module, args):
        z = args[0].clone()
        z[..., head * d_head : (head + 1) * d_head] = 0
        return (z,)

    handle = _o_proj(hf, arch, layer).register_forward_pre_hook(drop_head)
    with torch.no_grad():
        expected = hf(batch.ids).logits
    handle.remove()
    gates = torch.ones(model.spec.n_layers, model.spec.n_heads)
    gates[layer, head] = 0
    with torch.no_grad(), hs.gate_heads(model, gates):
        got = model.forward(batch).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, model.forward(batch).logits, atol=1e-4)


def _hook_count(model) -> int:
    return sum(len(point.fwd_hooks) for point in model.bridge.hook_dict.values())


def test_hooks_are_removed_after_the_context_and_after_errors(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize("t5 t6 t7")
    before = model.forward(batch).logits
    baseline_hooks = _hook_count(model)
    gates = torch.zeros(2, 4)
    with hs.gate_heads(model, gates):
        assert _hook_count(model) > baseline_hooks
    assert _hook_count(model) == baseline_hooks
    with pytest.raises(RuntimeError, match="boom"), hs.gate_heads(model, gates):
        raise RuntimeError("boom")
    assert _hook_count(model) == baseline_hooks
    assert torch.equal(model.forward(batch).logits, before)


def test_batched_gates_equal_one_forward_per_gate_set(tiny_models):
    model = tiny_models["llama"]
    batch = model.tokenize("t5 t6 t7 t8")
    gate_sets = torch.rand(3, 2, 4, generator=torch.Generator().manual_seed(0))
    repeated = type(batch)(
        batch.ids.repeat(3, 1),
        batch.attention_mask.repeat(3, 1),
        batch.lengths * 3,
        batch.tokens * 3,
        False,
    )
    with torch.no_grad(), hs.gate_heads(model, gate_sets):
        together = model.forward(repeated).logits
    for i in range(3):
        with torch.no_grad(), hs.gate_heads(model, gate_sets[i]):
            alone = model.forward(batch).logits
        assert torch.allclose(together[i], alone[0], atol=1e-5)


def test_gates_are_differentiable(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize("t5 t6 t7 t8")
    gates = torch.ones(2, 4, requires_grad=True)
    with hs.gate_heads(model, gates):
        logits = model.forward(batch).logits
    logits[0, -1, 7].backward()
    assert gates.grad is not None and gates.grad.abs().sum() > 0
    # finite difference on one gate agrees with the gradient
    eps = 1e-3
    bumped = torch.ones(2, 4)
    bumped[1, 1] -= eps
    with torch.no_grad(), hs.gate_heads(model, bumped):
        lower = model.forward(batch).logits[0, -1, 7]
    with torch.no_grad():
        base = model.forward(batch).logits[0, -1, 7]
    assert abs((base - lower).item() / eps - gates.grad[1, 1].item()) < 1e-2


def test_mean_and_resample_with_the_prompt_itself_change_nothing(tiny_models):
    model = tiny_models["bert"]
    batch = model.tokenize("t5 t6 t7 t8")
    before = model.forward(batch).logits
    zeros = torch.zeros(2, 4)
    for mode in ("mean", "resample"):
        with torch.no_grad(), hs.gate_heads(model, zeros, mode=mode, reference=batch):
            after = model.forward(batch).logits
        assert torch.allclose(after, before, atol=1e-5), mode


def test_mean_ablation_uses_the_reference_mean(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize("t5 t6 t7")
    reference = ["t9 t10 t11", "t20 t21 t22"]
    gates = torch.ones(2, 4)
    gates[0, 1] = 0
    seen = {}

    def spy(z, hook):
        seen["z"] = z.detach().clone()
        return z

    from headscope.probes.interventions import reference_z

    zs, _ = reference_z(model, reference)
    expected = zs[0].mean(0)[:, 1]  # [position, d_head] of head (0, 1)
    # The spy runs after the gate on the same hook point, so it sees gated z.
    with torch.no_grad(), hs.gate_heads(model, gates, mode="mean", reference=reference):
        with model.hooks([("blocks.0.attn.hook_z", spy)]):
            model.forward(batch)
    assert torch.allclose(seen["z"][0, :, 1], expected, atol=1e-6)


def test_bad_gates_and_modes(tiny_models):
    model = tiny_models["gpt2"]
    with pytest.raises(InputError, match=r"shape \[layer, head\] = \[2, 4\]"):
        with hs.gate_heads(model, torch.ones(3, 4)):
            pass
    with pytest.raises(InputError, match="unknown ablation mode"):
        with hs.gate_heads(model, torch.ones(2, 4), mode="median"):
            pass
    with pytest.raises(InputError, match="needs reference"):
        with hs.gate_heads(model, torch.ones(2, 4), mode="mean"):
            pass
    with pytest.raises(InputError, match="at least 6 tokens"):
        with hs.gate_heads(model, torch.zeros(2, 4), mode="mean", reference="t5 t6"):
            model.forward(model.tokenize("t5 t6 t7 t8 t9"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gates_are_refused(tiny_models, bad):
    model = tiny_models["gpt2"]
    gates = torch.ones(2, 4)
    gates[1, 2] = bad
    with pytest.raises(InputError, match="gates must be finite"):
        with hs.gate_heads(model, gates):
            pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "mean", "reference": 12}, "reference must be a prompt string, .* got int"),
        ({"mode": "resample", "reference": {"t5": 1}}, "reference must be .* got dict"),
        ({"mode": "resample", "reference": "t5 t6", "seed": 1.5}, "seed must be a whole number"),
        ({"mode": "resample", "reference": "t5 t6", "seed": True}, "seed must be a whole number"),
    ],
)
def test_gate_heads_arguments_are_checked(tiny_models, kwargs, message):
    model = tiny_models["gpt2"]
    with pytest.raises(InputError, match=message):
        with hs.gate_heads(model, torch.ones(2, 4), **kwargs):
            pass
    for gates, gate_message in (
        ([[1.0] * 4] * 2, "gates must be a torch.Tensor, got list"),
        (torch.ones(2, 4, dtype=torch.int64), "gates must be floating point"),
        (torch.ones(2, 4, dtype=torch.complex64), "gates must be floating point"),
    ):
        with pytest.raises(InputError, match=gate_message):
            with hs.gate_heads(model, gates):
                pass
