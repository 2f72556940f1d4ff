"""Head taxonomy: how much attention each head puts on the pattern of a known head type.

In the style of the transformer-lens head detector (Nanda et al.; the categories of
Olsson et al. 2022, "In-context Learning and Induction Heads", and Xiao et al. 2023,
"Efficient Streaming Language Models with Attention Sinks"): for each category a
query q has an *ideal key set* K(q); a head's score is the attention mass it puts on
K(q), averaged over the queries where K(q) is defined (docs/methods.md §2.7). Every score
lies in [0, 1]; 1 means the head attends only to its ideal keys.

Categories (0-indexed positions; `bos=True` means position 0 is a BOS/[CLS] token):

- `previous_token`: K(q) = {q − 1}, queries q ≥ 1.
- `duplicate_token`: K(q) = {k < q : t_k = t_q} (earlier copies of the query's token),
  queries with at least one earlier copy. With `bos`, key 0 is never a copy.
- `induction`: K(q) = {j + 1 : j < q, t_j = t_q} (the token after each earlier copy),
  queries with at least one earlier copy. On [BOS, r_1..r_T, r_1..r_T] the query at
  r_i of the second copy has K(q) = {position of r_{i+1} in the first copy}.
- `next_token`: K(q) = {q + 1}, queries with a real key q + 1 that they may see; only
  bidirectional models have them (undefined, NaN, in a causal model).
- `first_token_sink`: K(q) = {0}, queries q ≥ 1 (a causal query 0 can only see key 0).
- `local`: K(q) = {k : |q − k| ≤ window} (default window 2), excluding key 0 with
  `bos` so that a BOS sink is not mistaken for locality; queries q ≥ 1 with `bos`
  (query 0 would have no key), every query otherwise. A previous-token head scores
  at least as high here, so `head_labels` prefers the specific categories to it.
- `uniform`: not a mass but the overlap Σ_k min(A[q,k], 1/n_q) with the uniform
  distribution over the n_q visible keys (k ≤ q when causal, else every real key),
  i.e. 1 − total-variation distance to uniform; queries with n_q ≥ 2. Uniform
  attention scores 1; attention on a single key scores 1/n_q.

Batches: a `[batch, layer, head, query, key]` pattern with right-padding (`lengths`)
is scored per prompt over its real queries and keys only, and the per-prompt scores
are averaged over the prompts where the category is defined (NaN where it is defined
for none). Heads whose map is all NaN (not captured) score NaN.

Evidence: every score comes with its support, the number of defining queries (summed
over prompts; `head_taxonomy`). A label needs at least MIN_SUPPORT of them, else the
head is INSUFFICIENT ("insufficient evidence"); `induction` needs a previous-token head
in an earlier layer, so it never labels a layer-0 head (docs/methods.md §2.7).

Long-context labels (`long_context_labels`, docs/methods.md §2.15): echo, retrieval,
streaming and dormant, each from its own evidence (echo and retrieval scores, gates or
a long-range score, ablation intervals) with its baseline and support; they sit beside
the primary label and never change it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.analyses.checks import check_pattern
from headscope.analyses.retrieval import HeadScore
from headscope.analyses.uncertainty import Interval
from headscope.errors import InputError

Category = Literal[
    "previous_token",
    "duplicate_token",
    "induction",
    "next_token",
    "first_token_sink",
    "local",
    "uniform",
]

#: Every category, specific ones first. The order breaks ties between labels.
CATEGORIES: tuple[Category, ...] = (
    "induction",
    "duplicate_token",
    "previous_token",
    "next_token",
    "first_token_sink",
    "local",
    "uniform",
)
#: Catch-all categories: `local` contains the previous-token key, and `uniform` is the
#: absence of a preference, so they label a head only when no specific category does.
GENERIC: frozenset[str] = frozenset({"local", "uniform"})

#: A head gets a label when its score is strictly above the category's threshold.
#: Mass categories need a majority of the attention (0.5). `local` needs more (0.7)
#: because a window of 2·window + 1 keys is easy to hit by chance on short prompts,
#: and `uniform` (overlap with uniform, 1 − TV) needs 0.9 to mean "spread evenly".
DEFAULT_THRESHOLDS: dict[str, float] = {
    "previous_token": 0.5,
    "duplicate_token": 0.5,
    "induction": 0.5,
    "next_token": 0.5,
    "first_token_sink": 0.5,
    "local": 0.7,
    "uniform": 0.9,
}

NO_LABEL = "none"
#: The label of a head whose best category rests on fewer than `min_support` queries.
INSUFFICIENT = "insufficient"
#: A label needs at least this many defining queries (summed over prompts).
MIN_SUPPORT = 4
#: Categories whose mechanism reads what an earlier layer wrote (an induction head
#: needs a previous-token head before it): never the label of a layer-0 head.
NEEDS_EARLIER_LAYER: frozenset[str] = frozenset({"induction"})
_TIE = 1e-6  # scores this close count as tied; the more specific category wins


# -- single scores used directly by the toy model and tests -----------------------------------


def previous_token_score(pattern: Float[Tensor, "*head query key"]) -> Float[Tensor, "*head"]:
    """Mean attention from each query q ≥ 1 to key q − 1 (previous-token score).

    Any leading dims (`[layer, head]`, `[batch, layer, head]`) are kept. Rows of all
    zeros are padding (real rows sum to 1) and are not counted, so a right-padded
    batch gives each prompt the score of its unpadded map (NaN for a map with no real
    query q ≥ 1). A uniform causal head scores mean_{q≥1} 1/(q+1). Memory: one
    `[*head, query]` row-sum temporary.
    """
    check_pattern(pattern, min_dims=2, allow_zero_rows=True)
    n = pattern.shape[-1]
    if n < 2:
        raise InputError("the previous-token score needs at least 2 positions")
    diagonal = pattern.diagonal(offset=-1, dim1=-2, dim2=-1).double()  # queries 1..n-1
    real = pattern[..., 1:, :].sum(-1, dtype=torch.float64) > 0.5
    count = real.sum(-1)
    total = torch.where(real, diagonal, 0.0).sum(-1)
    score = torch.where(count > 0, total / count.clamp_min(1), torch.nan)
    return score.to(pattern.dtype)


def induction_score(
    pattern: Float[Tensor, "*head query key"], repeat_length: int, offset: int
) -> Float[Tensor, "*head"]:
    """Induction score on a repeated sequence [prefix (offset tokens, BOS included),
    r_1..r_T, r_1..r_T] with T = `repeat_length` and r_1 at position `offset`.

    The query at offset + T + i (i = 0..T−1, token r_{i+1} of the second copy) should
    attend to offset + i + 1, the token after r_{i+1}'s first occurrence (for i = T−1
    that is r_1 of the second copy). Returns the mean attention on those keys over the
    T queries, keeping any leading dims. Memory: no copy of the pattern.
    """
    check_pattern(pattern, min_dims=2, allow_zero_rows=True)
    n = pattern.shape[-1]
    if repeat_length < 1 or offset < 0:
        raise InputError("induction_score needs repeat_length >= 1 and offset >= 0")
    if offset + 2 * repeat_length > n:
        raise InputError(
            f"a repeated sequence with offset {offset} and repeat_length {repeat_length} needs "
            f"{offset + 2 * repeat_length} positions; the pattern has {n}"
        )
    i = torch.arange(repeat_length, device=pattern.device)
    queries = offset + repeat_length + i
    keys = offset + i + 1
    return pattern[..., queries, keys].double().mean(-1).to(pattern.dtype)


# -- the full taxonomy ------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadTaxonomy:
    """Taxonomy scores with their evidence (docs/methods.md §2.7).

    - `scores`: category → `[layer, head]` float32 score in [0, 1] (NaN where undefined);
    - `support`: category → `[layer, head]` int64, the number of defining queries behind
      the score (summed over prompts; the same for every captured head, 0 for heads
      that were not captured);
    - `layer_index`: the model layer of each row (layer 0 gets no `induction` label).
    """

    scores: dict[str, Float[Tensor, "layer head"]]
    support: dict[str, Int[Tensor, "layer head"]]
    layer_index: tuple[int, ...]


def head_scores_from_pattern(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "batch layer head query key"],
    token_ids: Int[Tensor, " query"]
    | Int[Tensor, "batch query"]
    | Sequence[int]
    | Sequence[Sequence[int]],
    *,
    lengths: Sequence[int] | Int[Tensor, " batch"] | None = None,
    bos: bool = True,
    causal: bool | None = None,
    window: int = 2,
) -> dict[str, Float[Tensor, "layer head"]]:
    """Taxonomy scores of every head: `head_taxonomy_from_pattern(...).scores`."""
    return head_taxonomy_from_pattern(
        pattern, token_ids, lengths=lengths, bos=bos, causal=causal, window=window
    ).scores


def head_taxonomy_from_pattern(
    pattern: Float[Tensor, "layer head query key"] | Float[Tensor, "batch layer head query key"],
    token_ids: Int[Tensor, " query"]
    | Int[Tensor, "batch query"]
    | Sequence[int]
    | Sequence[Sequence[int]],
    *,
    lengths: Sequence[int] | Int[Tensor, " batch"] | None = None,
    bos: bool = True,
    causal: bool | None = None,
    window: int = 2,
    layer_index: Sequence[int] | None = None,
) -> HeadTaxonomy:
    """Taxonomy scores of every head, with their support (module docstring for the
    definitions).

    `pattern` is one prompt `[layer, head, query, key]` with `token_ids` `[query]`, or
    a right-padded batch `[batch, layer, head, query, key]` with `token_ids`
    `[batch, query]` and `lengths` (real tokens per prompt; None: all full length);
    padded queries and keys never count. `causal=None` infers causality from the pattern
    (no mass above the diagonal). `layer_index`: the model layer of each row (default
    0, 1, ...). Scores: the seven categories, each `[layer, head]`, float32, in [0, 1]
    (NaN where undefined); support: their defining queries. Rows of real queries must
    sum to 1.

    Memory: one layer of the pattern in float64 at a time plus a few `[batch, query,
    key]` masks; the pattern itself is not copied (unless it holds NaN heads).
    """
    pattern, token_ids, lengths_t, missing = _prepare(pattern, token_ids, lengths)
    n_batch, n_layers, n_heads, n, _ = pattern.shape
    device = pattern.device
    if window < 0:
        raise InputError(f"window must be >= 0, got {window}")
    rows = tuple(range(n_layers)) if layer_index is None else tuple(int(i) for i in layer_index)
    if len(rows) != n_layers:
        raise InputError(f"layer_index has {len(rows)} entries for {n_layers} layers")
    if causal is None:  # one layer at a time: no pattern-sized temporary
        causal = all(
            bool((torch.triu(pattern[:, layer], diagonal=1).abs() <= 1e-6).all())
            for layer in range(n_layers)
        )

    position = torch.arange(n, device=device)
    real = position[None, :] < lengths_t[:, None]  # [batch, position]
    pair = real[:, :, None] & real[:, None, :]  # [batch, query, key]
    q_index, k_index = position[:, None], position[None, :]
    earlier = (k_index < q_index)[None]
    key_ok = (k_index >= 1)[None] if bos else torch.ones_like(earlier)

    same = token_ids[:, :, None] == token_ids[:, None, :]
    duplicate = same & earlier & pair & key_ok
    induction = torch.zeros_like(duplicate)
    induction[..., 1:] = duplicate[..., :-1]  # key j + 1 for every earlier copy j
    visible = pair & (k_index <= q_index)[None] if causal else pair
    n_visible = visible.sum(-1)  # [batch, query]
    next_key = (k_index == q_index + 1)[None] & visible  # empty when causal

    masks = {
        "previous_token": (k_index == q_index - 1)[None] & pair,
        "duplicate_token": duplicate,
        "induction": induction,
        "next_token": next_key,
        "first_token_sink": (k_index == 0)[None] & pair,
        "local": ((q_index - k_index).abs() <= window)[None] & pair & key_ok,
    }
    first = 1 if bos else 0
    valid = {
        "previous_token": real & (position >= 1),
        "duplicate_token": duplicate.any(-1),
        "induction": induction.any(-1),
        "next_token": next_key.any(-1),
        "first_token_sink": real & (position >= 1),
        "local": real & (position >= first),
        "uniform": real & (n_visible >= 2),
    }
    uniform_target = visible.double() / n_visible.clamp_min(1)[..., None]  # [batch, q, k]

    per_query = {
        name: pattern.new_zeros(n_batch, n_layers, n_heads, n, dtype=torch.float64)
        for name in (*masks, "uniform")
    }
    for layer in range(n_layers):
        attention = pattern[:, layer].double()  # [batch, head, query, key]
        for name, mask in masks.items():
            per_query[name][:, layer] = torch.einsum("bhqk,bqk->bhq", attention, mask.double())
        overlap = torch.minimum(attention, uniform_target[:, None])
        per_query["uniform"][:, layer] = overlap.sum(-1)

    scores: dict[str, Tensor] = {}
    support: dict[str, Tensor] = {}
    for name in (
        "previous_token",
        "duplicate_token",
        "induction",
        "next_token",
        "first_token_sink",
        "local",
        "uniform",
    ):
        weight = valid[name].double()  # [batch, query]
        count = weight.sum(-1)  # [batch]
        per_prompt = torch.einsum("blhq,bq->blh", per_query[name], weight)
        per_prompt = per_prompt / count.clamp_min(1)[:, None, None]
        defined = count > 0
        if defined.any():
            score = per_prompt[defined].mean(0)
        else:
            score = torch.full(
                (n_layers, n_heads), float("nan"), dtype=torch.float64, device=device
            )
        score = score.clamp(0.0, 1.0)  # float error only; masses of rows summing to 1
        scores[name] = score.masked_fill(missing, float("nan")).float()
        total = torch.full((n_layers, n_heads), int(valid[name].sum()), device=device)
        support[name] = total.masked_fill(missing, 0).to(torch.int64)
    return HeadTaxonomy(scores=scores, support=support, layer_index=rows)


def _prepare(
    pattern: Tensor,
    token_ids: Tensor | Sequence[int] | Sequence[Sequence[int]],
    lengths: Sequence[int] | Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate; return (pattern [batch, layer, head, q, k], ids [batch, q], lengths
    [batch], heads that are all NaN [layer, head])."""
    if not isinstance(pattern, Tensor) or pattern.dim() not in (4, 5):
        shape = tuple(pattern.shape) if isinstance(pattern, Tensor) else type(pattern).__name__
        raise InputError(
            "pattern must be [layer, head, query, key] or [batch, layer, head, query, key], "
            f"got {shape}"
        )
    batched = pattern.dim() == 5
    if not isinstance(token_ids, Tensor):
        token_ids = torch.as_tensor(token_ids)
    if token_ids.dim() != (2 if batched else 1):
        raise InputError(
            f"token_ids must be {'[batch, query]' if batched else '[query]'} for a "
            f"{pattern.dim()}-dim pattern, got shape {tuple(token_ids.shape)}"
        )
    if torch.is_floating_point(token_ids) or token_ids.is_complex():
        raise InputError(f"token_ids must be integers, got {token_ids.dtype}")
    if not batched:
        if lengths is not None:
            raise InputError("lengths are only meaningful for a batched pattern")
        pattern, token_ids = pattern[None], token_ids[None]
    n_batch, _, _, n_q, n_k = pattern.shape
    if n_q != n_k:
        raise InputError(f"pattern must be square in (query, key), got {tuple(pattern.shape)}")
    if token_ids.shape != (n_batch, n_q):
        raise InputError(
            f"token_ids shape {tuple(token_ids.shape)} does not match the pattern's "
            f"(batch, query) = {(n_batch, n_q)}"
        )
    if n_q < 1:
        raise InputError("the pattern has no positions")
    if lengths is None:
        lengths_t = torch.full((n_batch,), n_q, dtype=torch.long)
    else:
        lengths_t = torch.as_tensor(list(lengths) if not isinstance(lengths, Tensor) else lengths)
        lengths_t = lengths_t.to(torch.long).reshape(-1)
        if lengths_t.shape[0] != n_batch:
            raise InputError(f"lengths has {lengths_t.shape[0]} entries for {n_batch} prompts")
        if ((lengths_t < 1) | (lengths_t > n_q)).any():
            raise InputError(f"lengths must lie in [1, {n_q}], got {lengths_t.tolist()}")
    lengths_t = lengths_t.to(pattern.device)
    token_ids = token_ids.to(pattern.device)

    # Heads left out of a limited capture are all-NaN maps: score them NaN, check the rest.
    missing = torch.zeros(pattern.shape[1:3], dtype=torch.bool, device=pattern.device)
    if torch.is_floating_point(pattern) and torch.isnan(pattern).any():
        missing = torch.isnan(pattern).flatten(-2).all(-1).all(0)  # [layer, head]
        pattern = pattern.masked_fill(missing[None, :, :, None, None], 0.0)
    check_pattern(pattern, min_dims=2, allow_zero_rows=True)
    # Real query rows must be distributions even though padded (and skipped) rows are 0.
    real = torch.arange(n_q, device=pattern.device)[None, :] < lengths_t[:, None]
    sums = pattern.sum(-1, dtype=torch.float64)  # [batch, layer, head, query]
    wrong = (sums - 1).abs() > 1e-4
    wrong &= real[:, None, None, :] & ~missing[None, :, :, None]
    if wrong.any():
        raise InputError("pattern rows of real queries must sum to 1")
    return pattern, token_ids, lengths_t, missing


