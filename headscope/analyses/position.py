"""Position bias from the attention mask, and attention sinks (docs/methods.md §3).

- Position-bias graphs (Wu, Wang, Jegelka, Jadbabaie 2025, "On the Emergence of Position
  Bias in Transformers"): the mask is a directed graph, and the cumulative influence
  ``P^(t) = A^(t)···A^(1)`` of stacked attention layers shows which positions the model
  favours before any content is seen.
- Attention sinks (Xiao et al. 2023, "Efficient Streaming Language Models with Attention
  Sinks", StreamingLLM; the metric of Gu et al. 2025, "When Attention Sink Emerges in
  Language Models"): ``α_k`` is the mean attention key ``k`` receives from the queries that
  can see it, read against ``α_k^uniform``, the same score of content-free attention: a
  sink needs ``α_k > 0.3``, ``α_k >= 4·α_k^uniform`` and at least 4 queries behind it.
  Causality comes from the record (or an explicit ``causal=``), never from a default.

Indices are 0-based and ``[query, key]``; rows of attention sum to 1. Everything is computed
in float64 and returned as float64 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import networkx as nx
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope._deprecated import moved
from headscope.analyses.checks import check_pattern
from headscope.analyses.flow import rollout
from headscope.errors import InputError

__all__ = [
    "SINK_FLOOR",
    "SINK_MIN_QUERIES",
    "SINK_RATIO",
    "MaskKind",
    "RecordLike",
    "SinkDecision",
    "cumulative_influence",
    "influence_by_distance",
    "mask_attention",
    "mask_graph",
    "most_influential_distance",
    "sink_baseline",
    "sink_decision",
    "sink_heads",
    "sink_scores",
]

MaskKind = Literal["causal", "bidirectional", "sliding_window", "prefix", "decay"]
_TIE = 1e-12
_KINDS = ("causal", "bidirectional", "sliding_window", "prefix", "decay")
_PARAMS: dict[str, frozenset[str]] = {
    "causal": frozenset(),
    "bidirectional": frozenset(),
    "sliding_window": frozenset({"window"}),
    "prefix": frozenset({"prefix"}),
    "decay": frozenset({"m", "gamma"}),
}


# --------------------------------------------------------------------------- masks


def _mask_and_scores(
    kind: str, n: int, params: dict[str, int | float]
) -> tuple[Bool[Tensor, "query key"], Float[Tensor, "query key"]]:
    """Boolean mask ``[query key]`` and additive scores (0, or −(i−j)·m for decay)."""
    if kind not in _KINDS:
        raise InputError(f"unknown mask kind {kind!r}; expected one of {', '.join(_KINDS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive int number of tokens, got {n!r}")
    unknown = set(params) - _PARAMS[kind]
    if unknown:
        allowed = ", ".join(sorted(_PARAMS[kind])) or "none"
        raise InputError(
            f"unknown parameter(s) {', '.join(sorted(unknown))} for mask {kind!r} "
            f"(allowed: {allowed})"
        )
    query = torch.arange(n)[:, None]
    key = torch.arange(n)[None, :]
    causal = key <= query
    scores = torch.zeros(n, n, dtype=torch.float64)
    if kind == "causal":
        mask = causal
    elif kind == "bidirectional":
        mask = torch.ones(n, n, dtype=torch.bool)
    elif kind == "sliding_window":
        window = params.get("window")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InputError(f"sliding_window needs an int window >= 1, got {window!r}")
        mask = causal & (query - key < window)
    elif kind == "prefix":
        prefix = params.get("prefix")
        if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= n:
            raise InputError(f"prefix needs an int prefix length in [0, {n}], got {prefix!r}")
        mask = causal | ((query < prefix) & (key < prefix))
    else:
        if ("m" in params) == ("gamma" in params):
            raise InputError("decay needs exactly one of m (slope >= 0) or gamma (in (0, 1])")
        if "m" in params:
            slope = float(params["m"])
            if not math.isfinite(slope) or slope < 0:
                raise InputError(f"decay slope m must be finite and >= 0, got {params['m']!r}")
        else:
            gamma = float(params["gamma"])
            if not 0 < gamma <= 1:
                raise InputError(f"decay gamma must be in (0, 1], got {params['gamma']!r}")
            slope = -math.log(gamma)
        mask = causal
        scores = -(query - key).to(torch.float64) * slope
    return mask, scores


def mask_graph(kind: MaskKind, n: int, **params: int | float) -> nx.DiGraph:
    """The attention mask as a directed graph (Wu et al. 2025).

    Nodes are token positions ``0..n−1``; an edge ``i -> j`` means query ``i`` may attend to
    key ``j`` (self-loops included). Attribute ``"weight"`` is 1, or ``exp(−(i−j)·m)`` for
    ``"decay"``. Kinds and parameters:

    - ``"causal"``: ``j <= i``; ``"bidirectional"``: every pair;
    - ``"sliding_window"`` (``window >= 1``): ``0 <= i − j < window``;
    - ``"prefix"`` (``prefix`` length): bidirectional inside the first ``prefix`` tokens,
      causal after (prefix-LM);
    - ``"decay"`` (``m >= 0`` or ``gamma = e^(−m)`` in (0, 1]): causal with ALiBi-like
      weights ``γ^(i−j)``.

    Raises InputError for an unknown kind, unknown or invalid parameters. Memory O(n²).
    """
    mask, scores = _mask_and_scores(kind, n, params)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    weights = scores.exp()
    queries, keys = torch.nonzero(mask, as_tuple=True)
    graph.add_edges_from(
        (int(i), int(j), {"weight": float(weights[i, j])})
        for i, j in zip(queries.tolist(), keys.tolist(), strict=True)
    )
    return graph


def mask_attention(kind: MaskKind, n: int, **params: int | float) -> Float[Tensor, "query key"]:
    """Content-free attention over a mask: uniform over the allowed keys, or for ``"decay"``
    the softmax of scores ``−(i−j)·m`` over the causal mask (weights ∝ ``γ^(i−j)``).

    Same kinds and parameters as :func:`mask_graph`. Rows sum to 1. Memory O(n²).
    """
    mask, scores = _mask_and_scores(kind, n, params)
    logits = scores.masked_fill(~mask, -math.inf)
    return torch.softmax(logits, dim=-1)


# --------------------------------------------------------------------------- influence


def _layer_stack(
    attention: Float[Tensor, "layer head query key"]
    | Float[Tensor, "layer query key"]
    | Float[Tensor, "query key"],
    n_layers: int | None,
) -> Float[Tensor, "layer head query key"] | Float[Tensor, "layer query key"]:
    """The validated input as a layer stack (a single map repeated ``n_layers`` times as an
    expanded view, no copy); heads are left for :func:`flow.rollout` to average."""
    check_pattern(attention, name="attention")
    if attention.dim() == 2:
        if n_layers is None:
            raise InputError("a single [query key] attention needs n_layers= to repeat it")
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise InputError(f"n_layers must be a positive int, got {n_layers!r}")
        return attention.expand(n_layers, *attention.shape)
    if n_layers is not None:
        raise InputError("n_layers only applies to a single [query key] attention matrix")
    if attention.dim() in (3, 4):
        return attention
    raise InputError(
        "attention must be [query key], [layer query key] or [layer head query key], got "
        f"shape {tuple(attention.shape)}"
    )


def cumulative_influence(
    attention: Float[Tensor, "layer head query key"]
    | Float[Tensor, "layer query key"]
    | Float[Tensor, "query key"],
    residual: float | None = None,
    *,
    n_layers: int | None = None,
) -> Float[Tensor, "layer query key"]:
    """Cumulative influence ``P^(t) = Ã^(t)···Ã^(1)`` after each layer (Wu et al. 2025).

    This is :func:`headscope.analyses.flow.rollout` (Abnar & Zuidema 2020) with
    ``Ã = r·I + (1 − r)·A``: ``residual=None`` uses the attention as is (``r = 0``, the
    paper's convention: rollout without the residual); ``residual=r`` mixes in the
    identity as attention rollout does. Input: ``[layer query key]``,
    ``[layer head query key]`` (heads averaged) or one ``[query key]`` matrix repeated
    ``n_layers`` times. Known answer: uniform causal attention gives
    ``P^(t)[1, 0] = 1 − 2^(−t)``. Rows sum to 1. Memory O(L·N²), time O(L·N³).
    """
    stack = _layer_stack(attention, n_layers)
    if residual is not None:
        residual = float(residual)
        if not 0.0 <= residual <= 1.0:
            raise InputError(f"residual must be None or in [0, 1], got {residual}")
    return rollout(stack, 0.0 if residual is None else residual)


def influence_by_distance(
    influence: Float[Tensor, "layer query key"] | Float[Tensor, "query key"],
    *,
    normalize: bool = True,
    signed: bool = False,
) -> Float[Tensor, "layer distance"] | Float[Tensor, " distance"]:
    """Influence as a function of query–key distance, averaged over queries.

    For each query ``i`` the mass at distance ``d`` is ``Σ_{j : i−j = d} P[i, j]`` (one key
    per query and distance); the curve averages it over the queries for which a key at that
    distance exists (for ``d >= 0``: queries ``i >= d``), so late distances are not
    diluted by queries that cannot reach them. ``signed=False`` (default) uses
    ``d = |i − j|``, columns ``0..N−1`` (for causal masks ``d = i − j``);
    ``signed=True`` keeps the sign, columns ``d = −(N−1)..N−1`` at index ``d + N − 1``.
    ``normalize=True`` rescales each layer's curve to sum to 1.

    Works on any ``[layer query key]`` map: a model's rollout or cumulative influence, or
    the mask-only baseline; a single ``[query key]`` map gives a ``[distance]`` curve.
    Memory O(L·N²).
    """
    if not isinstance(influence, Tensor) or influence.dim() not in (2, 3):
        shape = tuple(influence.shape) if isinstance(influence, Tensor) else type(influence)
        raise InputError(f"influence must be [layer query key] or [query key], got {shape}")
    if influence.shape[-1] != influence.shape[-2]:
        raise InputError(
            f"influence must be square in (query, key), got shape {tuple(influence.shape)}"
        )
    if not torch.isfinite(influence).all():
        raise InputError("influence contains NaN or infinite values")
    single = influence.dim() == 2
    p64 = influence.detach().to(torch.float64)
    if single:
        p64 = p64[None]
    n = p64.shape[-1]
    query = torch.arange(n, device=p64.device)[:, None]
    key = torch.arange(n, device=p64.device)[None, :]
    offset = (query - key) + (n - 1)  # signed distance, shifted to 0..2n-2
    index = offset.expand_as(p64).reshape(p64.shape[0], -1)
    sums = torch.zeros(p64.shape[0], 2 * n - 1, dtype=torch.float64, device=p64.device)
    sums.scatter_add_(1, index, p64.reshape(p64.shape[0], -1))
    counts = torch.bincount(offset.reshape(-1), minlength=2 * n - 1).to(torch.float64)
    curve = sums / counts
    if not signed:
        folded = curve[:, n - 1 :].clone()
        folded[:, 1:] += curve[:, : n - 1].flip(-1)
        curve = folded
    if normalize:
        totals = curve.sum(dim=-1, keepdim=True)
        curve = torch.where(totals > 0, curve / totals.clamp_min(1e-300), curve)
    return curve[0] if single else curve


def most_influential_distance(
    influence: Float[Tensor, "layer query key"] | Float[Tensor, "query key"],
    *,
    query: int | None = None,
) -> Int[Tensor, " layer"] | Int[Tensor, ""]:
    """The query–key distance ``i − j`` carrying the most influence, per layer.

    ``query=None`` takes the argmax of the query-averaged :func:`influence_by_distance`
    curve (``|i − j|``); ``query=i`` the argmax over keys of row ``i`` alone, returned as
    ``i − j`` (use a late query of a long sequence to avoid edge effects). Values within a
    relative 1e-12 of the maximum count as ties and go to the longer distance: for the decay
    mask the product of ``k`` layers is a negative binomial whose two central values tie
    exactly when ``(k − 1)/(e^m − 1)`` is an integer, and that upper value is the peak Wu et
    al. 2025 state (γ = 0.8: 4, 36, 76 for k = 2, 10, 20).
    """
    if query is None:
        curve = influence_by_distance(influence, normalize=False)
        near = curve >= curve.max(dim=-1, keepdim=True).values * (1 - _TIE)
        distance = torch.arange(curve.shape[-1], device=curve.device)
        return torch.where(near, distance, -1).max(dim=-1).values
    if not isinstance(influence, Tensor) or influence.dim() not in (2, 3):
        raise InputError("influence must be [layer query key] or [query key]")
    n = influence.shape[-1]
    if not -n <= query < n:
        raise InputError(f"query {query} out of range for {n} tokens")
    query = query % n
    row = influence[..., query, :].detach().to(torch.float64)
    near = row >= row.max(dim=-1, keepdim=True).values * (1 - _TIE)
    keys = torch.arange(n, device=row.device)
    best_key = torch.where(near, keys, n).min(dim=-1).values  # smallest key: longest i - j
    return query - best_key


# --------------------------------------------------------------------------- sinks

#: A sink needs ``α_k >= SINK_RATIO · α_k^uniform`` (docs/methods.md §3.2 for the calibration).
SINK_RATIO = 4.0
#: ... and ``α_k > SINK_FLOOR`` (Gu et al. 2025's ε), so that long prompts, whose uniform
#: baseline is tiny, still need a large share of the attention.
SINK_FLOOR = 0.3
#: ... and at least this many queries that see key ``k`` (summed over prompts).
SINK_MIN_QUERIES = 4


@runtime_checkable
class RecordLike(Protocol):
    """What the sink functions read from an attention record (duck-typed: analyses never
    import ``headscope.records``): ``pattern``, ``spec.causal`` and ``lengths``."""

    pattern: Tensor


_Pattern = Float[Tensor, "layer head query key"] | Float[Tensor, "batch layer head query key"]
_Mask = Bool[Tensor, "query key"] | Bool[Tensor, "batch query key"]
_Lengths = Int[Tensor, " batch"] | Sequence[int]


def _visible(
    n_batch: int,
    n: int,
    *,
    causal: bool | None,
    mask: Tensor | None,
    lengths: Tensor | Sequence[int] | None,
    device: torch.device,
) -> Bool[Tensor, "batch query key"]:
    """Which (query, key) pairs may attend, per prompt: ``mask`` when given, else the
    causal or bidirectional mask, restricted to real positions (``lengths``)."""
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dim() not in (2, 3) or mask.shape[-2:] != (n, n):
            raise InputError(f"mask must be a boolean [query key] or [batch query key] of size {n}")
        visible = mask.to(device=device, dtype=torch.bool)
        if visible.dim() == 2:
            visible = visible.expand(n_batch, n, n)
        elif visible.shape[0] != n_batch:
            raise InputError(f"mask batch size {visible.shape[0]} != pattern batch {n_batch}")
    else:
        if causal is None:
            raise InputError("causal= is required: True for a causal mask, False for bidirectional")
        base = torch.ones(n, n, dtype=torch.bool, device=device)
        if causal:
            base = torch.tril(base)
        visible = base.expand(n_batch, n, n)
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=device)
        if lengths.shape != (n_batch,) or (lengths < 1).any() or (lengths > n).any():
            raise InputError(f"lengths must be [batch] = ({n_batch},) with values in [1, {n}]")
        position = torch.arange(n, device=device)
        real = position[None, :] < lengths[:, None]
        visible = visible & real[:, :, None] & real[:, None, :]
    return visible


def _pattern_and_mask(
    pattern: object,
    causal: bool | None,
    mask: Tensor | None,
    lengths: Tensor | Sequence[int] | None,
    name: str,
) -> tuple[Tensor, bool | None, Tensor | Sequence[int] | None]:
    """(pattern, causal, lengths): from a record (causality from ``record.spec.causal``,
    padding from ``record.lengths``) or a bare tensor, which must say ``causal=`` (or
    give ``mask=``): no default, since a wrong one silently changes every score."""
    if isinstance(pattern, Tensor):
        if causal is None and mask is None:
            raise InputError(
                f"{name} needs causal= for a bare tensor (True: causal decoder, False: "
                "bidirectional encoder) or mask=; pass the AttentionRecord instead to read "
                "it from record.spec.causal"
            )
        return pattern, causal, lengths
    if not hasattr(pattern, "pattern"):
        raise InputError(
            f"{name} needs an attention record or a [layer head query key] / "
            f"[batch layer head query key] tensor, got {type(pattern).__name__}"
        )
    spec_causal = getattr(getattr(pattern, "spec", None), "causal", None)
    if spec_causal is None and causal is None and mask is None:
        raise InputError(f"{name}: the record has no spec.causal; pass causal= explicitly")
    if causal is not None and spec_causal is not None and bool(causal) != bool(spec_causal):
        raise InputError(
            f"{name}: causal={causal} contradicts the record's spec.causal={spec_causal}"
        )
    if lengths is not None:
        raise InputError(f"{name}: lengths come from the record (record.lengths); do not pass them")
    causal = bool(spec_causal) if spec_causal is not None else causal
    return pattern.pattern, causal, getattr(pattern, "lengths", None)


def _as_batch(pattern: Tensor, lengths: object) -> tuple[Tensor, bool]:
    if not isinstance(pattern, Tensor) or pattern.dim() not in (4, 5):
        shape = tuple(pattern.shape) if isinstance(pattern, Tensor) else type(pattern)
        raise InputError(
            f"pattern must be [layer head query key] or [batch layer head query key], got {shape}"
        )
    check_pattern(pattern, min_dims=4, allow_zero_rows=lengths is not None)
    batched = pattern.dim() == 5
    p64 = pattern.detach().to(torch.float64)
    if not batched:
        if lengths is not None:
            raise InputError("lengths needs a [batch layer head query key] pattern")
        p64 = p64[None]
    return p64, batched


def _baseline_and_support(
    visible: Bool[Tensor, "batch query key"],
) -> tuple[Float[Tensor, "batch key"], Float[Tensor, "batch key"]]:
    """Content-free ``α_k^uniform`` (NaN where no query sees ``k``) and the number of
    queries that see each key, per prompt."""
    weights = visible.to(torch.float64)
    per_query = weights.sum(-1, keepdim=True)  # keys each query sees
    uniform = weights / per_query.clamp_min(1)
    support = weights.sum(1)  # [batch key]
    baseline = uniform.sum(1) / support.clamp_min(1)
    return torch.where(support > 0, baseline, torch.nan), support


def sink_baseline(
    n: int,
    *,
    causal: bool | None = None,
    mask: _Mask | None = None,
    lengths: _Lengths | None = None,
) -> Float[Tensor, " key"] | Float[Tensor, "batch key"]:
    """The content-free sink score ``α_k^uniform``: :func:`sink_scores` of attention that
    is uniform over the keys each query may see (docs/methods.md §3.2).

    Causal: ``(1/(T − k))·Σ_{q≥k} 1/(q + 1)`` (``H_T/T`` for ``k = 0``: 0.340 at T = 8,
    0.074 at T = 64); bidirectional: ``1/T``; or uniform over ``mask``. ``causal=`` (or
    ``mask=``) is required. ``lengths`` (right padding of a batch of width ``n``) gives one
    row per prompt, NaN at padded keys; so does a ``[batch query key]`` mask. float64.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive int number of tokens, got {n!r}")
    n_batch = 1
    if lengths is not None:
        n_batch = len(lengths)
    elif isinstance(mask, Tensor) and mask.dim() == 3:
        n_batch = mask.shape[0]
    visible = _visible(
        n_batch, n, causal=causal, mask=mask, lengths=lengths, device=torch.device("cpu")
    )
    baseline, _ = _baseline_and_support(visible)
    batched = lengths is not None or (isinstance(mask, Tensor) and mask.dim() == 3)
    return baseline if batched else baseline[0]


def sink_scores(
    pattern: _Pattern | RecordLike,
    *,
    causal: bool | None = None,
    mask: _Mask | None = None,
    lengths: _Lengths | None = None,
) -> Float[Tensor, "layer head key"] | Float[Tensor, "batch layer head key"]:
    """Attention-sink score per key (Xiao et al. 2023; metric of Gu et al. 2025).

    ``α_k = (1/|Q_k|)·Σ_{q ∈ Q_k} A[q, k]``, with ``Q_k`` the queries that can see key ``k``
    (0-indexed). Pass an attention record: visibility comes from ``record.spec.causal``
    and padding from ``record.lengths``. A bare tensor needs ``causal=`` (``Q_k = {q >= k}``,
    ``T − k`` queries, when causal; all ``T`` otherwise) or ``mask=`` (``[query key]`` or
    ``[batch query key]``, True = may attend), and for ``[batch ...]`` input ``lengths``
    (right padding): only positions ``< lengths[b]`` count, padded keys get NaN (as do keys
    no query can see). Uniform causal attention over ``T`` tokens gives ``α_0 = H_T/T``
    (harmonic number; 0.074 at T = 64; :func:`sink_baseline`); a head whose queries all
    attend to key 0 gives ``α_0 = 1``. Whether a score makes a sink:
    :func:`sink_decision`. Memory O(B·L·H·N).
    """
    tensor, causal, lengths = _pattern_and_mask(pattern, causal, mask, lengths, "sink_scores")
    p64, batched = _as_batch(tensor, lengths)
    n_batch, n = p64.shape[0], p64.shape[-1]
    visible = _visible(n_batch, n, causal=causal, mask=mask, lengths=lengths, device=p64.device)
    scores = _alpha(p64, visible)
    return scores if batched else scores[0]


def _alpha(
    p64: Float[Tensor, "batch layer head query key"], visible: Bool[Tensor, "batch query key"]
) -> Float[Tensor, "batch layer head key"]:
    weights = visible.to(torch.float64)
    received = torch.einsum("blhqk,bqk->blhk", p64, weights)
    counts = weights.sum(dim=1)  # [batch key]
    scores = received / counts[:, None, None, :]
    return torch.where(counts[:, None, None, :] > 0, scores, torch.nan)


@dataclass(frozen=True)
class SinkDecision:
    """Which (head, key) pairs are attention sinks, with the evidence (docs/methods.md §3.2).

    - ``alpha`` ``[layer head key]``: the sink score ``α_k`` (for a batch, the mean over
      every (prompt, query) pair that sees key ``k``);
    - ``baseline`` ``[key]``: ``α_k^uniform``, the same score of content-free attention
      (:func:`sink_baseline`, pooled the same way);
    - ``support`` ``[key]``: the number of queries that see key ``k`` (summed over prompts).

    ``(layer, head, k)`` is a sink when ``support_k >= min_queries``, ``α_k > floor`` and
    ``α_k >= min_ratio · α_k^uniform``; ``ratio`` is ``α_k / α_k^uniform``. ``causal`` says
    which baseline was used (None: a custom mask). Keys nobody sees have NaN ``alpha`` and
    ``baseline`` and are never sinks.
    """

    alpha: Float[Tensor, "layer head key"]
    baseline: Float[Tensor, " key"]
    support: Int[Tensor, " key"]
    min_ratio: float = SINK_RATIO
    floor: float = SINK_FLOOR
    min_queries: int = SINK_MIN_QUERIES
    causal: bool | None = None
    n_prompts: int = 1

    def __post_init__(self) -> None:
        if not math.isfinite(self.min_ratio) or self.min_ratio <= 0:
            raise InputError(f"min_ratio must be a positive number, got {self.min_ratio!r}")
        if not 0 <= self.floor < 1:
            raise InputError(f"floor must be in [0, 1), got {self.floor!r}")
        if isinstance(self.min_queries, bool) or not isinstance(self.min_queries, int):
            raise InputError(f"min_queries must be an int, got {self.min_queries!r}")
        if self.min_queries < 1:
            raise InputError(f"min_queries must be >= 1, got {self.min_queries}")

    @property
    def ratio(self) -> Float[Tensor, "layer head key"]:
        """``α_k / α_k^uniform`` (NaN where the key is unseen)."""
        return self.alpha / self.baseline

    @property
    def threshold(self) -> Float[Tensor, " key"]:
        """The score a sink needs at each key: ``max(floor, min_ratio · α_k^uniform)``."""
        return torch.clamp(self.min_ratio * self.baseline, min=self.floor)

    @property
    def tested(self) -> Bool[Tensor, " key"]:
        """Keys seen by at least ``min_queries`` queries (the others are never sinks)."""
        return (self.support >= self.min_queries) & torch.isfinite(self.baseline)

    @property
    def sinks(self) -> Bool[Tensor, "layer head key"]:
        """The decision per ``[layer, head, key]``."""
        above = (self.alpha > self.floor) & (self.alpha >= self.min_ratio * self.baseline)
        return above & self.tested

    def heads(self, key: int = 0) -> list[tuple[int, int]]:
        """``(layer, head)`` positions on the score axes that are sinks for ``key``."""
        n = self.alpha.shape[-1]
        if isinstance(key, bool) or not isinstance(key, int) or not -n <= key < n:
            raise InputError(f"key {key!r} out of range for {n} tokens")
        hits = torch.nonzero(self.sinks[..., key]).tolist()
        return [(int(layer), int(head)) for layer, head in hits]

    def pairs(self) -> list[tuple[int, int, int]]:
        """Every sink as ``(layer, head, key)``."""
        return [(int(a), int(b), int(c)) for a, b, c in torch.nonzero(self.sinks).tolist()]

    def rule(self) -> str:
        """The decision rule in words, e.g. for a figure or a page."""
        mask = {True: "causal", False: "bidirectional", None: "given"}[self.causal]
        return (
            f"α_k > {self.floor:g} and ≥ {self.min_ratio:g}× uniform attention's α_k "
            f"({mask} mask), seen by ≥ {self.min_queries} queries"
        )


def sink_decision(
    pattern: _Pattern | RecordLike,
    *,
    causal: bool | None = None,
    mask: _Mask | None = None,
    lengths: _Lengths | None = None,
    ratio: float = SINK_RATIO,
    floor: float = SINK_FLOOR,
    min_queries: int = SINK_MIN_QUERIES,
) -> SinkDecision:
    """Sink scores read against the content-free baseline, as a :class:`SinkDecision`.

    Same input as :func:`sink_scores` (a record, or a tensor with ``causal=`` or
    ``mask=``). A batch is pooled over every (prompt, query) pair that sees key ``k``:
    ``α_k`` and ``α_k^uniform`` are means over those pairs and the support is their number,
    so a key near the end of a short prompt weighs by its few queries. Defaults:
    ``ratio`` 4, ``floor`` 0.3, ``min_queries`` 4 (calibrated on the built-in models,
    docs/methods.md §3.2). Memory O(B·L·H·N).
    """
    tensor, causal, lengths = _pattern_and_mask(pattern, causal, mask, lengths, "sink_decision")
    p64, _ = _as_batch(tensor, lengths)
    n_batch, n = p64.shape[0], p64.shape[-1]
    visible = _visible(n_batch, n, causal=causal, mask=mask, lengths=lengths, device=p64.device)
    # Pooled over (prompt, query) pairs: a key near the end of a short prompt adds its one
    # or two queries, not a whole prompt's weight.
    weights = visible.to(torch.float64)
    support = weights.sum(dim=(0, 1))  # [key]
    received = torch.einsum("blhqk,bqk->lhk", p64, weights)
    uniform = (weights / weights.sum(-1, keepdim=True).clamp_min(1)).sum(dim=(0, 1))
    unseen = support == 0
    return SinkDecision(
        alpha=(received / support.clamp_min(1)).masked_fill(unseen, torch.nan),
        baseline=(uniform / support.clamp_min(1)).masked_fill(unseen, torch.nan),
        support=support.round().to(torch.int64),
        min_ratio=float(ratio),
        floor=float(floor),
        min_queries=min_queries,
        causal=None if mask is not None else causal,
        n_prompts=n_batch,
    )


def sink_heads(
    pattern: _Pattern | RecordLike,
    *,
    key: int = 0,
    causal: bool | None = None,
    mask: _Mask | None = None,
    lengths: _Lengths | None = None,
    ratio: float = SINK_RATIO,
    floor: float = SINK_FLOOR,
    min_queries: int = SINK_MIN_QUERIES,
) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs that are sinks for ``key``: :func:`sink_decision` (``α_key >
    0.3``, at least 4× uniform attention's ``α_key``, and at least 4 queries that see the
    key). Same input as :func:`sink_scores`; a batch is pooled over its prompts.
    """
    return sink_decision(
        pattern,
        causal=causal,
        mask=mask,
        lengths=lengths,
        ratio=ratio,
        floor=floor,
        min_queries=min_queries,
    ).heads(key)


__getattr__ = moved(__name__, {"position_curve": "headscope.experiments.position:position_curve"})
