"""The tiled kernel against the fp32 reference: output and every statistic.

The expected statistics are computed from the reference pattern with the
straightforward formulas (−Σ p log p, Σ p·|q − k|, masks per distance bin, ...),
independently of the kernel's cumsum and log-sum-exp shortcuts.
"""

from __future__ import annotations

import itertools
import math
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from headscope.errors import InputError
from headscope.kernels import tiled as tiled_module
from headscope.kernels.masks import alibi_bias, alibi_slopes, dense_mask, key_padding_from_lengths
from headscope.kernels.reference import attention_reference
from headscope.kernels.tiled import default_query_tile, distance_bin_edges, tiled_attention

ATOL = 1e-5


def expected_statistics(pattern, valid, edges, sink_k, offset, visible):
    """Statistics of a reference pattern `[b, h, q, k]`; rows where `valid` `[b, h|1, q]`
    is False are not described (zero)."""
    pattern = pattern * valid[..., None]
    n_query, n_key = pattern.shape[-2:]
    query = torch.arange(n_query)[:, None] + offset
    key = torch.arange(n_key)[None, :]
    distance = (query - key).abs().float()
    max_weight, argmax = pattern.max(-1)
    histogram = torch.stack(
        [
            (pattern * ((distance >= lo) & (distance < hi))).sum((-1, -2))
            for lo, hi in itertools.pairwise(edges)
        ],
        dim=-1,
    )
    return {
        "entropy": -torch.xlogy(pattern, pattern).sum(-1),
        "max_weight": max_weight,
        "argmax_key": torch.where(valid, argmax, -1),
        "sink_mass": pattern[..., :sink_k].sum(-1),
        "previous_token_mass": (pattern * (key == query - 1)).sum(-1),
        "mean_distance": (pattern * distance).sum(-1),
        "distance_histogram": histogram,
        "key_mass": pattern.sum(-2),
        "key_visibility": (visible & valid[..., None]).sum(-2).float(),
    }


def check_against_reference(
    q,
    k,
    v,
    *,
    causal,
    padding=None,
    window=None,
    alibi=False,
    softcap=None,
    attn_mask=None,
    tile=None,
    sink_k=1,
    top_k=None,
    map_heads=None,
    distance_bins=None,
    atol=ATOL,
    out_atol=None,
    fused=None,
):
    n_query, n_key = q.shape[2], k.shape[2]
    offset = n_key - n_query
    slopes = alibi_slopes(q.shape[1]) if alibi else None
    structure = dense_mask(
        n_query,
        n_key,
        causal=causal,
        key_padding_mask=padding,
        window=window,
        query_offset=offset,
    )
    mask = structure
    if attn_mask is not None:
        extra = attn_mask if attn_mask.dtype == torch.bool else attn_mask > -1e30
        mask = structure & extra
        if attn_mask.dtype != torch.bool:
            mask = torch.where(mask, attn_mask.float(), float("-inf"))
    bias = alibi_bias(slopes, n_query, n_key, query_offset=offset) if alibi else None
    out, pattern = attention_reference(
        q.float(), k.float(), v.float(), mask, bias=bias, softcap=softcap
    )
    result = tiled_attention(
        q,
        k,
        v,
        causal=causal,
        key_padding_mask=padding,
        window=window,
        alibi_slopes=slopes,
        softcap=softcap,
        attn_mask=attn_mask,
        query_tile=tile,
        sink_k=sink_k,
        top_k=top_k,
        keep_maps_for_heads=map_heads,
        distance_bins=distance_bins,
        fused=fused,
    )
    visible = mask if mask.dtype == torch.bool else mask > -math.inf
    real_query = (
        torch.ones(q.shape[0], n_query, dtype=torch.bool)
        if padding is None
        else padding[:, offset:].bool()
    )
    valid = visible.any(-1) & real_query[:, None]
    valid = valid.expand(q.shape[0], q.shape[1], n_query)
    assert torch.equal(result.query_mask, valid.any(1))

    assert result.output.dtype == q.dtype
    # A half-precision output is rounded once at the end: allow that rounding.
    out_tol = (out_atol or atol) if q.dtype == torch.float32 else 2 * torch.finfo(q.dtype).eps
    torch.testing.assert_close(result.output.float(), out, atol=out_tol, rtol=out_tol)
    expected = expected_statistics(
        pattern, valid, result.distance_bin_edges, sink_k, offset, visible
    )
    for name, value in expected.items():
        got = getattr(result, name)
        assert got.dtype == value.dtype, name
        if name == "argmax_key":
            # Compare only rows whose top weight is clearly ahead of the runner-up.
            top2 = torch.topk(pattern, min(2, n_key), dim=-1).values
            clear = (top2[..., 0] - top2[..., -1] > 1e-4) | (n_key == 1)
            assert torch.equal(got[clear & valid], value[clear & valid]), name
            assert (got[~valid] == -1).all()
        else:
            torch.testing.assert_close(got, value.expand_as(got), atol=atol, rtol=atol, msg=name)
    if map_heads:
        expected_maps = (pattern * valid[..., None])[:, list(map_heads)]
        torch.testing.assert_close(result.maps, expected_maps, atol=atol, rtol=atol)
    if top_k:
        weights = result.topk_weights
        gathered = torch.gather(pattern * valid[..., None], -1, result.topk_keys.clamp_min(0)) * (
            result.topk_keys >= 0
        )
        torch.testing.assert_close(gathered, weights, atol=atol, rtol=atol)
        kk = min(top_k, n_key)
        top = torch.topk(pattern * valid[..., None], kk, dim=-1).values
        torch.testing.assert_close(weights[..., :kk], top, atol=atol, rtol=atol)
    return result