def head_scores(record: Any, *, window: int = 2) -> dict[str, Float[Tensor, "layer head"]]:
    """`head_scores_from_pattern` on an attention record: `head_taxonomy(record).scores`."""
    return head_taxonomy(record, window=window).scores


def head_taxonomy(record: Any, *, window: int = 2) -> HeadTaxonomy:
    """`head_taxonomy_from_pattern` on an attention record (duck-typed: `.pattern`,
    `.token_ids`, `.lengths`, and optionally `.spec` with `causal` and `bos_token_id`,
    and `.layer_index`).

    The score tensors' axes are the record's pattern axes, i.e. model layers
    `record.layer_index` and heads `record.head_index`. BOS handling: `bos` is True
    when every prompt starts with `spec.bos_token_id` (False without a spec);
    causality comes from `spec.causal` (inferred from the pattern without a spec);
    padding from `record.lengths`.
    """
    spec = getattr(record, "spec", None)
    token_ids = torch.as_tensor(record.token_ids)
    bos_id = getattr(spec, "bos_token_id", None)
    bos = bool(bos_id is not None and token_ids.numel() and (token_ids[..., 0] == bos_id).all())
    causal = getattr(spec, "causal", None)
    return head_taxonomy_from_pattern(
        record.pattern,
        token_ids,
        lengths=getattr(record, "lengths", None),
        bos=bos,
        causal=None if causal is None else bool(causal),
        window=window,
        layer_index=getattr(record, "layer_index", None),
    )


