"""Retrieval, streaming and echo scores of heads from captured attention
(docs/methods.md §2.15). Pure: patterns and token ids in, scores out.

- `retrieval_score`: Wu et al. 2024, "Retrieval Head Mechanistically Explains
  Long-Context Factuality". At a greedy generation step that emits token w, a
  head scores a hit when its argmax key (the query being the position that
  predicted w) lies in the source span being copied and holds w; copy steps
  are the steps whose w occurs in the source span. Score = hits / copy steps.
- `echo_score`: RazorAttention (Tang et al. 2024) "echo" heads: attention mass
  on earlier positions holding the query's own token.
- `long_range_mass`, `long_range_peak`: data-free streaming/retrieval scores
  (DuoAttention, Xiao et al. 2024, splits heads into streaming heads, which need
  only the attention sink and a recent window, and retrieval heads, which need
  the rest): the attention mass a head puts outside sink ∪ recent window, and
  the largest weight on one key there (the mass of a diffuse head is high but
  spread thin; a retrieval head puts its weight on one far key).

Every score comes as a `HeadScore`: the value, the value uniform attention over
the visible keys would get (the chance baseline), the number of steps or
queries behind it (support) and a 95% interval (Wilson for the retrieval
score, a proportion of steps; percentile bootstrap over prompts for the mass
scores, NaN with one prompt).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from scipy import stats
from torch import Tensor

from headscope.analyses.uncertainty import bootstrap_interval
from headscope.errors import InputError

#: Argmax keys within this of the row's maximum count as tied; a tied step's hit is
#: the share of tied keys that are hits (so uniform attention scores its baseline).
TIE = 1e-6


@dataclass(frozen=True)
class HeadScore:
    """One score per head with its evidence.

    `measure`: what the score is, in words. `score`: `[layer, head]` (NaN where no
    step or query defines it). `baseline`: what uniform attention over the visible
    keys scores on the same steps. `support`: the steps (retrieval) or queries
    (mass scores) behind each score. `low`, `high`: the 95% interval (NaN where it
    cannot be computed). `unit`: what one unit of support is."""

    measure: str
    score: Float[Tensor, "layer head"]
    baseline: Float[Tensor, "layer head"]
    support: Int[Tensor, "layer head"]
    low: Float[Tensor, "layer head"]
    high: Float[Tensor, "layer head"]
    unit: str


def wilson_interval(
    successes: Float[Tensor, "*cell"], trials: Int[Tensor, "*cell"], level: float = 0.95
) -> tuple[Float[Tensor, "*cell"], Float[Tensor, "*cell"]]:
    """The Wilson score interval of a binomial proportion (Wilson 1927), NaN for
    0 trials. `successes` may be fractional (tied argmax keys share a hit)."""
    if not 0 < level < 1:
        raise InputError(f"level must lie in (0, 1), got {level}")
    z = float(stats.norm.ppf(0.5 + level / 2))
    n = trials.double()
    p = successes.double() / n.clamp_min(1)
    denominator = 1 + z * z / n.clamp_min(1)
    centre = (p + z * z / (2 * n.clamp_min(1))) / denominator
    half = z * torch.sqrt(p * (1 - p) / n.clamp_min(1) + z * z / (4 * n.clamp_min(1) ** 2))
    half = half / denominator
    empty = trials <= 0
    low = (centre - half).clamp(0, 1).masked_fill(empty, math.nan)
    high = (centre + half).clamp(0, 1).masked_fill(empty, math.nan)
    return low, high


def _batched(
    pattern: Tensor, token_ids: Tensor, lengths: Sequence[int] | Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    if pattern.dim() == 4:
        pattern, token_ids = pattern[None], token_ids[None]
    if pattern.dim() != 5 or pattern.shape[-1] != pattern.shape[-2]:
        raise InputError(
            "pattern must be [layer, head, query, key] or [batch, layer, head, query, key], "
            f"got {tuple(pattern.shape)}"
        )
    n_batch, n = pattern.shape[0], pattern.shape[-1]
    if tuple(token_ids.shape) != (n_batch, n):
        raise InputError(
            f"token_ids {tuple(token_ids.shape)} do not match the pattern's (batch, position) "
            f"{(n_batch, n)}"
        )
    if lengths is None:
        lengths_t = torch.full((n_batch,), n, dtype=torch.long)
    else:
        lengths_t = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
        if lengths_t.shape[0] != n_batch or bool(((lengths_t < 1) | (lengths_t > n)).any()):
            raise InputError(f"lengths must be {n_batch} values in [1, {n}]")
    return pattern, token_ids.to(pattern.device), lengths_t.to(pattern.device)


def retrieval_score(
    pattern: Float[Tensor, "batch layer head query key"],
    token_ids: Int[Tensor, "batch position"],
    source: Bool[Tensor, "batch position"],
    generated: Bool[Tensor, "batch position"],
    *,
    lengths: Sequence[int] | Int[Tensor, " batch"] | None = None,
    level: float = 0.95,
) -> HeadScore:
    """Retrieval score of every head (Wu et al. 2024), from the causal maps of the
    final sequences (prompt + greedy continuation).

    A step is a generated position p (`generated[b, p]`, p ≥ 1) whose token w =
    token_ids[b, p] occurs in the source span (`source[b]`): a copy step. The query is
    p − 1, the position whose prediction was w; a causal model's map row p − 1 of the
    final sequence is exactly the row it had when w was generated. Hit set H = {k ∈
    source, k ≤ p − 1, token_ids[b, k] = w}; the step's credit is the share of the
    row's argmax keys (ties within TIE) that lie in H (1 or 0 without ties). Score =
    Σ credit / copy steps ∈ [0, 1]; baseline = mean over copy steps of |H| / (p)
    (uniform attention over the p visible keys, whose tied argmax is every key);
    support = copy steps; interval: Wilson. Memory: one layer of the maps at the
    copy-step rows.
    """
    pattern, token_ids, lengths_t = _batched(pattern, token_ids, lengths)
    n_batch, n_layers, n_heads, n, _ = pattern.shape
    if tuple(source.shape) != (n_batch, n) or tuple(generated.shape) != (n_batch, n):
        raise InputError("source and generated must be [batch, position] masks like token_ids")
    position = torch.arange(n, device=pattern.device)
    source = source.to(pattern.device) & (position[None] < lengths_t[:, None])
    same = token_ids[:, :, None] == token_ids[:, None, :]  # [batch, p, k]: t_k = t_p
    hits = same & source[:, None, :] & (position[None, None, :] < position[None, :, None])
    steps = generated.to(pattern.device) & (position[None] >= 1) & hits.any(-1)
    steps &= position[None] < lengths_t[:, None]
    rows, cols = steps.nonzero(as_tuple=True)  # (prompt, generated position p)
    count = int(rows.numel())
    credit = torch.zeros(n_layers, n_heads, dtype=torch.float64, device=pattern.device)
    if count:
        hit = hits[rows, cols].double()  # [step, key]
        for layer in range(n_layers):
            row = pattern[rows, layer, :, cols - 1].double()  # [step, head, key]
            top = row.amax(-1, keepdim=True)
            tied = (row >= top - TIE).double()
            share = (tied * hit[:, None]).sum(-1) / tied.sum(-1)
            credit[layer] = share.sum(0)
        chance = (hit.sum(-1) / cols.double()).mean()  # the p keys 0..p−1 visible
    else:
        chance = torch.tensor(math.nan, dtype=torch.float64)
    support = torch.full((n_layers, n_heads), count, dtype=torch.long)
    score = credit.cpu() / count if count else torch.full((n_layers, n_heads), math.nan)
    low, high = wilson_interval(credit.cpu(), support, level)
    return HeadScore(
        measure="retrieval score: share of copy steps whose argmax key holds the copied token",
        score=score.double(),
        baseline=torch.full((n_layers, n_heads), float(chance), dtype=torch.float64),
        support=support,
        low=low,
        high=high,
        unit="copy steps",
    )


def _mass_score(
    per_query: Tensor, uniform: Tensor, valid: Tensor, measure: str, unit: str
) -> HeadScore:
    """Mean over valid queries per prompt, then over prompts; bootstrap over prompts."""
    weight = valid.double()  # [batch, query]
    count = weight.sum(-1)  # [batch]
    defined = count > 0
    n_layers, n_heads = per_query.shape[1:3]
    nan = torch.full((n_layers, n_heads), math.nan, dtype=torch.float64)
    support = torch.full((n_layers, n_heads), int(weight.sum()), dtype=torch.long)
    if not bool(defined.any()):
        return HeadScore(measure, nan, nan.clone(), support, nan.clone(), nan.clone(), unit)
    per_prompt = torch.einsum("blhq,bq->blh", per_query, weight) / count.clamp_min(1)[:, None, None]
    per_prompt = per_prompt[defined].cpu()
    chance = ((uniform * weight).sum(-1) / count.clamp_min(1))[defined].mean()
    low, high = nan.clone(), nan.clone()
    if per_prompt.shape[0] >= 2:
        interval = bootstrap_interval(per_prompt)
        low, high = interval.low.double(), interval.high.double()
    return HeadScore(
        measure=measure,
        score=per_prompt.mean(0).clamp(0, 1),
        baseline=torch.full((n_layers, n_heads), float(chance), dtype=torch.float64),
        support=support,
        low=low,
        high=high,
        unit=unit,
    )


def echo_score(
    pattern: Float[Tensor, "batch layer head query key"],
    token_ids: Int[Tensor, "batch position"],
    *,
    lengths: Sequence[int] | Int[Tensor, " batch"] | None = None,
    bos: bool = True,
) -> HeadScore:
    """Echo score (RazorAttention, Tang et al. 2024): the attention mass a causal
    query puts on earlier positions holding its own token, E(q) = {k < q : t_k = t_q}
    (key 0 excluded with `bos`), averaged over the queries with E(q) ≠ ∅ per prompt,
    then over prompts. The same key set as the taxonomy's duplicate-token score.
    Baseline: uniform attention over the q + 1 visible keys, |E(q)| / (q + 1).
    Memory: one layer of the maps in float64 at a time."""
    pattern, token_ids, lengths_t = _batched(pattern, token_ids, lengths)
    n = pattern.shape[-1]
    position = torch.arange(n, device=pattern.device)
    real = position[None] < lengths_t[:, None]
    earlier = (position[None, :] < position[:, None])[None] & real[:, None, :] & real[:, :, None]
    if bos:
        earlier &= (position >= 1)[None, None, :]
    copies = earlier & (token_ids[:, :, None] == token_ids[:, None, :])  # [batch, q, k]
    valid = copies.any(-1)
    per_query = torch.stack(
        [
            torch.einsum("bhqk,bqk->bhq", pattern[:, layer].double(), copies.double())
            for layer in range(pattern.shape[1])
        ],
        1,
    )
    uniform = copies.sum(-1).double() / (position[None] + 1).double()
    return _mass_score(
        per_query,
        uniform,
        valid,
        "echo score: attention mass on earlier copies of the query's token",
        "queries",
    )


def long_range_mass(
    pattern: Float[Tensor, "batch layer head query key"],
    *,
    lengths: Sequence[int] | Int[Tensor, " batch"] | None = None,
    sink: int = 1,
    window: int = 8,
) -> HeadScore:
    """Attention mass outside the streaming keys: the first `sink` keys (attention
    sinks, Xiao et al. 2023) and the `window` most recent keys q − window + 1..q
    (DuoAttention's streaming heads see only these). Outside set O(q) = {k : sink ≤
    k ≤ q − window}; queries with O(q) ≠ ∅ count. A streaming head scores ≈ 0, a
    head that reads far context scores high. Baseline: uniform attention over the
    q + 1 visible keys, |O(q)| / (q + 1). Causal maps. Memory: one layer of the maps
    in float64 at a time."""
    if sink < 0 or window < 1:
        raise InputError(f"need sink >= 0 and window >= 1, got sink={sink}, window={window}")
    ids = torch.zeros(pattern.shape[0], pattern.shape[-1], dtype=torch.long)
    pattern, _, lengths_t = _batched(pattern, ids, lengths)
    n = pattern.shape[-1]
    position = torch.arange(n, device=pattern.device)
    q, k = position[:, None], position[None, :]
    real = position[None] < lengths_t[:, None]
    outside = ((k >= sink) & (k <= q - window))[None] & real[:, None, :] & real[:, :, None]
    valid = outside.any(-1)
    per_query = torch.stack(
        [
            torch.einsum("bhqk,bqk->bhq", pattern[:, layer].double(), outside.double())
            for layer in range(pattern.shape[1])
        ],
        1,
    )
    uniform = outside.sum(-1).double() / (position[None] + 1).double()
    return _mass_score(
        per_query,
        uniform,
        valid,
        f"long-range mass: attention outside the first {sink} key(s) and the last {window}",
        "queries",
    )


def long_range_peak(
    pattern: Float[Tensor, "batch layer head query key"],
    *,
    lengths: Sequence[int] | Int[Tensor, " batch"] | None = None,
    sink: int = 1,
    window: int = 8,
) -> HeadScore:
    """The largest weight a query puts on one key outside sink ∪ recent window
    (O(q) as in `long_range_mass`), averaged over queries with O(q) ≠ ∅: high for a
    head that retrieves one far token (induction, copying), low for a streaming head
    and for a diffuse head, whose long-range mass is high but spread thin. Baseline:
    uniform attention, 1 / (q + 1). Memory: one layer of the maps in float64."""
    if sink < 0 or window < 1:
        raise InputError(f"need sink >= 0 and window >= 1, got sink={sink}, window={window}")
    ids = torch.zeros(pattern.shape[0], pattern.shape[-1], dtype=torch.long)
    pattern, _, lengths_t = _batched(pattern, ids, lengths)
    n = pattern.shape[-1]
    position = torch.arange(n, device=pattern.device)
    q, k = position[:, None], position[None, :]
    real = position[None] < lengths_t[:, None]
    outside = ((k >= sink) & (k <= q - window))[None] & real[:, None, :] & real[:, :, None]
    valid = outside.any(-1)
    per_query = torch.stack(
        [
            (pattern[:, layer].double() * outside[:, None].double()).amax(-1)
            for layer in range(pattern.shape[1])
        ],
        1,
    )
    uniform = valid.double() / (position[None] + 1).double()
    return _mass_score(
        per_query,
        uniform,
        valid,
        f"long-range peak: largest weight on one key outside the first {sink} key(s) "
        f"and the last {window}",
        "queries",
    )


def sink_baseline(lengths: Sequence[int] | Int[Tensor, " batch"]) -> float:
    """The first-token (sink) mass of uniform causal attention: the mean over
    queries q ≥ 1 of 1 / (q + 1), per prompt, averaged over prompts."""
    values = [
        sum(1.0 / (q + 1) for q in range(1, int(length))) / (int(length) - 1)
        for length in torch.as_tensor(lengths).reshape(-1).tolist()
        if int(length) >= 2
    ]
    if not values:
        raise InputError("the sink baseline needs a prompt of at least 2 tokens")
    return float(sum(values) / len(values))


def rank_by(score: Float[Tensor, "layer head"], count: int, *, top: bool = True) -> list:
    """The `count` heads with the highest (`top`) or lowest score, as (layer, head)
    pairs; NaN scores never selected; ties broken by (layer, head) order."""
    flat = score.reshape(-1).double()
    order = sorted(
        (i for i in range(flat.numel()) if not math.isnan(float(flat[i]))),
        key=lambda i: (-float(flat[i]) if top else float(flat[i]), i),
    )
    n_heads = score.shape[1]
    return [(i // n_heads, i % n_heads) for i in order[:count]]