def random_qkv(seed, batch, heads, kv_heads, n_query, n_key, d, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_query, d, generator=g) * scale
    k = torch.randn(batch, kv_heads, n_key, d, generator=g) * scale
    v = torch.randn(batch, kv_heads, n_key, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@st.composite
def cases(draw):
    batch = draw(st.integers(1, 2))
    kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    n = draw(st.integers(1, 40))
    lengths = [draw(st.integers(1, n)) for _ in range(batch)]
    return {
        "seed": draw(st.integers(0, 10_000)),
        "batch": batch,
        "heads": kv_heads * group,
        "kv_heads": kv_heads,
        "n": n,
        "d": draw(st.sampled_from([1, 4, 16])),
        "scale": draw(st.sampled_from([0.5, 1.0, 3.0])),
        "causal": draw(st.booleans()),
        "window": draw(st.one_of(st.none(), st.integers(1, 9))),
        "padding": draw(st.sampled_from([None, "right", "left"])),
        "lengths": lengths,
        "alibi": draw(st.booleans()),
        "softcap": draw(st.one_of(st.none(), st.sampled_from([0.5, 2.0, 30.0]))),
        "tile": draw(st.integers(1, 17)),
        "sink_k": draw(st.integers(0, 3)),
        "top_k": draw(st.one_of(st.none(), st.integers(1, 5))),
        "map_heads": draw(st.lists(st.integers(0, kv_heads * group - 1), max_size=2, unique=True)),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_matches_reference_on_random_cases(case):
    q, k, v = random_qkv(
        case["seed"], case["batch"], case["heads"], case["kv_heads"], case["n"], case["n"],
        case["d"], case["scale"],
    )  # fmt: skip
    padding = None
    if case["padding"] is not None:
        padding = key_padding_from_lengths(case["lengths"], case["n"], side=case["padding"])
    check_against_reference(
        q,
        k,
        v,
        causal=case["causal"],
        padding=padding,
        window=case["window"],
        alibi=case["alibi"],
        softcap=case["softcap"],
        tile=case["tile"],
        sink_k=case["sink_k"],
        top_k=case["top_k"],
        map_heads=case["map_heads"],
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 24),
    per_head=st.booleans(),
    additive=st.booleans(),
    causal=st.booleans(),
    tile=st.integers(1, 9),
    short=st.integers(0, 23),
    softcap=st.one_of(st.none(), st.sampled_from([0.5, 3.0])),
)
def test_explicit_masks_match_reference(seed, n, per_head, additive, causal, tile, short, softcap):
    q, k, v = random_qkv(seed, 2, 4, 2, n, n, 8)
    padding = key_padding_from_lengths([n, max(1, n - short)], n)
    g = torch.Generator().manual_seed(seed + 1)
    shape = (2, 4 if per_head else 1, n, n)
    mask = torch.rand(shape, generator=g) > 0.3  # some rows see nothing
    if additive:
        values = torch.randn(shape, generator=g)
        mask = torch.where(mask, values, torch.finfo(torch.float32).min)
    check_against_reference(
        q, k, v, causal=causal, padding=padding, attn_mask=mask, tile=tile, top_k=2, softcap=softcap
    )


@pytest.mark.parametrize("causal", [True, False])
def test_softcap_with_every_other_feature(causal):
    """Gemma 2's logit softcap together with grouped-query attention, a sliding
    window, ALiBi, padding, several tiles and a KV-cache offset; large scores so
    that the cap bends them (and the result differs from the uncapped one)."""
    q, k, v = random_qkv(11, 2, 6, 2, 9, 14, 8, scale=3.0)
    padding = key_padding_from_lengths([14, 10], 14, side="left")
    options = {"causal": causal, "padding": padding, "window": 5, "alibi": True, "tile": 4}
    capped = check_against_reference(q, k, v, softcap=2.0, top_k=3, map_heads=[1, 4], **options)
    plain = check_against_reference(q, k, v, **options)
    assert (capped.entropy - plain.entropy).abs().max() > 0.1


def test_softcap_bounds_the_weight_ratio():
    """Capped scores lie in [−cap, cap]: within a row no visible key gets more
    than e^(2·cap) times the weight of another."""
    q, k, v = random_qkv(12, 1, 4, 4, 10, 10, 8, scale=4.0)
    cap = 1.5
    result = check_against_reference(q, k, v, causal=True, softcap=cap, map_heads=[0, 1, 2, 3])
    visible = result.maps > 0
    smallest = result.maps.where(visible, float("inf")).amin(-1)
    assert (result.max_weight / smallest).max() <= math.exp(2 * cap) * (1 + 1e-4)
    plain = tiled_attention(q, k, v, causal=True, keep_maps_for_heads=[0, 1, 2, 3])
    assert (plain.max_weight / plain.maps.where(visible, float("inf")).amin(-1)).max() > math.exp(
        2 * cap
    )


def test_softcap_known_answer_and_checks():
    """With q = 0 the capped scores are 0: uniform attention, whatever the cap;
    a cap far above the scores changes nothing."""
    _, k, v = random_qkv(3, 1, 2, 2, 8, 8, 4)
    result = tiled_attention(torch.zeros(1, 2, 8, 4), k, v, causal=True, softcap=0.1)
    i = torch.arange(8, dtype=torch.float32)
    torch.testing.assert_close(result.entropy[0, 0], torch.log(i + 1))
    q, k, v = random_qkv(4, 1, 2, 2, 8, 8, 4)
    wide = tiled_attention(q, k, v, causal=True, softcap=1e6)
    plain = tiled_attention(q, k, v, causal=True)
    torch.testing.assert_close(wide.output, plain.output, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(wide.entropy, plain.entropy, atol=1e-6, rtol=1e-6)
    for bad in (0.0, -1.0):
        with pytest.raises(InputError, match="softcap"):
            tiled_attention(q, k, v, causal=True, softcap=bad)


@pytest.mark.parametrize("causal", [True, False])
def test_fewer_queries_than_keys(causal):
    """Queries are the last positions (the KV-cache convention)."""
    q, k, v = random_qkv(5, 2, 4, 2, 5, 13, 8)
    padding = key_padding_from_lengths([13, 11], 13, side="left")
    check_against_reference(q, k, v, causal=causal, padding=padding, window=6, tile=2)


def test_truncated_distance_bins_absorb_long_distances():
    q, k, v = random_qkv(2, 1, 2, 2, 33, 33, 4)
    result = check_against_reference(q, k, v, causal=True, distance_bins=3, tile=8)
    assert result.distance_bin_edges == (0, 1, 2, 33)
    torch.testing.assert_close(result.distance_histogram.sum(-1), torch.full((1, 2), 33.0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_give_float32_statistics(dtype):
    q, k, v = random_qkv(7, 2, 4, 2, 37, 37, 16)
    padding = key_padding_from_lengths([37, 30], 37)
    # Exactly the reference of the rounded inputs: the kernel upcasts before any op.
    rounded = [t.to(dtype) for t in (q, k, v)]
    result = check_against_reference(*rounded, causal=True, padding=padding, tile=10)
    # And close to the full-precision reference.
    fp32 = tiled_attention(q, k, v, causal=True, key_padding_mask=padding, query_tile=10)
    for name in ("entropy", "max_weight", "sink_mass", "mean_distance", "key_mass"):
        value = getattr(result, name)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, getattr(fp32, name), atol=0.05, rtol=0.05, msg=name)


def test_uniform_causal_attention_known_answers():
    """q = 0: query i attends uniformly to keys 0..i."""
    n = 16
    _, k, v = random_qkv(0, 1, 1, 1, n, n, 4)
    result = tiled_attention(torch.zeros(1, 1, n, 4), k, v, causal=True, query_tile=5, sink_k=2)
    i = torch.arange(n, dtype=torch.float32)
    torch.testing.assert_close(result.entropy[0, 0], torch.log(i + 1))
    torch.testing.assert_close(result.max_weight[0, 0], 1 / (i + 1))
    torch.testing.assert_close(result.mean_distance[0, 0], i / 2)
    torch.testing.assert_close(result.sink_mass[0, 0], torch.clamp(2 / (i + 1), max=1.0))
    torch.testing.assert_close(result.previous_token_mass[0, 0], (i > 0) / (i + 1))
    harmonic = torch.cumsum(1 / (i + 1), 0)
    key_mass = harmonic[-1] - torch.cat([torch.zeros(1), harmonic[:-1]])
    torch.testing.assert_close(result.key_mass[0, 0], key_mass)
    torch.testing.assert_close(result.key_visibility[0, 0], n - i)
    assert result.argmax_key[0, 0].tolist() == [0] * n  # ties resolve to the first key


def test_holds_one_tile_of_scores_per_head(monkeypatch):
    """The largest softmax input is batch·head·tile·key, never head·query·key."""
    sizes = []
    real_softmax = torch.softmax

    def recording_softmax(x, dim, *args, **kwargs):
        sizes.append(x.numel())
        return real_softmax(x, dim, *args, **kwargs)

    monkeypatch.setattr(tiled_module.torch, "softmax", recording_softmax)
    q, k, v = random_qkv(0, 1, 4, 2, 200, 200, 8)
    tiled_attention(q, k, v, causal=False, query_tile=32)
    assert max(sizes) == 4 * 32 * 200
    sizes.clear()
    tiled_attention(q, k, v, causal=True, query_tile=32, fused=False)
    assert max(sizes) == 4 * 32 * 192 and min(sizes) == 4 * 32 * 32  # causal skips keys


def test_stats_off_gives_output_only():
    q, k, v = random_qkv(1, 1, 2, 2, 9, 9, 4)
    result = tiled_attention(q, k, v, causal=True, stats=False)
    assert result.entropy is None and result.key_mass is None and result.maps is None
    out, _ = attention_reference(q, k, v, dense_mask(9, 9, causal=True))
    torch.testing.assert_close(result.output, out, atol=ATOL, rtol=ATOL)


def test_helpers_and_argument_checks():
    assert distance_bin_edges(1) == (0, 1)
    assert distance_bin_edges(5) == (0, 1, 2, 4, 8)
    assert distance_bin_edges(4) == (0, 1, 2, 4)
    assert default_query_tile(1, 12, 8192) == 128
    assert default_query_tile(8, 32, 32768) == 16
    assert default_query_tile(1, 32, 32768) == 32
    assert default_query_tile(1, 1, 8) == 128
    q, k, v = random_qkv(1, 1, 3, 3, 4, 4, 4)
    with pytest.raises(InputError, match="kv heads"):
        tiled_attention(q, k[:, :2], v[:, :2], causal=True)
    with pytest.raises(InputError, match="map heads"):
        tiled_attention(q, k, v, causal=True, keep_maps_for_heads=[3])
    with pytest.raises(InputError, match="window"):
        tiled_attention(q, k, v, causal=True, window=0)


@pytest.mark.parametrize("causal", [True, False])
def test_transposed_views_and_a_scale_that_is_not_a_power_of_two(causal):
    """Models hand over q, k, v as transposed views of [batch, position, head, d];
    d_head 12 gives the scale 1/√12, which is multiplied after the GEMM (only a
    power of two goes into the GEMM's alpha); d_head 16 takes the alpha path."""
    g = torch.Generator().manual_seed(21)
    padding = key_padding_from_lengths([37, 30], 37)
    for d in (12, 16):
        q, k, v = (torch.randn(2, 37, h, d, generator=g).transpose(1, 2) for h in (6, 3, 3))
        assert not q.is_contiguous()
        options = {"causal": causal, "padding": padding, "tile": 8}
        result = check_against_reference(q, k, v, top_k=2, map_heads=[0, 5], **options)
        dense = tiled_attention(
            q.contiguous(), k.contiguous(), v.contiguous(),
            causal=causal, key_padding_mask=padding, query_tile=8, fused=False,
        )  # fmt: skip
        for name in ("output", "entropy", "mean_distance", "distance_histogram"):
            torch.testing.assert_close(getattr(result, name), getattr(dense, name), atol=0, rtol=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 2),
    kv_heads=st.integers(1, 2),
    group=st.integers(1, 3),
    n=st.integers(1, 150),
    d=st.sampled_from([1, 4, 16, 64, 80]),
    scale=st.sampled_from([0.5, 1.0, 3.0]),
    rows=st.integers(1, 70),
    keys=st.integers(1, 70),
    sink_k=st.integers(0, 3),
    bins=st.one_of(st.none(), st.integers(1, 4)),
    cuts=st.one_of(st.none(), st.lists(st.integers(0, 160), min_size=2, max_size=2)),
)
@example(
    seed=3925,
    batch=1,
    kv_heads=1,
    group=2,
    n=125,
    d=80,
    scale=3.0,
    rows=1,
    keys=2048,
    sink_k=0,
    bins=None,
    cuts=None,
)
def test_fused_causal_kernel_matches_reference(
    seed, batch, kv_heads, group, n, d, scale, rows, keys, sink_k, bins, cuts
):
    """The compiled one-pass kernel (plain causal self-attention) against the float32
    oracle: output and every statistic, grouped-query heads, any block of rows and chunk
    of keys (a row's maximum met in a later chunk rescales its running sums), and right
    padding (`cuts`: each sequence `cut` tokens shorter, at least 1 long; padded queries
    undescribed, their output attention over the real keys).

    The output's tolerance is 3·10⁻⁵ (statistics keep 10⁻⁵): where two near-equal weights
    meet values of opposite sign the output cancels, and the float32 oracle itself is then
    that far from float64 (the @example: oracle 1.26·10⁻⁵ off, this kernel 2.8·10⁻⁶).
    """
    q, k, v = random_qkv(seed, batch, kv_heads * group, kv_heads, n, n, d, scale)
    padding = None
    if cuts is not None:
        padding = key_padding_from_lengths([max(1, n - cut) for cut in cuts[:batch]], n)
    with mock.patch.object(tiled_module, "DEFAULT_KEYS", keys):
        check_against_reference(
            q,
            k,
            v,
            causal=True,
            padding=padding,
            tile=rows,
            sink_k=sink_k,
            distance_bins=bins,
            fused=True,
            out_atol=3e-5,
        )


@pytest.mark.parametrize("n", [700, 1030])
def test_fused_kernel_on_long_rows_and_transposed_views(n):
    """Several blocks, long distance bins, a non-power-of-two scale, transposed
    [batch, key, head, d] views as models hand them over, an all-True padding mask."""
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, n, 3, 48, generator=g).transpose(1, 2) for _ in range(3))
    padding = torch.ones(1, n, dtype=torch.bool)
    fused = check_against_reference(q, k, v, causal=True, padding=padding, sink_k=4, fused=True)
    tiles = tiled_attention(q, k, v, causal=True, sink_k=4, fused=False)
    for name in ("entropy", "max_weight", "mean_distance", "key_mass", "distance_histogram"):
        torch.testing.assert_close(getattr(fused, name), getattr(tiles, name), atol=2e-5, rtol=1e-5)