@dataclass(frozen=True)
class HeadLabel:
    """One head's label with its evidence.

    `label`: a category, INSUFFICIENT or NO_LABEL. `category`: the category behind it:
    the label's own; for INSUFFICIENT the best category that lacked support; for
    NO_LABEL the best-scoring category (None when every score is NaN). `score` and
    `support` are that category's (`support` None when unknown)."""

    label: str
    category: str | None
    score: float
    support: int | None


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()


def head_label_details(
    record_or_scores: Any,
    thresholds: Mapping[str, float] | None = None,
    *,
    support: Mapping[str, Any] | _Required | None = _REQUIRED,
    layer_index: Sequence[int] | None = None,
    min_support: int = MIN_SUPPORT,
) -> list[list[HeadLabel]]:
    """The primary label of every head, with its score and support, as a `[layer][head]`
    grid of HeadLabel (see `head_labels` for the rules).

    Accepts an attention record (scored with `head_taxonomy`), a HeadTaxonomy, or a
    dict of `[layer, head]` scores; a dict needs `support=` (category → `[layer, head]`
    or a number of defining queries; `support=None` says it is unknown and skips the
    minimum) and may give `layer_index` (the model layer of each row, default 0, 1, ...).
    """
    scores, counts, layers = _evidence(record_or_scores, support, layer_index)
    limits = _limits(thresholds)
    if isinstance(min_support, bool) or not isinstance(min_support, int) or min_support < 0:
        raise InputError(f"min_support must be an int >= 0, got {min_support!r}")
    names = [name for name in CATEGORIES if name in scores]
    shape = scores[names[0]].shape
    grid: list[list[HeadLabel]] = []
    for row in range(shape[0]):
        cells = []
        for head in range(shape[1]):
            allowed = [
                name for name in names if not (layers[row] == 0 and name in NEEDS_EARLIER_LAYER)
            ]
            values = {name: float(scores[name][row, head]) for name in allowed}

            def count(name: str, row: int = row, head: int = head) -> int | None:
                return None if counts is None else int(counts[name][row, head])

            def enough(name: str) -> bool:
                found = count(name)
                return found is None or found >= min_support

            chosen: HeadLabel | None = None
            for tier in _tiers(values, limits, allowed):
                if not tier:
                    continue
                best = next((name for name in tier if enough(name)), None)
                name = best if best is not None else tier[0]
                label = name if best is not None else INSUFFICIENT
                chosen = HeadLabel(label, name, values[name], count(name))
                break
            if chosen is None:
                finite = [(v, -i, n) for i, (n, v) in enumerate(values.items()) if v == v]
                if finite:
                    _, _, name = max(finite)
                    chosen = HeadLabel(NO_LABEL, name, values[name], count(name))
                else:
                    chosen = HeadLabel(NO_LABEL, None, float("nan"), None)
            cells.append(chosen)
        grid.append(cells)
    return grid


