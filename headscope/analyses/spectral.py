"""Spectral diagnostics of attention heads: weight circuits, random-matrix fits, attention maps.

Conventions (docs/methods.md §4). Row vectors, as in transformer-lens: a head reads the
residual stream x (`[d_model]`) as q = x·W_Q, k = x·W_K, v = x·W_V and writes z·W_O.
Its QK circuit is W_Q·W_Kᵀ (query side on the left) and its OV circuit W_V·W_O, both
d_model × d_model of rank ≤ d_head. Every spectrum here is computed from d_head × d_head
products with the same nonzero spectrum (eigenvalues of W_Kᵀ·W_Q and W_O·W_V; singular
values after a QR of each factor), so no d_model × d_model matrix is ever formed.
The softmax scale 1/√d_head is not part of W_Q.

- Matrices: `singular_spectrum`, `stable_rank`, `effective_rank` (Roy & Vetterli 2007,
  "The effective rank: a measure of effective dimensionality").
- Heads: `qk_ov_spectra`, `copying_score` (Elhage et al. 2021, "A Mathematical
  Framework for Transformer Circuits"), `composition_score`,
  `composition_scores_from_weights`, `composition_baseline` (same paper).
- Random-matrix theory: `marchenko_pastur_fit` (Marchenko & Pastur 1967; Tracy–Widom
  margin of Johnstone 2001), `heavy_tail_alpha` / `heavy_tail_alpha_by_layer` (Martin &
  Mahoney 2021, "Implicit Self-Regularization in Deep Neural Networks", WeightWatcher;
  Clauset, Shalizi & Newman 2009 for the x_min choice).
- Attention maps: `attention_effective_rank`, `rank_collapse` (Dong, Cordonnier &
  Loukas 2021, "Attention is Not All You Need: Pure Attention Loses Rank Doubly
  Exponentially with Depth").
Everything here is a pure function of given matrices; reading a loaded model's
weights (with its norms folded) is `headscope.experiments.spectra`.
"""

# ruff: noqa: N803, N806  (W_Q, W_K, W_V, W_O, W_E, W_U: the transformer-lens weight names)

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Complex, Float
from torch import Tensor

from headscope._deprecated import moved
from headscope.analyses.checks import check_pattern
from headscope.errors import InputError

CompositionKind = Literal["Q", "K", "V"]
NullModel = Literal["none", "shuffle"]

#: 99.9% quantile of the Tracy–Widom (β = 1) law: the default margin above the MP edge.
TRACY_WIDOM_999 = 3.27


# -- matrices ---------------------------------------------------------------------------------


def singular_spectrum(W: Float[Tensor, "*batch row column"]) -> Float[Tensor, "*batch rank"]:
    """Singular values of each matrix (leading dims are a batch), descending.

    Computed in float64 and returned in W's dtype. Memory: one float64 copy of W.
    """
    _check_matrix(W, "W")
    return torch.linalg.svdvals(W.double()).to(_real_dtype(W))


def stable_rank(W: Float[Tensor, "*batch row column"]) -> Float[Tensor, "*batch"]:
    """Stable rank ‖W‖_F² / ‖W‖₂² of each matrix, in [1, rank(W)]; 0 for a zero matrix."""
    return _stable_rank(singular_spectrum(W).double()).to(_real_dtype(W))


# The result is [*batch row] when a matrix-shaped input holds singular values
# (singular_values=True): its rows are then the batch.
def effective_rank(
    matrix_or_values: Float[Tensor, "*batch row column"] | Float[Tensor, "*batch rank"],
    *,
    singular_values: bool | None = None,
) -> Float[Tensor, "*batch"] | Float[Tensor, "*batch row"]:
    """Effective rank exp(H(p)), p = σ / Σσ (Roy & Vetterli 2007), of each matrix.

    With `singular_values=True` the input's last dim holds singular values; None
    (default) treats a 1-D input as singular values and anything larger as matrices.
    Invariants: the identity I_n gives n, the rank-1 J/n gives 1, a zero matrix gives 0;
    always in [1, rank]. Memory: one float64 copy for the SVD.
    """
    x = matrix_or_values
    if not isinstance(x, Tensor):
        raise InputError(f"effective_rank needs a tensor, got {type(x).__name__}")
    if singular_values is None:
        singular_values = x.dim() == 1
    if singular_values:
        if x.dim() < 1 or (x < 0).any() or not torch.isfinite(x).all():
            raise InputError("singular values must be a finite, non-negative tensor")
        values = x.double()
    else:
        values = singular_spectrum(x).double()
    return _effective_rank(values).to(_real_dtype(x))


