"""Spectral analyses against closed forms, dense d_model × d_model computations, random-
matrix facts, and the hooks of tiny bridges (GPT-2, Llama with GQA, BERT)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy import integrate

from headscope.analyses.spectral import (
    CompositionScores,
    HeadSpectra,
    attention_effective_rank,
    composition_baseline,
    composition_score,
    composition_scores_from_weights,
    copying_score,
    effective_rank,
    expand_kv_heads,
    heavy_tail_alpha,
    heavy_tail_alpha_by_layer,
    marchenko_pastur_fit,
    marchenko_pastur_median,
    qk_ov_spectra,
    rank_collapse,
    singular_spectrum,
    stable_rank,
)
from headscope.errors import InputError
from headscope.experiments.spectra import composition_scores, copying_scores, head_weights, spectra


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, g=None):
    return torch.randn(*shape, generator=g or gen(seed), dtype=torch.float64)


def orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(randn(n, n, seed=seed))
    return q


def random_heads(n_layers=3, n_heads=2, d_model=12, d_head=3, n_kv=None, seed=0):
    g = gen(seed)
    kv = n_kv or n_heads
    return (
        torch.randn(n_layers, n_heads, d_model, d_head, generator=g, dtype=torch.float64),
        torch.randn(n_layers, kv, d_model, d_head, generator=g, dtype=torch.float64),
        torch.randn(n_layers, kv, d_model, d_head, generator=g, dtype=torch.float64),
        torch.randn(n_layers, n_heads, d_head, d_model, generator=g, dtype=torch.float64),
    )


# -- matrices ---------------------------------------------------------------------------------


def test_singular_spectrum_of_a_rotated_diagonal():
    d = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    W = orthogonal(4, 1) @ d @ orthogonal(4, 2)
    assert torch.allclose(singular_spectrum(W), torch.tensor([3.0, 2, 1, 0.5], dtype=torch.float64))
    batch = torch.stack([W, 2 * W])
    assert singular_spectrum(batch).shape == (2, 4)
    assert singular_spectrum(W.float()).dtype == torch.float32


def test_stable_and_effective_rank_closed_forms(unchecked):
    n = 6
    eye = torch.eye(n, dtype=torch.float64)
    ones = torch.ones(n, n, dtype=torch.float64) / n
    assert stable_rank(eye).item() == pytest.approx(n)
    assert effective_rank(eye).item() == pytest.approx(n)
    assert stable_rank(ones).item() == pytest.approx(1.0)
    assert effective_rank(ones).item() == pytest.approx(1.0)
    d = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert stable_rank(d).item() == pytest.approx(5 / 4)
    p = torch.tensor([2 / 3, 1 / 3])
    assert effective_rank(d).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    # singular values directly; zeros do not count
    assert effective_rank(torch.tensor([1.0, 1.0, 0.0])).item() == pytest.approx(2.0)
    stacked = torch.stack([eye, ones])
    assert effective_rank(stacked).tolist() == pytest.approx([n, 1.0])
    assert effective_rank(
        torch.tensor([[1.0, 1.0], [1.0, 0.0]]), singular_values=True
    ).tolist() == pytest.approx([2.0, 1.0])
    zero = torch.zeros(3, 3)
    assert stable_rank(zero).item() == 0 and effective_rank(zero).item() == 0
    with pytest.raises(InputError):
        effective_rank(torch.tensor([1.0, -1.0]))
    with pytest.raises(InputError), unchecked():
        stable_rank(torch.tensor([1.0, 2.0]))


# -- circuits ---------------------------------------------------------------------------------


def test_qk_ov_spectra_match_the_dense_circuits():
    W_Q, W_K, W_V, W_O = random_heads(n_kv=1)  # grouped: one kv head for two query heads
    result = qk_ov_spectra(W_Q, W_K, W_V, W_O)
    assert isinstance(result, HeadSpectra)
    K, V = expand_kv_heads(W_K, 2), expand_kv_heads(W_V, 2)
    d_head = W_Q.shape[-1]
    for layer in range(3):
        for head in range(2):
            for spectrum, dense in (
                (result.qk, W_Q[layer, head] @ K[layer, head].T),
                (result.ov, V[layer, head] @ W_O[layer, head]),
            ):
                eig = torch.linalg.eigvals(dense)
                top = eig[eig.abs().argsort(descending=True)][:d_head]
                ours = spectrum.eigenvalues[layer, head]
                assert torch.allclose(ours.abs(), top.abs(), atol=1e-8)
                assert torch.allclose(ours.sum(), top.sum(), atol=1e-8)
                sv = torch.linalg.svdvals(dense)[:d_head]
                assert torch.allclose(spectrum.singular_values[layer, head].double(), sv, rtol=1e-5)
                assert spectrum.stable_rank[layer, head].item() == pytest.approx(
                    stable_rank(dense).item(), rel=1e-5
                )
                assert spectrum.effective_rank[layer, head].item() == pytest.approx(
                    effective_rank(dense).item(), rel=1e-4
                )
    assert result.qk.eigenvalues.shape == (3, 2, d_head)
    assert result.qk.eigenvalues.is_complex()


def test_expand_kv_heads_is_repeat_interleave():
    W = torch.arange(2 * 2).reshape(1, 2, 1, 2).float()
    assert expand_kv_heads(W, 4)[0, :, 0, 0].tolist() == [0.0, 0.0, 2.0, 2.0]
    with pytest.raises(InputError):
        expand_kv_heads(W, 3)


def test_copying_score_is_plus_one_and_minus_one_for_identity_ov():
    d_vocab, d_model = 20, 8
    W_E = randn(d_vocab, d_model, seed=3)
    eye = torch.eye(d_model, dtype=torch.float64)
    assert copying_score(W_E, eye, eye, W_E.T).item() == pytest.approx(1.0, abs=1e-9)
    assert copying_score(W_E, eye, -eye, W_E.T).item() == pytest.approx(-1.0, abs=1e-9)
    # a d_head < d_model head that projects and writes back: W_V W_O = P Pᵀ, still PSD
    P = torch.linalg.qr(randn(d_model, 3, seed=4)).Q
    both = copying_score(W_E, torch.stack([P, P]), torch.stack([P.T, -P.T]), W_E.T)
    assert both.tolist() == pytest.approx([1.0, -1.0], abs=1e-9)


def test_copying_score_matches_the_full_vocab_circuit(unchecked):
    d_vocab, d_model, d_head = 30, 10, 4
    W_E, W_U = randn(d_vocab, d_model, seed=1), randn(d_model, d_vocab, seed=2)
    W_V, W_O = randn(3, d_model, d_head, seed=5), randn(3, d_head, d_model, seed=6)
    got = copying_score(W_E, W_V, W_O, W_U)
    for h in range(3):
        full = (W_E @ W_V[h] @ W_O[h] @ W_U).numpy()
        eig = np.linalg.eigvals(full)
        assert got[h].item() == pytest.approx(eig.sum().real / np.abs(eig).sum(), abs=1e-8)
    with pytest.raises(InputError), unchecked():
        copying_score(W_E, W_V, W_O, W_U.T)


# -- composition ------------------------------------------------------------------------------


def test_composition_score_closed_forms():
    n = 9
    eye = torch.eye(n, dtype=torch.float64)
    assert composition_score(eye, eye).item() == pytest.approx(1 / math.sqrt(n))
    e1 = torch.zeros(n, n, dtype=torch.float64)
    e1[0, 0] = 1
    e2 = torch.zeros(n, n, dtype=torch.float64)
    e2[1, 1] = 1
    assert composition_score(e1, e1).item() == pytest.approx(1.0)
    assert composition_score(e1, e2).item() == pytest.approx(0.0)
    assert math.isnan(composition_score(e1, torch.zeros(n, n, dtype=torch.float64)).item())


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_from_weights_match_dense_products(kind, unchecked):
    W_Q, W_K, W_V, W_O = random_heads(n_kv=1, seed=7)
    scores = composition_scores_from_weights(W_Q, W_K, W_V, W_O, kind)
    assert scores.shape == (3, 2, 3, 2)
    K, V = expand_kv_heads(W_K, 2), expand_kv_heads(W_V, 2)
    for l1 in range(3):
        for l2 in range(3):
            for h1 in range(2):
                for h2 in range(2):
                    value = scores[l1, h1, l2, h2].item()
                    if l1 >= l2:
                        assert math.isnan(value)
                        continue
                    left = V[l1, h1] @ W_O[l1, h1]
                    right = {
                        "Q": W_Q[l2, h2] @ K[l2, h2].T,
                        "K": (W_Q[l2, h2] @ K[l2, h2].T).T,
                        "V": V[l2, h2] @ W_O[l2, h2],
                    }[kind]
                    assert value == pytest.approx(composition_score(left, right).item(), rel=1e-6)
    with pytest.raises(InputError), unchecked():
        composition_scores_from_weights(W_Q, W_K, W_V, W_O, "X")


def test_composition_baseline_is_about_one_over_root_d_model():
    for d_model, d_head in ((64, 16), (128, 8), (20, 16)):  # the last: explicit sampling
        baseline = composition_baseline(d_model, d_head)
        assert baseline == pytest.approx(1 / math.sqrt(d_model), rel=0.03)
    assert composition_baseline(32, 8, seed=3) == composition_baseline(32, 8, seed=3)


@pytest.mark.parametrize("kind", ["Q", "V"])
def test_composition_baseline_matches_random_weights(kind):
    """Against explicit Gaussian heads: every layer-0 / layer-1 pair is independent."""
    d_model, d_head = 48, 8
    W_Q, W_K, W_V, W_O = random_heads(n_layers=2, n_heads=40, d_model=d_model, d_head=d_head)
    explicit = composition_scores_from_weights(W_Q, W_K, W_V, W_O, kind)[0, :, 1, :].mean()
    assert composition_baseline(d_model, d_head, samples=2000) == pytest.approx(
        explicit.item(), rel=0.02
    )


# -- Marchenko–Pastur -------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.25, 0.6, 1.0])
def test_marchenko_pastur_median_against_quadrature(ratio):
    a, b = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2

    def density(x):
        return math.sqrt(max((b - x) * (x - a), 0.0)) / (2 * math.pi * ratio * x)

    median = marchenko_pastur_median(ratio)
    mass, _ = integrate.quad(density, a, median, limit=200)
    assert mass == pytest.approx(0.5, abs=1e-4)


def test_gaussian_matrix_has_no_outliers_and_sigma_is_recovered():
    for seed in range(2):
        W = 0.5 * randn(400, 100, seed=seed)
        fit = marchenko_pastur_fit(W)
        assert fit.n_outliers == 0 and fit.outliers.numel() == 0
        assert fit.sigma == pytest.approx(0.5, rel=0.02)
        assert (fit.n_rows, fit.n_columns) == (400, 100) and fit.q == 4.0
        assert fit.upper_edge == pytest.approx(fit.sigma2 * 1.5**2)
        assert fit.lower_edge == pytest.approx(fit.sigma2 * 0.5**2)
        assert fit.eigenvalues[0] <= fit.threshold
        assert marchenko_pastur_fit(W, null="shuffle", shuffles=8).n_outliers == 0
    # the orientation does not matter
    wide = marchenko_pastur_fit(W.T)
    assert (wide.n_rows, wide.n_columns) == (400, 100)
    assert torch.allclose(wide.eigenvalues, fit.eigenvalues)


def test_one_planted_spike_above_bbp_is_one_outlier():
    N, M, ell = 400, 100, 3.0  # BBP threshold for population spike ell: sqrt(M/N) = 0.5
    g = gen(11)
    G = torch.randn(N, M, generator=g, dtype=torch.float64)
    v = torch.randn(M, 1, generator=g, dtype=torch.float64)
    v /= v.norm()
    W = G + (math.sqrt(1 + ell) - 1) * (G @ v) @ v.T  # rows ~ N(0, I + ell·vvᵀ)
    fit = marchenko_pastur_fit(W)
    assert fit.n_outliers == 1
    # the BBP location (1 + ell)(1 + γ/ell), γ = M/N
    assert fit.outliers[0].item() == pytest.approx((1 + ell) * (1 + 0.25 / ell), rel=0.1)
    assert marchenko_pastur_fit(W, null="shuffle", shuffles=8).n_outliers == 1


def test_product_of_gaussians_against_the_shuffled_null(unchecked):
    g = gen(5)
    W_Q = torch.randn(128, 16, generator=g, dtype=torch.float64)
    W_K = torch.randn(128, 16, generator=g, dtype=torch.float64)
    assert marchenko_pastur_fit((W_Q, W_K.T), null="shuffle", shuffles=10).n_outliers == 0
    # as one dense matrix the product is not MP: the naive fit reports false spikes
    assert marchenko_pastur_fit(W_Q @ W_K.T).n_outliers >= 1
    with pytest.raises(InputError), unchecked():
        marchenko_pastur_fit(W_Q, null="bogus")


# -- heavy tails ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_heavy_tail_alpha_recovers_a_pareto_exponent(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    # density ∝ x^(−alpha) on x >= 2: inverse CDF x = 2·u^(−1/(alpha − 1))
    x = 2.0 * rng.uniform(size=2000) ** (-1 / (alpha - 1))
    fit = heavy_tail_alpha(torch.tensor(x))
    assert fit.alpha == pytest.approx(alpha, abs=0.3)
    assert 2.0 <= fit.x_min < 4.0
    assert 0 <= fit.ks < 0.1
    a, x_min, ks = fit  # unpacks as (alpha, x_min, ks)
    assert (a, x_min, ks) == (fit.alpha, fit.x_min, fit.ks)


def test_heavy_tail_alpha_mle_formula_at_the_chosen_x_min():
    rng = np.random.default_rng(0)
    x = 1.0 + rng.pareto(2.0, size=500)
    fit = heavy_tail_alpha(x.tolist())
    tail = x[x >= fit.x_min]
    assert fit.alpha == pytest.approx(1 + tail.size / np.log(tail / fit.x_min).sum(), rel=1e-9)


def test_heavy_tail_alpha_by_layer_pools_heads():
    rng = np.random.default_rng(1)
    layers = [1.0 * rng.uniform(size=(4, 300)) ** (-1 / (a - 1)) for a in (2.5, 4.0)]
    fit = heavy_tail_alpha_by_layer(torch.tensor(np.stack(layers)))
    assert fit.alpha.shape == (2,)
    assert fit.alpha[0].item() == pytest.approx(2.5, abs=0.3)
    assert fit.alpha[1].item() == pytest.approx(4.0, abs=0.4)
    assert fit.n_eigenvalues == (1200, 1200)
    ragged = heavy_tail_alpha_by_layer([torch.tensor(layers[0]), torch.tensor([1.0])])
    assert math.isnan(ragged.alpha[1].item()) and ragged.n_eigenvalues == (1200, 1)
    with pytest.raises(InputError):
        heavy_tail_alpha(torch.tensor([1.0]))


# -- attention maps and residuals -------------------------------------------------------------


def test_attention_effective_rank_closed_forms_and_padding():
    n = 7
    eye = torch.eye(n)
    sink = torch.zeros(n, n)
    sink[:, 0] = 1
    uniform = torch.full((n, n), 1 / n)
    ranks = attention_effective_rank(torch.stack([eye, sink, uniform])[None])
    assert ranks.shape == (1, 3)
    assert ranks[0].tolist() == pytest.approx([n, 1.0, 1.0], rel=1e-5)
    causal = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    padded = torch.zeros(n + 3, n + 3)
    padded[:n, :n] = causal
    assert attention_effective_rank(padded).item() == pytest.approx(
        attention_effective_rank(causal).item(), rel=1e-6
    )
    assert attention_effective_rank(causal).item() == pytest.approx(
        effective_rank(causal.double()).item(), rel=1e-6
    )
    with pytest.raises(ValueError):
        attention_effective_rank(torch.ones(3, 3))


def test_rank_collapse_closed_forms():
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    centred = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    half = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert rank_collapse(same).item() == pytest.approx(0.0, abs=1e-7)
    assert rank_collapse(centred).item() == pytest.approx(1.0)
    assert rank_collapse(half).item() == pytest.approx(math.sqrt(2) / 2)
    X = randn(4, 5, 6, seed=2)
    want = torch.stack([(x - x.mean(0)).norm() / x.norm() for x in X])
    assert torch.allclose(rank_collapse(X), want)


# -- model-level wrappers on tiny bridges -----------------------------------------------------

_NORM = re.compile(r"(ln_|ln_f|norm|LayerNorm)")


@pytest.fixture(scope="module")
def perturbed_models(tmp_path_factory):
    """Tiny GPT-2, Llama (2 kv heads) and BERT with random norm gains and biases, so
    that folding is visible (fresh bridges: tests may mutate them)."""
    from tiny_models import tiny_hf_model, tiny_tokenizer

    import headscope as hs

    models = {}
    for arch in ("gpt2", "llama", "bert"):
        model = tiny_hf_model(arch, seed=1)
        g = gen(2)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1 and _NORM.search(name):
                    base = 1.0 if name.endswith("weight") else 0.0
                    p.copy_(base + 0.5 * (torch.rand(p.shape, generator=g) - 0.5) * 2)
        directory = tmp_path_factory.mktemp(f"spectral-{arch}")
        model.save_pretrained(directory)
        tiny_tokenizer().save_pretrained(directory)
        models[arch] = hs.load_model(directory)
    return models


def _differences(x: torch.Tensor) -> torch.Tensor:
    """Each position minus position 0: biases cancel."""
    return x[:, 1:] - x[:, :1]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_folded_weights_reproduce_the_bridge_hooks(perturbed_models, arch):
    model = perturbed_models[arch]
    weights = head_weights(model)
    n_layers, n_heads, d_model, d_head = 2, 4, 32, 8
    assert (
        weights.W_Q.shape
        == weights.W_K.shape
        == weights.W_V.shape
        == (n_layers, n_heads, d_model, d_head)
    )
    assert weights.W_O.shape == (n_layers, n_heads, d_head, d_model)
    assert weights.W_E.shape == (100, d_model) and weights.W_U.shape == (d_model, 100)
    pre_norm = arch != "bert"
    assert weights.folded == (pre_norm, pre_norm)
    assert weights.unembed_folded
    ids = torch.tensor([[1, 5, 17, 42, 8, 99, 3]])
    _, cache = model.bridge.run_with_cache(ids)
    for layer in range(n_layers):
        # pre-norm: the gain is in the weights, so the normalized (gain-free) input suffices
        source = cache[
            f"blocks.{layer}.ln1.hook_normalized" if pre_norm else f"blocks.{layer}.attn.hook_in"
        ]
        for name, W in (("q", weights.W_Q), ("k", weights.W_K), ("v", weights.W_V)):
            got = torch.einsum("bpd,hde->bphe", source, W[layer])
            want = cache[f"blocks.{layer}.attn.hook_{name}"]
            if want.shape[2] != n_heads:  # grouped: query head h reads kv head h // 2
                assert arch == "llama" and want.shape[2] == 2
                want = want.repeat_interleave(n_heads // want.shape[2], dim=2)
            assert torch.allclose(_differences(got), _differences(want), atol=1e-5), (layer, name)
        z = cache[f"blocks.{layer}.attn.hook_z"]
        out = torch.einsum("bphe,hed->bpd", z, weights.W_O[layer])
        assert torch.allclose(
            _differences(out), _differences(cache[f"blocks.{layer}.attn.o.hook_out"]), atol=1e-5
        )
    logits = torch.einsum("bpd,dv->bpv", cache["ln_final.hook_normalized"], weights.W_U)
    assert torch.allclose(_differences(logits), _differences(cache["unembed.hook_out"]), atol=1e-4)


def test_gpt2_folding_matches_transformer_lens_processing(perturbed_models):
    import headscope as hs

    # a fresh copy of the same perturbed checkpoint: compatibility mode mutates the bridge
    directory = perturbed_models["gpt2"].source
    ours = head_weights(perturbed_models["gpt2"])
    processed = hs.load_model(directory).bridge
    processed.enable_compatibility_mode(disable_warnings=True)
    with torch.no_grad():
        for name in ("W_Q", "W_K", "W_V"):
            assert torch.allclose(getattr(processed, name), getattr(ours, name), atol=1e-6)
        # transformer-lens also centres W_U over the vocabulary (center_unembed)
        centred = ours.W_U - ours.W_U.mean(1, keepdim=True)
        assert torch.allclose(processed.W_U, centred, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_model_scores_match_dense_computations(perturbed_models, arch):
    model = perturbed_models[arch]
    weights = head_weights(model)
    W = {
        name: getattr(weights, name).double() for name in ("W_Q", "W_K", "W_V", "W_O", "W_E", "W_U")
    }
    copying = copying_scores(model)
    assert copying.shape == (2, 4)
    for layer, head in ((0, 0), (1, 3)):
        full = (W["W_E"] @ W["W_V"][layer, head] @ W["W_O"][layer, head] @ W["W_U"]).numpy()
        eig = np.linalg.eigvals(full)
        want = eig.sum().real / np.abs(eig).sum()
        assert copying[layer, head].item() == pytest.approx(want, abs=1e-4)
    assert ((copying >= -1) & (copying <= 1)).all()

    composition = composition_scores(model, "K")
    assert isinstance(composition, CompositionScores) and composition.kind == "K"
    assert composition.scores.shape == (2, 4, 2, 4)
    assert composition.matrix.shape == (8, 8)
    assert (
        composition.scores[1, :, 0, :].isnan().all() and composition.scores[0, :, 0].isnan().all()
    )
    upper = composition.scores[0, :, 1, :]
    assert ((upper > 0) & (upper <= 1)).all()
    left = W["W_V"][0, 2] @ W["W_O"][0, 2]
    right = (W["W_Q"][1, 1] @ W["W_K"][1, 1].T).T
    assert upper[2, 1].item() == pytest.approx(composition_score(left, right).item(), rel=1e-4)
    assert composition.baseline == pytest.approx(1 / math.sqrt(32), rel=0.1)

    result = spectra(model)
    assert result.qk.singular_values.shape == (2, 4, 8)
    assert result.ov.eigenvalues.shape == (2, 4, 8)
    assert torch.allclose(result.copying, copying)
    assert ((result.qk.effective_rank >= 1) & (result.qk.effective_rank <= 8 + 1e-4)).all()


def test_known_circuit_of_toy_induction(toy_model):
    """docs/methods.md §5.2: the previous-token head (layer 0) K-composes with the induction
    heads (layer 1) far above the random baseline, and induction heads copy. The heads
    are found from attention, independently of the weights."""
    import headscope as hs
    from headscope.analyses.taxonomy import induction_score, previous_token_score
    from headscope.models.induction_data import repeated_random_batch
    from headscope.models.toy_training import BOS_ID, WORD_RANGE

    ids, layout = repeated_random_batch(
        2, 12, vocab=WORD_RANGE, bos_id=BOS_ID, generator=torch.Generator().manual_seed(1)
    )
    pattern = hs.capture(toy_model, ids).pattern.mean(0)  # [layer, head, q, k]
    previous = int(previous_token_score(pattern[0]).argmax())
    induction = induction_score(pattern[1], layout.repeat_length, layout.first_start)
    inductive = torch.nonzero(induction > 0.8).flatten().tolist()
    assert inductive

    k_composition = composition_scores(toy_model, "K")
    block = k_composition.scores[0, :, 1, :]  # layer-0 writers × layer-1 readers
    for head in inductive:
        assert block[previous, head] > 2.5 * k_composition.baseline
        # the previous-token head is the layer-0 head that feeds this reader most
        assert int(block[:, head].argmax()) == previous
    copying = copying_scores(toy_model)
    assert (copying[1, inductive] > 0.9).all()


def test_spectra_of_an_encoder_without_lm_head_have_no_copying_scores(minilm_model):
    result = spectra(minilm_model)
    assert result.copying is None
    with pytest.raises(InputError, match="no trained LM head"):
        copying_scores(minilm_model)
    assert result.ov.eigenvalues.shape[:2] == (6, 12)