def head_label_sets(
    record_or_scores: Any,
    thresholds: Mapping[str, float] | None = None,
    *,
    support: Mapping[str, Any] | _Required | None = _REQUIRED,
    layer_index: Sequence[int] | None = None,
    min_support: int = MIN_SUPPORT,
) -> dict[tuple[int, int], list[str]]:
    """Every label of every head: `{(layer, head): [category, ...]}` with the
    categories whose score is above its threshold and whose support reaches
    `min_support` (induction never at layer 0): the specific ones (induction,
    duplicate_token, previous_token, next_token, first_token_sink) by decreasing score,
    then the generic ones (local, uniform) by decreasing score; scores within 1e-6 count
    as tied and the earlier category in CATEGORIES goes first. Heads with no label map
    to []. Input as for `head_label_details`.

    `(layer, head)` are positions on the score tensors' axes (for a record: indices
    into `record.layer_index` / `record.head_index`, not model indices).
    """
    scores, counts, layers = _evidence(record_or_scores, support, layer_index)
    limits = _limits(thresholds)
    names = [name for name in CATEGORIES if name in scores]
    shape = scores[names[0]].shape
    labels: dict[tuple[int, int], list[str]] = {}
    for row in range(shape[0]):
        for head in range(shape[1]):
            allowed = [
                name for name in names if not (layers[row] == 0 and name in NEEDS_EARLIER_LAYER)
            ]
            values = {name: float(scores[name][row, head]) for name in allowed}
            labels[(row, head)] = [
                name
                for tier in _tiers(values, limits, allowed)
                for name in tier
                if counts is None or int(counts[name][row, head]) >= min_support
            ]
    return labels


