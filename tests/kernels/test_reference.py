"""The fp32 reference oracle against torch's scaled_dot_product_attention and known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from headscope.errors import InputError
from headscope.kernels.masks import (
    alibi_bias,
    alibi_slopes,
    causal_mask,
    dense_mask,
    key_padding_from_lengths,
    sliding_window_mask,
)
from headscope.kernels.reference import attention_reference, visible_keys


def _qkv(batch=2, heads=4, kv_heads=4, n=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, d, generator=g)
    k = torch.randn(batch, kv_heads, n, d, generator=g)
    v = torch.randn(batch, kv_heads, n, d, generator=g)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True])
def test_matches_sdpa_without_padding(causal):
    q, k, v = _qkv()
    out, pattern = attention_reference(q, k, v, causal_mask(7, 7)[None, None] if causal else None)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 7))


def test_matches_sdpa_with_grouped_query_padding_and_scale():
    q, k, v = _qkv(heads=6, kv_heads=2)
    padding = key_padding_from_lengths([7, 4], 7)
    mask = dense_mask(7, 7, causal=False, key_padding_mask=padding)
    out, pattern = attention_reference(q, k, v, mask, scale=0.3)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert pattern[1, :, :, 4:].abs().max() == 0


def test_additive_float_mask_and_bias_match_sdpa():
    q, k, v = _qkv()
    g = torch.Generator().manual_seed(3)
    float_mask = torch.randn(2, 1, 7, 7, generator=g)
    float_mask[:, :, :, 5] = torch.finfo(torch.float32).min  # Hugging Face's "masked"
    bias = alibi_bias(alibi_slopes(4), 7, 7)
    out, pattern = attention_reference(q, k, v, float_mask, bias=bias)
    sdpa_mask = torch.where(float_mask > -1e30, float_mask, float("-inf")) + bias[None]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert pattern[..., 5].abs().max() == 0
    flat = bias[None].expand(2, -1, -1, -1).reshape(8, 7, 7)  # [batch·head, query, key]
    out_flat, _ = attention_reference(q, k, v, float_mask, bias=flat)
    torch.testing.assert_close(out_flat, out)


def test_rows_that_see_no_key_are_zero():
    q, k, v = _qkv(batch=1)
    mask = torch.ones(1, 1, 7, 7, dtype=torch.bool)
    mask[..., 2, :] = False
    out, pattern = attention_reference(q, k, v, mask)
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    assert torch.equal(pattern[:, :, 2], torch.zeros_like(pattern[:, :, 2]))
    assert not torch.isnan(out).any()


def test_uniform_causal_attention_known_answer():
    q, k, v = _qkv(batch=1, heads=1, kv_heads=1, n=5)
    _, pattern = attention_reference(torch.zeros_like(q), k, v, causal_mask(5, 5)[None, None])
    expected = torch.tril(torch.ones(5, 5)) / torch.arange(1, 6)[:, None]
    torch.testing.assert_close(pattern[0, 0], expected)


def test_half_inputs_are_computed_in_float32():
    q, k, v = _qkv()
    out, pattern = attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == pattern.dtype == torch.float32
    ref, _ = attention_reference(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float())
    torch.testing.assert_close(out, ref)


def test_mask_builders():
    assert torch.equal(causal_mask(3, 3), torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    window = sliding_window_mask(5, 5, 2)
    assert window[4].tolist() == [False, False, False, True, True]
    both = sliding_window_mask(5, 5, 2, causal=False)
    assert both[2].tolist() == [False, True, True, True, False]
    assert key_padding_from_lengths([2], 4, side="left").tolist() == [[False, False, True, True]]
    assert visible_keys(
        torch.tensor([0.0, -math.inf, torch.finfo(torch.float32).min])
    ).tolist() == [
        True,
        False,
        False,
    ]


def test_alibi_slopes_follow_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    slopes = alibi_slopes(6)  # 4 from n=4, then every other of n=8
    torch.testing.assert_close(slopes[:4], alibi_slopes(4))
    torch.testing.assert_close(slopes[4:], alibi_slopes(8)[0::2][:2])
    bias = alibi_bias(alibi_slopes(2), 3, 3)
    assert bias[0, 2, 0] == pytest.approx(-2 * 0.0625)


def test_caller_mistakes_raise_input_errors():
    with pytest.raises(InputError, match="window must be >= 1"):
        sliding_window_mask(4, 4, 0)
    with pytest.raises(InputError, match="n_heads must be >= 1"):
        alibi_slopes(0)
    q, k, v = _qkv(heads=6, kv_heads=4)
    with pytest.raises(InputError, match="do not divide"):
        attention_reference(q, k, v)


def test_softcap_caps_scaled_scores_before_bias_and_mask():
    """Gemma 2's order: softcap·tanh(q·kᵀ·scale / softcap), then bias, then mask."""
    q, k, v = _qkv(heads=4, kv_heads=2, seed=5)
    q = q * 4
    cap, scale = 1.5, 0.7
    mask = dense_mask(7, 7, causal=True, key_padding_mask=key_padding_from_lengths([7, 5], 7))
    bias = alibi_bias(alibi_slopes(4), 7, 7)
    out, pattern = attention_reference(q, k, v, mask, scale=scale, bias=bias, softcap=cap)
    kk = k.repeat_interleave(2, dim=1)
    scores = cap * torch.tanh(q @ kk.transpose(-1, -2) * scale / cap) + bias[None]
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(pattern, weights, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, weights @ v.repeat_interleave(2, dim=1), atol=1e-5, rtol=1e-5)
    uncapped, _ = attention_reference(q, k, v, mask, scale=scale, bias=bias)
    assert (uncapped - out).abs().max() > 1e-2  # the cap matters here
    wide, _ = attention_reference(q, k, v, mask, scale=scale, bias=bias, softcap=1e7)
    torch.testing.assert_close(wide, uncapped, atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="softcap"):
        attention_reference(q, k, v, softcap=0.0)