def test_fused_kernel_trims_the_heap_only_at_activation_sizes(monkeypatch):
    """malloc_trim after a fused call keeps the model's activations from fragmenting the
    heap, but costs the trim and the next allocations' page faults: only outputs of at
    least _TRIM_BYTES (activation-sized layers) pay it."""
    trims = []
    monkeypatch.setattr(tiled_module, "_release_free_heap", lambda: trims.append(1))
    q, k, v = random_qkv(4, 1, 2, 2, 40, 40, 8)
    tiled_attention(q, k, v, causal=True)
    assert trims == []
    monkeypatch.setattr(tiled_module, "_TRIM_BYTES", q.numel() * 4)
    tiled_attention(q, k, v, causal=True)
    assert trims == [1]
    tiled_attention(q, k, v, causal=True, fused=False)  # the torch tiles never trim
    assert trims == [1]


def test_fused_kernel_is_the_default_where_it_applies(monkeypatch):
    """Plain causal statistics take the compiled path (no torch softmax over tiles);
    anything it does not cover takes the tiles, and fused=True says why it cannot."""
    calls = []
    real_softmax = torch.softmax

    def recording_softmax(x, dim, *args, **kwargs):
        calls.append(x.shape)
        return real_softmax(x, dim, *args, **kwargs)

    monkeypatch.setattr(tiled_module.torch, "softmax", recording_softmax)
    q, k, v = random_qkv(3, 1, 2, 2, 40, 40, 8)
    tiled_attention(q, k, v, causal=True)
    assert calls == []
    tiled_attention(q, k, v, causal=True, top_k=2)
    assert calls
    for extra in ({"causal": False}, {"top_k": 2}, {"window": 4}, {"keep_maps_for_heads": [0]}):
        with pytest.raises(InputError, match="fused=True"):
            tiled_attention(q, k, v, **({"causal": True} | extra), fused=True)
    calls.clear()
    right = key_padding_from_lengths([30], 40, side="right")
    tiled_attention(q, k, v, causal=True, key_padding_mask=right, fused=True)
    assert calls == []  # right padding: the compiled path
    inner = right.clone()
    inner[0, 10] = False
    empty = torch.zeros(1, 40, dtype=torch.bool)
    for padding in (key_padding_from_lengths([30], 40, side="left"), inner, empty):
        with pytest.raises(InputError, match="fused=True"):
            tiled_attention(q, k, v, causal=True, key_padding_mask=padding, fused=True)
        tiled_attention(q, k, v, causal=True, key_padding_mask=padding)
        assert calls  # by default: the tiles
        calls.clear()
    with pytest.raises(InputError, match="fused=True"):
        tiled_attention(q, k, v, causal=True, scale=-0.5, fused=True)
    calls.clear()
    # A negative scale is legal (softmax of −s/2) and goes to the tiles, which match the oracle.
    flipped = tiled_attention(q, k, v, causal=True, scale=-0.5)
    assert calls
    torch.testing.assert_close(
        flipped.entropy, tiled_attention(-q, k, v, causal=True, scale=0.5).entropy
    )