def head_labels(
    record_or_scores: Any,
    thresholds: Mapping[str, float] | None = None,
    *,
    support: Mapping[str, Any] | _Required | None = _REQUIRED,
    layer_index: Sequence[int] | None = None,
    min_support: int = MIN_SUPPORT,
) -> list[list[str]]:
    """Primary label per head as a `[layer][head]` grid of strings: a category,
    "insufficient" (INSUFFICIENT) or "none".

    The primary label is the highest-scoring *specific* category (induction,
    duplicate_token, previous_token, next_token, first_token_sink) above its threshold
    (DEFAULT_THRESHOLDS, overridable per category); only when there is none, the
    higher-scoring generic one (local, uniform). Why: the local window contains the
    previous token, so a previous-token head always scores at least as high on
    `local` and would otherwise never be called a previous-token head. Ties (within
    1e-6) go to the earlier category in CATEGORIES.

    Evidence: a category whose support is below `min_support` defining queries (4)
    cannot be the label; when every qualifying category of the tier lacks support the
    head is "insufficient". `induction` (which needs an earlier layer) never labels a
    layer-0 head.

    Accepts an attention record, a HeadTaxonomy, or a dict of scores with `support=`
    (see `head_label_details`).
    """
    grid = head_label_details(
        record_or_scores,
        thresholds,
        support=support,
        layer_index=layer_index,
        min_support=min_support,
    )
    return [[cell.label for cell in row] for row in grid]