def _stable_rank(values: Tensor) -> Tensor:
    top = values.amax(-1)
    return torch.where(top > 0, (values**2).sum(-1) / top.clamp_min(1e-300) ** 2, 0.0)


def _effective_rank(values: Tensor) -> Tensor:
    total = values.sum(-1, keepdim=True)
    p = values / total.clamp_min(1e-300)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # 0·log 0 = 0
    return torch.where(total[..., 0] > 0, entropy.exp(), 0.0)


def _check_matrix(W: Any, name: str) -> None:
    if not isinstance(W, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() < 2:
        raise InputError(f"{name} must have at least 2 dims, got shape {tuple(W.shape)}")
    if not (torch.is_floating_point(W) or W.is_complex()):
        raise InputError(f"{name} must be a floating-point tensor, got {W.dtype}")
    if not torch.isfinite(W).all():
        raise InputError(f"{name} contains NaN or infinite values")


def _real_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if torch.is_floating_point(x) else torch.float32


# -- per-head circuits ------------------------------------------------------------------------


@dataclass(frozen=True)
class CircuitSpectrum:
    """Spectrum of one circuit (QK or OV) of every head.

    - `eigenvalues`: the d_head nonzero-spectrum eigenvalues (complex), sorted by
      modulus, descending; those of the d_model × d_model circuit are these plus zeros.
    - `singular_values`: of the d_model × d_model circuit (rank ≤ d_head), descending.
    - `stable_rank`, `effective_rank`: from the singular values.
    """

    eigenvalues: Complex[Tensor, "layer head d_head"]
    singular_values: Float[Tensor, "layer head d_head"]
    stable_rank: Float[Tensor, "layer head"]
    effective_rank: Float[Tensor, "layer head"]


@dataclass(frozen=True)
class HeadSpectra:
    """QK (W_Q·W_Kᵀ) and OV (W_V·W_O) spectra of every head; `copying` holds the OV
    copying scores `[layer, head]` when the embeddings were available (`spectra`)."""

    qk: CircuitSpectrum
    ov: CircuitSpectrum
    copying: Float[Tensor, "layer head"] | None = None


def qk_ov_spectra(
    W_Q: Float[Tensor, "layer head d_model d_head"],
    W_K: Float[Tensor, "layer kv_head d_model d_head"],
    W_V: Float[Tensor, "layer kv_head d_model d_head"],
    W_O: Float[Tensor, "layer head d_head d_model"],
) -> HeadSpectra:
    """Eigenvalues, singular values, stable and effective rank of every head's QK and OV
    circuits, through d_head × d_head products (module docstring). Grouped K/V weights
    (`[layer, kv_head, ...]`) are expanded to the query heads.

    Computed in float64; memory O(layer·head·d_model·d_head), time O(layer·head·
    d_model·d_head²).
    """
    W_Q, W_K, W_V, W_O = _head_weights(W_Q, W_K, W_V, W_O)
    # QK = W_Q W_Kᵀ: nonzero eigenvalues of W_Kᵀ W_Q; with W = Q R, the singular values
    # of Q_Q R_Q R_Kᵀ Q_Kᵀ are those of R_Q R_Kᵀ.
    qk = _circuit(W_K.mT @ W_Q, _r(W_Q) @ _r(W_K).mT)
    ov = _circuit(W_O @ W_V, _r(W_V) @ _r(W_O.mT).mT)
    return HeadSpectra(qk=qk, ov=ov)


def _circuit(small: Tensor, reduced: Tensor) -> CircuitSpectrum:
    eigenvalues = torch.linalg.eigvals(small)
    order = eigenvalues.abs().argsort(-1, descending=True)
    values = torch.linalg.svdvals(reduced)
    return CircuitSpectrum(
        eigenvalues=eigenvalues.gather(-1, order),
        singular_values=values.float(),
        stable_rank=_stable_rank(values).float(),
        effective_rank=_effective_rank(values).float(),
    )


def _r(W: Tensor) -> Tensor:
    """R of the reduced QR W = Q·R: for a tall W, ‖W·X‖ and the spectra of W·X equal R·X's."""
    return torch.linalg.qr(W, mode="r").R


def _head_weights(W_Q: Tensor, W_K: Tensor, W_V: Tensor, W_O: Tensor) -> tuple[Tensor, ...]:
    """float64 copies with K/V expanded to the query heads, after shape checks."""
    for name, W in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V), ("W_O", W_O)):
        if not isinstance(W, Tensor) or W.dim() != 4:
            shape = tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__
            raise InputError(f"{name} must be a 4-dim [layer, head, ., .] tensor, got {shape}")
        _check_matrix(W, name)
    n_layers, n_heads, d_model, d_head = W_Q.shape
    W_K, W_V = (expand_kv_heads(W, n_heads) for W in (W_K, W_V))
    for name, W, want in (
        ("W_K", W_K, W_Q.shape),
        ("W_V", W_V, W_Q.shape),
        ("W_O", W_O, (n_layers, n_heads, d_head, d_model)),
    ):
        if tuple(W.shape) != tuple(want):
            raise InputError(f"{name} has shape {tuple(W.shape)}, expected {tuple(want)}")
    return tuple(W.double() for W in (W_Q, W_K, W_V, W_O))


def expand_kv_heads(W: Float[Tensor, "layer kv_head a b"], n_heads: int) -> Tensor:
    """Repeat grouped key/value weights to the query heads: query head h reads kv head
    h // (n_heads // n_kv_heads) (repeat_interleave, the transformer-lens layout).
    A no-op when the head counts already match."""
    n_kv = W.shape[1]
    if n_kv == n_heads:
        return W
    if n_kv < 1 or n_heads % n_kv:
        raise InputError(f"cannot expand {n_kv} key/value heads to {n_heads} query heads")
    return W.repeat_interleave(n_heads // n_kv, dim=1)


# -- copying ----------------------------------------------------------------------------------


def copying_score(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_V: Float[Tensor, "*head d_model d_head"],
    W_O: Float[Tensor, "*head d_head d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
) -> Float[Tensor, "*head"]:
    """Copying score Re(Σλ) / Σ|λ| of each head's full OV circuit W_E·W_V·W_O·W_U
    (Elhage et al. 2021), over its eigenvalues λ.

    The d_vocab × d_vocab circuit has the same nonzero eigenvalues as the d_head ×
    d_head W_O·(W_U·W_E)·W_V, which is what is decomposed. In [−1, 1]: +1 when the
    circuit's eigenvalues are all positive (OV = +I with W_U = W_Eᵀ), −1 when all are
    negative; NaN for a zero circuit. Memory: d_model² for W_U·W_E (time
    d_model²·d_vocab) plus d_head² per head; computed in float64.
    """
    for name, W in (("W_E", W_E), ("W_V", W_V), ("W_O", W_O), ("W_U", W_U)):
        _check_matrix(W, name)
    if W_E.dim() != 2 or W_U.dim() != 2:
        raise InputError("W_E must be [d_vocab, d_model] and W_U [d_model, d_vocab]")
    d_vocab, d_model = W_E.shape
    if W_U.shape != (d_model, d_vocab):
        raise InputError(f"W_U has shape {tuple(W_U.shape)}, expected {(d_model, d_vocab)}")
    if W_V.shape[-2] != d_model or W_O.shape[-1] != d_model or W_V.shape[-1] != W_O.shape[-2]:
        raise InputError(
            f"W_V {tuple(W_V.shape)} and W_O {tuple(W_O.shape)} do not fit d_model={d_model}"
        )
    round_trip = W_U.double() @ W_E.double()  # [d_model, d_model]
    small = W_O.double() @ round_trip @ W_V.double()  # [*head, d_head, d_head]
    eigenvalues = torch.linalg.eigvals(small)
    total = eigenvalues.abs().sum(-1)
    score = eigenvalues.sum(-1).real / total
    return torch.where(total > 0, score, float("nan")).to(_real_dtype(W_V))


# -- composition ------------------------------------------------------------------------------


def composition_score(
    left: Float[Tensor, "*batch d_model d_model"], right: Float[Tensor, "*batch d_model d_model"]
) -> Float[Tensor, "*batch"]:
    """Composition score ‖left·right‖_F / (‖left‖_F·‖right‖_F) (Elhage et al. 2021), in
    [0, 1] by submultiplicativity; batched over leading dims; NaN if either is zero.
    For Q/K/V composition `left` is the writer's OV circuit and `right` the reader's
    QK, QKᵀ or OV circuit (see `composition_scores_from_weights`)."""
    _check_matrix(left, "left")
    _check_matrix(right, "right")
    product = torch.linalg.matrix_norm(left @ right)
    denominator = torch.linalg.matrix_norm(left) * torch.linalg.matrix_norm(right)
    return torch.where(denominator > 0, product / denominator, float("nan"))


def composition_scores_from_weights(
    W_Q: Float[Tensor, "layer head d_model d_head"],
    W_K: Float[Tensor, "layer kv_head d_model d_head"],
    W_V: Float[Tensor, "layer kv_head d_model d_head"],
    W_O: Float[Tensor, "layer head d_head d_model"],
    kind: CompositionKind = "K",
) -> Float[Tensor, "layer head layer head"]:
    """All-pairs composition scores: entry [l1, h1, l2, h2] (l1 < l2) is how much head
    (l1, h1)'s output feeds head (l2, h2)'s input, composition_score(OV₁, R₂) with
    R₂ = QK₂ (kind "Q": the output is read as queries), QK₂ᵀ ("K": as keys) or OV₂
    ("V": as values), the transformer-lens `all_composition_scores` convention.
    Entries with l1 ≥ l2 are NaN: a head cannot feed one in its own or an earlier layer.

    Each circuit is reduced by a QR of one factor to a d_head × d_model matrix, which
    keeps every Frobenius norm. Time O((layer·head)²·d_head²·d_model), memory one
    `[head, head, d_head, d_head]` block at a time; computed in W_Q's dtype.
    """
    dtype = W_Q.dtype if W_Q.dtype == torch.float64 else torch.float32
    W_Q, W_K, W_V, W_O = (W.to(dtype) for W in _head_weights(W_Q, W_K, W_V, W_O))
    writer, reader = _reduced_circuits(W_Q, W_K, W_V, W_O, kind)
    n_layers, n_heads = W_Q.shape[:2]
    writer_norm = torch.linalg.matrix_norm(writer)  # [layer, head]
    reader_norm = torch.linalg.matrix_norm(reader)
    scores = torch.full((n_layers, n_heads, n_layers, n_heads), float("nan"), dtype=dtype)
    for source in range(n_layers - 1):
        for target in range(source + 1, n_layers):
            block = torch.einsum("hid,gdj->hgij", writer[source], reader[target])
            norm = block.flatten(-2).norm(dim=-1)  # [head, head]
            denominator = writer_norm[source][:, None] * reader_norm[target][None, :]
            scores[source, :, target, :] = torch.where(
                denominator > 0, norm / denominator, float("nan")
            )
    return scores


def _reduced_circuits(
    W_Q: Tensor, W_K: Tensor, W_V: Tensor, W_O: Tensor, kind: str
) -> tuple[Tensor, Tensor]:
    """(writer X `[.., d_head, d_model]`, reader Y `[.., d_model, d_head]`) with
    OV_writer = Q·X and R_reader = Y·Q'ᵀ for column-orthonormal Q, Q': the products
    and norms of the d_model × d_model circuits equal those of X and Y."""
    if kind not in ("Q", "K", "V"):
        raise InputError(f"kind must be 'Q', 'K' or 'V', got {kind!r}")
    writer = _r(W_V) @ W_O  # OV = W_V W_O = Q_V (R_V W_O)
    if kind == "Q":
        reader = W_Q @ _r(W_K).mT  # QK = W_Q W_Kᵀ = (W_Q R_Kᵀ) Q_Kᵀ
    elif kind == "K":
        reader = W_K @ _r(W_Q).mT  # QKᵀ = W_K W_Qᵀ
    else:
        reader = W_V @ _r(W_O.mT).mT  # OV = W_V (R_Oᵀ Q_Oᵀ)
    return writer, reader


def composition_baseline(d_model: int, d_head: int, *, samples: int = 256, seed: int = 0) -> float:
    """Mean composition score of random heads: a writer and an independent reader with
    i.i.d. Gaussian W_Q, W_K, W_V, W_O of the given shapes, over `samples` pairs
    (seeded). Q, K and V composition share this distribution. E[score²] = 1/d_model
    exactly (the circuits' row and column spaces are uniformly oriented), so the mean is
    ≈ 1/√d_model, slightly below by Jensen. Scores well above it mean composition
    beyond chance.

    Sampled exactly without d_model-sized matrices: every quantity is a function of
    Gram matrices of Gaussian factors, which are Wishart and drawn through their
    Bartlett decomposition (needs d_model ≥ 2·d_head; otherwise explicit Gaussian
    weights are drawn). Time and memory O(samples·d_head³).
    """
    if d_model < 1 or d_head < 1 or samples < 1:
        raise InputError("composition_baseline needs d_model, d_head and samples >= 1")
    rng = np.random.default_rng(seed)
    if d_model < 2 * d_head:
        return _explicit_baseline(rng, d_model, d_head, samples)
    # writer X = R_V·W_O, reader Y = G·R'ᵀ (see _reduced_circuits), with
    # R_V, R' the R factors of independent d_model × d_head Gaussians, i.e. Bartlett
    # factors, and (W_O W_Oᵀ, Gᵀ G, W_O G) the blocks of the Wishart Gram of [W_Oᵀ, G].
    r_writer = _bartlett(rng, d_model, d_head, samples)
    r_reader = _bartlett(rng, d_model, d_head, samples)
    joint = _bartlett(rng, d_model, 2 * d_head, samples)
    gram = joint.mT @ joint  # [sample, 2·d_head, 2·d_head]
    a, b, c = gram[:, :d_head, :d_head], gram[:, d_head:, d_head:], gram[:, :d_head, d_head:]
    writer_sq = torch.einsum("sij,sjk,sik->s", r_writer, a, r_writer)  # ‖R_V W_O‖²
    reader_sq = torch.einsum("sij,sjk,sik->s", r_reader, b, r_reader)  # ‖G R'ᵀ‖²
    product = torch.linalg.matrix_norm(r_writer @ c @ r_reader.mT)  # ‖R_V W_O G R'ᵀ‖
    return float((product / (writer_sq * reader_sq).sqrt()).mean())


def _bartlett(rng: np.random.Generator, n: int, p: int, count: int) -> Tensor:
    """`count` upper-triangular R `[count, p, p]` distributed as the R factor (positive
    diagonal) of an n × p standard Gaussian matrix: R_ii ~ χ_{n−i} (i from 0) and
    R_ij ~ N(0, 1) above the diagonal (Bartlett decomposition of the Wishart RᵀR; n ≥ p)."""
    upper = np.triu(rng.standard_normal((count, p, p)), 1)
    diagonal = np.sqrt(rng.chisquare(n - np.arange(p), size=(count, p)))
    upper[:, np.arange(p), np.arange(p)] = diagonal
    return torch.from_numpy(upper)


def _explicit_baseline(rng: np.random.Generator, d_model: int, d_head: int, samples: int) -> float:
    def draw(rows: int, columns: int) -> Tensor:
        return torch.from_numpy(rng.standard_normal((samples, rows, columns)))

    def head() -> tuple[Tensor, ...]:
        return (
            draw(d_model, d_head),
            draw(d_model, d_head),
            draw(d_model, d_head),
            draw(d_head, d_model),
        )

    writer, _ = _reduced_circuits(*head(), "K")
    _, reader = _reduced_circuits(*head(), "K")
    norms = torch.linalg.matrix_norm(writer) * torch.linalg.matrix_norm(reader)
    return float((torch.linalg.matrix_norm(writer @ reader) / norms).mean())


@dataclass(frozen=True)
class CompositionScores:
    """Composition scores `[layer, head, layer, head]` (writer first; NaN where the
    writer's layer is not below the reader's), the random baseline ≈ 1/√d_model and the
    kind (Q, K or V)."""

    scores: Float[Tensor, "layer head layer head"]
    baseline: float
    kind: CompositionKind

    @property
    def matrix(self) -> Float[Tensor, "source target"]:
        """The scores as a `[layer·head, layer·head]` matrix (row: writing head, column:
        reading head; head (l, h) is index l·n_heads + h)."""
        n_layers, n_heads = self.scores.shape[:2]
        return self.scores.reshape(n_layers * n_heads, n_layers * n_heads)


# -- Marchenko–Pastur -------------------------------------------------------------------------


@dataclass(frozen=True)
class MPFit:
    """Marchenko–Pastur fit of the eigenvalues of (1/N)·WᵀW for W of N × M, N ≥ M.

    - `eigenvalues`: all M, descending. `n_rows` N, `n_columns` M (after transposing).
    - `sigma`: fitted entry scale; bulk edges `lower_edge`, `upper_edge` =
      σ²(1 ∓ 1/√Q)² with Q = N/M.
    - `threshold`: eigenvalues above it are outliers (see `marchenko_pastur_fit`);
      `n_outliers` of them, values in `outliers` (descending).
    - `null_eigenvalues`: `[shuffle, M]` spectra of the shuffled null (null="shuffle").
    """

    eigenvalues: Float[Tensor, " eigen"]
    n_rows: int
    n_columns: int
    sigma: float
    lower_edge: float
    upper_edge: float
    threshold: float
    n_outliers: int
    outliers: Float[Tensor, " outlier"]
    null: NullModel
    null_eigenvalues: Float[Tensor, "shuffle eigen"] | None = None

    @property
    def q(self) -> float:
        """Q = N / M ≥ 1."""
        return self.n_rows / self.n_columns

    @property
    def aspect_ratio(self) -> float:
        """M / N = 1/Q ≤ 1 (the `ratio` of `figures.spectral.marchenko_pastur`)."""
        return self.n_columns / self.n_rows

    @property
    def sigma2(self) -> float:
        return self.sigma**2


def marchenko_pastur_median(aspect_ratio: float) -> float:
    """Median of the Marchenko–Pastur law with σ² = 1 and ratio γ = M/N ∈ (0, 1].

    Numerical: the density is integrated over θ with x = a + (b − a)(1 − cos θ)/2,
    which removes the square-root (and, at γ = 1, the 1/√x) endpoint singularities.
    """
    if not 0 < aspect_ratio <= 1:
        raise InputError(f"the MP aspect ratio M/N must lie in (0, 1], got {aspect_ratio}")
    a, b = (1 - math.sqrt(aspect_ratio)) ** 2, (1 + math.sqrt(aspect_ratio)) ** 2
    theta = np.linspace(0.0, math.pi, 20001)
    x = a + (b - a) * (1 - np.cos(theta)) / 2
    half = (b - a) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        integrand = half**2 * np.sin(theta) ** 2 / (2 * math.pi * aspect_ratio * x)
    integrand[~np.isfinite(integrand)] = 0.0
    if aspect_ratio == 1:  # at x → 0: sin²θ / x → 4/b
        integrand[0] = half**2 * 4 / b / (2 * math.pi)
    steps = (integrand[1:] + integrand[:-1]) / 2 * np.diff(theta)
    cdf = np.concatenate([[0.0], np.cumsum(steps)])
    cdf /= cdf[-1]
    return float(np.interp(0.5, cdf, x))


def marchenko_pastur_fit(
    matrix: Float[Tensor, "row column"] | Sequence[Tensor],
    *,
    null: NullModel = "none",
    seed: int = 0,
    shuffles: int = 20,
    tracy_widom: float = TRACY_WIDOM_999,
    null_margin: float = 4.0,
) -> MPFit:
    """Fit the Marchenko–Pastur law to (1/N)·WᵀW and count eigenvalues above the bulk.

    `matrix` is W, or a sequence of factors (e.g. `(W_Q, W_K.T)`) whose product is W.
    W is transposed if needed so that N ≥ M. σ² is fitted robustly as median(λ) /
    (median of MP with σ² = 1), so a few outliers do not move it.

    - null="none": outliers are the eigenvalues above σ²(μ + c·s)/N, the Tracy–Widom
      margin of Johnstone (2001) for the largest eigenvalue of a real Gaussian WᵀW:
      μ = (√(N−1) + √M)², s = (√(N−1) + √M)(1/√(N−1) + 1/√M)^(1/3), c = `tracy_widom`
      (default 3.27, the 99.9% quantile of TW₁: ~0.1% false spikes per i.i.d. matrix).
      Only valid for i.i.d. entries: a product of Gaussians is far from MP (its median
      eigenvalue is 0 when rank < M/2) and reports false spikes.
    - null="shuffle": `shuffles` nulls are drawn by permuting the entries of each factor
      independently (seeded) and recomputing the product, which keeps each factor's
      entry distribution and the product's rank but destroys its structure. Eigenvalue
      i (descending) is an outlier when it exceeds the null's mean at rank i by more than
      `null_margin` null standard deviations; the outliers are the leading run of such
      ranks. A product of independent Gaussians then reports none — but only if it is
      passed as factors: shuffling the entries of the product itself destroys its low
      rank, and every nonzero eigenvalue would stand out.

    Memory: W plus an M × M Gram matrix (the null: batches of shuffled products of
    about 4M numbers); time O(N·M²·(1 + shuffles)); float64.
    """
    if null not in ("none", "shuffle"):
        raise InputError(f"null must be 'none' or 'shuffle', got {null!r}")
    if null == "shuffle" and shuffles < 2:
        raise InputError("the shuffled null needs at least 2 shuffles")
    factors = [matrix] if isinstance(matrix, Tensor) else list(matrix)
    if not factors:
        raise InputError("marchenko_pastur_fit needs a matrix or its factors")
    for i, factor in enumerate(factors):
        _check_matrix(factor, f"factor {i}")
        if factor.dim() != 2:
            raise InputError(f"factor {i} must be a 2-dim matrix, got {tuple(factor.shape)}")
    factors = [factor.double() for factor in factors]
    try:
        W = torch.linalg.multi_dot(factors) if len(factors) > 1 else factors[0]
    except RuntimeError as error:
        raise InputError(f"the factors do not multiply: {error}") from None
    transpose = W.shape[0] < W.shape[1]
    n_rows, n_columns = (W.shape[1], W.shape[0]) if transpose else tuple(W.shape)
    if n_columns < 2:
        raise InputError(f"need at least a 2-column matrix, got {tuple(W.shape)}")
    eigenvalues = _gram_eigenvalues(W, transpose)
    gamma = n_columns / n_rows
    sigma2 = float(eigenvalues.median()) / marchenko_pastur_median(gamma)
    sigma2 = max(sigma2, 0.0)
    lower, upper = sigma2 * (1 - math.sqrt(gamma)) ** 2, sigma2 * (1 + math.sqrt(gamma)) ** 2

    null_eigenvalues = None
    if null == "none":
        root_n, root_m = math.sqrt(n_rows - 1) if n_rows > 1 else 1.0, math.sqrt(n_columns)
        mu = (root_n + root_m) ** 2
        scale = (root_n + root_m) * (1 / root_n + 1 / root_m) ** (1 / 3)
        threshold = max(upper, sigma2 * (mu + tracy_widom * scale) / n_rows)
        threshold = max(threshold, 1e-12 * float(eigenvalues[0]))  # never round-off zeros
        count = int((eigenvalues > threshold).sum())
    else:
        generator = torch.Generator().manual_seed(seed)
        chunk = max(1, min(shuffles, 4_000_000 // W.numel()))  # products held at once
        draws = []
        for start in range(0, shuffles, chunk):
            products = []
            for _ in range(min(chunk, shuffles - start)):
                shuffled = [
                    f.flatten()[torch.randperm(f.numel(), generator=generator)].reshape(f.shape)
                    for f in factors
                ]
                products.append(
                    torch.linalg.multi_dot(shuffled) if len(shuffled) > 1 else shuffled[0]
                )
            draws.append(_gram_eigenvalues(torch.stack(products), transpose))
        null_eigenvalues = torch.cat(draws)  # [shuffle, M]
        limits = null_eigenvalues.mean(0) + null_margin * null_eigenvalues.std(0)
        above = eigenvalues > limits
        count = int(above.long().cumprod(0).sum())  # the leading run only
        threshold = float(limits[0])
    return MPFit(
        eigenvalues=eigenvalues,
        n_rows=n_rows,
        n_columns=n_columns,
        sigma=math.sqrt(sigma2),
        lower_edge=lower,
        upper_edge=upper,
        threshold=float(threshold),
        n_outliers=count,
        outliers=eigenvalues[:count].clone(),
        null=null,
        null_eigenvalues=null_eigenvalues,
    )


def _gram_eigenvalues(W: Tensor, transpose: bool) -> Tensor:
    """Eigenvalues of (1/N)·WᵀW (W `[..., N, M]` once oriented, N ≥ M), descending,
    clamped at 0; batched over leading dims."""
    if transpose:
        W = W.mT
    gram = W.mT @ W / W.shape[-2]
    return torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0.0)


# -- heavy tails ------------------------------------------------------------------------------


class PowerLawFit(NamedTuple):
    """Power-law tail p(λ) ∝ λ^(−alpha) for λ ≥ x_min, with its KS distance."""

    alpha: float
    x_min: float
    ks: float


def heavy_tail_alpha(
    eigenvalues: Float[Tensor, " eigen"] | Float[np.ndarray, " eigen"] | Sequence[float],
) -> PowerLawFit:
    """Power-law exponent of an eigenvalue spectrum, WeightWatcher style (Martin &
    Mahoney 2021): for each candidate x_min (each eigenvalue with at least one larger),
    the maximum-likelihood α = 1 + n / Σ_{λ_i ≥ x_min} ln(λ_i / x_min) over the n
    eigenvalues in the tail, and the x_min whose fit has the smallest Kolmogorov–Smirnov
    distance to the tail (Clauset, Shalizi & Newman 2009). α is the density exponent.

    Pass eigenvalues of WᵀW (squared singular values). Values ≤ 1e-12·max (numerical
    zeros of a low-rank matrix) are dropped. Unreliable below ~10 eigenvalues: a
    single head's d_head values are too few, pool them (`heavy_tail_alpha_by_layer`).
    Memory O(n·min(n, 512)), time O(n²).
    """
    values = np.asarray(
        eigenvalues.detach().cpu().double() if isinstance(eigenvalues, Tensor) else eigenvalues,
        dtype=np.float64,
    ).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise InputError("heavy_tail_alpha needs a non-empty, finite set of eigenvalues")
    top = values.max()
    x = np.sort(values[values > max(top, 0.0) * 1e-12])
    n = x.size
    if n < 2 or x[0] == x[-1]:
        raise InputError(
            f"heavy_tail_alpha needs at least 2 distinct positive eigenvalues, got {n}"
        )
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[k] = Σ_{i ≥ k} ln x_i
    best = (math.inf, math.nan, math.nan)  # (ks, alpha, x_min)
    candidates = np.flatnonzero(x[:-1] < x[-1])  # a tail with some spread
    for start in range(0, candidates.size, 512):
        k = candidates[start : start + 512]
        tail = n - k
        spread = suffix[k] - tail * logs[k]
        alpha = 1 + tail / spread
        j = np.arange(n)
        rank = j[None, :] - k[:, None]  # position within the tail
        inside = rank >= 0
        ratio = np.where(inside, x[None, :] / x[k][:, None], 1.0)
        model = 1 - ratio ** (1 - alpha[:, None])
        upper = np.abs((rank + 1) / tail[:, None] - model)
        lower = np.abs(rank / tail[:, None] - model)
        ks = np.where(inside, np.maximum(upper, lower), 0.0).max(1)
        i = int(np.argmin(ks))
        if ks[i] < best[0]:
            best = (float(ks[i]), float(alpha[i]), float(x[k[i]]))
    return PowerLawFit(alpha=best[1], x_min=best[2], ks=best[0])


@dataclass(frozen=True)
class LayerPowerLaw:
    """`heavy_tail_alpha` per layer: α, x_min and KS distance `[layer]`, and how many
    eigenvalues were pooled for each layer."""

    alpha: Float[Tensor, " layer"]
    x_min: Float[Tensor, " layer"]
    ks: Float[Tensor, " layer"]
    n_eigenvalues: tuple[int, ...]


def heavy_tail_alpha_by_layer(
    eigenvalues: Float[Tensor, "layer ..."] | Sequence[Tensor],
) -> LayerPowerLaw:
    """`heavy_tail_alpha` on each layer's eigenvalues pooled over everything after the
    layer axis (e.g. `spectra.ov.singular_values ** 2`, `[layer, head, d_head]`: all
    heads of a layer together), or on a sequence of per-layer tensors of any shape.
    A layer with fewer than 2 distinct positive eigenvalues gets NaN."""
    if isinstance(eigenvalues, Tensor) and eigenvalues.dim() < 2:
        raise InputError("eigenvalues must be [layer, ...] with at least 2 dims")
    layers = list(eigenvalues)
    if not layers:
        raise InputError("heavy_tail_alpha_by_layer needs at least one layer")
    fits, counts = [], []
    for values in layers:
        flat = torch.as_tensor(values).detach().double().flatten()
        counts.append(int(flat.numel()))
        try:
            fits.append(heavy_tail_alpha(flat))
        except InputError:
            fits.append(PowerLawFit(math.nan, math.nan, math.nan))

    def column(name: str) -> Tensor:
        return torch.tensor([getattr(fit, name) for fit in fits], dtype=torch.float64)

    return LayerPowerLaw(
        alpha=column("alpha"), x_min=column("x_min"), ks=column("ks"), n_eigenvalues=tuple(counts)
    )


# -- attention maps and the residual stream ---------------------------------------------------


def attention_effective_rank(
    pattern: Float[Tensor, "*head query key"],
) -> Float[Tensor, "*head"]:
    """Effective rank exp(H(σ/Σσ)) of each attention map (any leading dims, e.g.
    `[layer, head]` or `[batch, layer, head]`). Padded (all-zero) query rows and key
    columns add only zero singular values and do not change it. A one-hot map onto a
    single key (every query on key 0) gives 1; the identity gives the length.
    Time O(query³) per map; memory one float64 copy of the pattern."""
    check_pattern(pattern, min_dims=2, allow_zero_rows=True)
    return _effective_rank(torch.linalg.svdvals(pattern.double())).to(pattern.dtype)


def rank_collapse(
    residuals: Float[Tensor, "*layer position d_model"],
) -> Float[Tensor, "*layer"]:
    """Relative distance from rank one, ‖X − 1·x̄ᵀ‖_F / ‖X‖_F, of each residual-stream
    matrix X (`[position, d_model]`, x̄ its mean over positions), after Dong et al. 2021.

    0 means every token carries the same vector (rank collapse); it cannot exceed 1.
    Pass one prompt's real (unpadded) tokens; the intended residual is each block's
    output (`Site(layer, "resid_post")`), stacked as
    `[layer, position, d_model]`; with the embedding output first the curve starts at
    layer 0's input. NaN for an all-zero X.
    """
    _check_matrix(residuals, "residuals")
    X = residuals.double()
    centred = X - X.mean(-2, keepdim=True)
    norm = torch.linalg.matrix_norm(X)
    value = torch.linalg.matrix_norm(centred) / norm
    return torch.where(norm > 0, value, float("nan")).to(_real_dtype(residuals))


__getattr__ = moved(
    __name__,
    {
        "HeadWeights": "headscope.models.weights:HeadWeights",
        "head_weights": "headscope.experiments.spectra:head_weights",
        "copying_scores": "headscope.experiments.spectra:copying_scores",
        "composition_scores": "headscope.experiments.spectra:composition_scores",
        "spectra": "headscope.experiments.spectra:spectra",
    },
)