def _limits(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    unknown = sorted(set(thresholds or {}) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise InputError(f"unknown taxonomy categories in thresholds: {unknown}")
    return {**DEFAULT_THRESHOLDS, **(thresholds or {})}


def _tiers(
    values: Mapping[str, float], limits: Mapping[str, float], order: Sequence[str]
) -> list[list[str]]:
    """The categories above their thresholds, as [specific, generic] tiers, each by
    decreasing score; within 1e-6 of a tier's best, the earliest category leads."""
    rank = {name: i for i, name in enumerate(order)}
    above = [
        (value, rank[name], name)
        for name, value in values.items()
        if value == value and value > limits[name]  # NaN never labels
    ]
    tiers = []
    for tier in (
        [a for a in above if a[2] not in GENERIC],
        [a for a in above if a[2] in GENERIC],
    ):
        tier.sort(key=lambda item: (-item[0], item[1]))
        if tier:  # scores within _TIE of the tier's best: the most specific leads
            best = min((a for a in tier if a[0] >= tier[0][0] - _TIE), key=lambda item: item[1])
            tier.remove(best)
            tier.insert(0, best)
        tiers.append([name for _, _, name in tier])
    return tiers


def _evidence(
    record_or_scores: Any, support: Any, layer_index: Sequence[int] | None
) -> tuple[Mapping[str, Tensor], Mapping[str, Tensor] | None, tuple[int, ...]]:
    """(scores, support or None when unknown, model layer of each row)."""
    if isinstance(record_or_scores, HeadTaxonomy):
        taxonomy = record_or_scores
    elif hasattr(record_or_scores, "pattern"):
        taxonomy = head_taxonomy(record_or_scores)
    else:
        taxonomy = None
    if taxonomy is not None:
        if support is not _REQUIRED or layer_index is not None:
            raise InputError("support= and layer_index= only go with a dict of scores")
        return taxonomy.scores, taxonomy.support, taxonomy.layer_index
    scores = _scores(record_or_scores)
    shape = next(iter(scores.values())).shape
    if support is _REQUIRED:
        raise InputError(
            "labels from a dict of scores need support= (category -> defining queries, "
            "from head_taxonomy(...).support; support=None if unknown); or pass the record "
            "or its HeadTaxonomy"
        )
    counts = None
    if support is not None:
        counts = {}
        for name in (name for name in CATEGORIES if name in scores):
            if name not in support:
                raise InputError(f"support= has no entry for category {name!r}")
            value = torch.as_tensor(support[name])
            if value.dim() == 0:
                value = value.expand(shape)
            if tuple(value.shape) != tuple(shape):
                raise InputError(
                    f"support of {name!r} must be a number or {tuple(shape)}, "
                    f"got {tuple(value.shape)}"
                )
            counts[name] = value
    layers = tuple(range(shape[0])) if layer_index is None else tuple(int(i) for i in layer_index)
    if len(layers) != shape[0]:
        raise InputError(f"layer_index has {len(layers)} entries for {shape[0]} score rows")
    return scores, counts, layers


def _scores(record_or_scores: Any) -> Mapping[str, Tensor]:
    if isinstance(record_or_scores, Mapping):
        scores = {name: torch.as_tensor(value) for name, value in record_or_scores.items()}
        for name, value in scores.items():
            if value.dim() != 2:
                raise InputError(f"score {name!r} must be [layer, head], got {tuple(value.shape)}")
        if not any(name in scores for name in CATEGORIES):
            raise InputError(f"no taxonomy scores found; expected keys among {list(CATEGORIES)}")
        return scores
    raise InputError(
        "head_labels needs an attention record, a HeadTaxonomy or a dict of [layer, head] "
        f"scores, got {type(record_or_scores).__name__}"
    )


# -- long-context labels: retrieval, streaming, echo, dormant (docs/methods.md §2.15) ---------

#: Thresholds of the long-context labels: `echo` on the echo score (a majority of the
#: attention, like duplicate_token), `retrieval` on the retrieval score (Wu et al. 2024
#: call a head above 0.1 a retrieval head), `streaming` on a gate or long-range score
#: (below it: streaming, at or above: retrieval), `dormant` on the first-token sink mass.
LONG_CONTEXT_THRESHOLDS: dict[str, float] = {
    "echo": 0.5,
    "retrieval": 0.1,
    "streaming": 0.5,
    "dormant": 0.5,
}
#: A dormant head's sink mass must also be this many times the uniform baseline.
DORMANT_SINK_RATIO = 2.0


@dataclass(frozen=True)
class EvidenceLabel:
    """A long-context label with its evidence: the `score` that earned it, the
    `baseline` it beats (NaN when it has none), its `support` (steps, queries or
    prompts, as `unit` says) and the `threshold` it crossed."""

    label: str
    score: float
    baseline: float
    support: int
    unit: str
    threshold: float


def long_context_labels(
    taxonomy: HeadTaxonomy,
    *,
    echo: HeadScore | None = None,
    retrieval: HeadScore | None = None,
    streaming: HeadScore | None = None,
    streaming_threshold: float = LONG_CONTEXT_THRESHOLDS["streaming"],
    ablation: Interval | None = None,
    sink_baseline: float | None = None,
    tolerance: float = 0.05,
    min_support: int = MIN_SUPPORT,
) -> dict[tuple[int, int], list[EvidenceLabel]]:
    """Long-context labels of every head, `{(layer, head): [EvidenceLabel, ...]}`, from
    the evidence given (a label whose evidence is missing is never given):

    - `echo` (RazorAttention, Tang et al. 2024): echo score above 0.5 and above its
      uniform baseline, on at least `min_support` queries (`analyses.retrieval.echo_score`).
    - `retrieval` (Wu et al. 2024): retrieval score above 0.1 with the lower end of its
      Wilson interval above the chance baseline, on at least `min_support` copy steps;
      or a `streaming` score (DuoAttention gate, long-range peak) at or above
      `streaming_threshold`.
    - `streaming` (DuoAttention, Xiao et al. 2024): a `streaming` score below
      `streaming_threshold`, on at least `min_support` units.
    - `dormant`: sink-dominated (the taxonomy's first-token sink score above 0.5 and
      above DORMANT_SINK_RATIO × `sink_baseline`, the uniform sink mass) and its
      ablation changes nothing: the whole `ablation` interval (the metric change when
      the head is ablated) lies within ±`tolerance` (equivalence to zero, not merely
      an interval containing it: a deterministic ablation of 1e-5 nats is
      "significant" and still nothing). Needs both.

    All scores are `[layer, head]` on the taxonomy's grid."""
    shape = tuple(taxonomy.scores["first_token_sink"].shape)
    for name, value in (("echo", echo), ("retrieval", retrieval), ("streaming", streaming)):
        if value is not None and tuple(value.score.shape) != shape:
            raise InputError(f"{name} scores {tuple(value.score.shape)} do not match {shape}")
    if ablation is not None and tuple(ablation.mean.shape) != shape:
        raise InputError(f"ablation interval {tuple(ablation.mean.shape)} does not match {shape}")
    limits = LONG_CONTEXT_THRESHOLDS
    labels: dict[tuple[int, int], list[EvidenceLabel]] = {}
    for layer in range(shape[0]):
        for head in range(shape[1]):
            cell = (layer, head)
            found: list[EvidenceLabel] = []
            if echo is not None and _enough(echo, cell, min_support):
                score = float(echo.score[cell])
                if score > limits["echo"] and score > float(echo.baseline[cell]):
                    found.append(_scored("echo", echo, cell, limits["echo"]))
            if retrieval is not None and _enough(retrieval, cell, min_support):
                score = float(retrieval.score[cell])
                low = float(retrieval.low[cell])
                if score > limits["retrieval"] and low > float(retrieval.baseline[cell]):
                    found.append(_scored("retrieval", retrieval, cell, limits["retrieval"]))
            if streaming is not None and _enough(streaming, cell, min_support):
                score = float(streaming.score[cell])
                if score < streaming_threshold:
                    found.append(_scored("streaming", streaming, cell, streaming_threshold))
                elif not any(item.label == "retrieval" for item in found):
                    found.append(_scored("retrieval", streaming, cell, streaming_threshold))
            if ablation is not None and sink_baseline is not None:
                sink = float(taxonomy.scores["first_token_sink"][layer, head])
                support = int(taxonomy.support["first_token_sink"][layer, head])
                mean = float(ablation.mean[layer, head])
                low, high = float(ablation.low[layer, head]), float(ablation.high[layer, head])
                quiet = -tolerance <= low <= mean <= high <= tolerance  # equivalence to 0
                if (
                    support >= min_support
                    and sink > limits["dormant"]
                    and sink > DORMANT_SINK_RATIO * sink_baseline
                    and quiet
                ):
                    found.append(
                        EvidenceLabel(
                            "dormant", sink, sink_baseline, support, "queries", limits["dormant"]
                        )
                    )
            labels[(layer, head)] = found
    return labels


def _enough(value: HeadScore, cell: tuple[int, int], min_support: int) -> bool:
    return int(value.support[cell]) >= min_support


def _scored(name: str, value: HeadScore, cell: tuple[int, int], threshold: float) -> EvidenceLabel:
    return EvidenceLabel(
        name,
        float(value.score[cell]),
        float(value.baseline[cell]),
        int(value.support[cell]),
        value.unit,
        threshold,
    )
