"""Per-prompt and per-model analysis results, computed through the analyses
package and memoized on the server (per prompt in `PromptState`, per model in
`ModelSession`). Page callbacks ask for results here and only build figures."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from headscope.analyses import flow, position, spectral, taxonomy
from headscope.analyses.relevance import relevance_from_gradients
from headscope.analyses.summary import HeadSummary, head_summary
from headscope.dashboard.session import ModelSession, PromptState
from headscope.experiments import attention as model_attention
from headscope.experiments import relevance as model_relevance
from headscope.experiments import spectra as model_spectra


def summary(state: PromptState) -> HeadSummary:
    return state.cached("summary", lambda: head_summary(state.record.pattern))


def taxonomy_evidence(state: PromptState) -> taxonomy.HeadTaxonomy:
    """`head_taxonomy(record)`: every category's `[layer, head]` score and support."""
    return state.cached("taxonomy", lambda: taxonomy.head_taxonomy(state.record))


def taxonomy_scores(state: PromptState) -> dict[str, Tensor]:
    """`head_scores(record)`: one `[layer, head]` score per taxonomy category."""
    return dict(taxonomy_evidence(state).scores)


def taxonomy_labels(state: PromptState) -> list[list[taxonomy.HeadLabel]]:
    """The primary label of every head with its evidence (`head_label_details` with the
    default thresholds and minimum support): the label ("insufficient" when its best
    category rests on too few queries, "none" when nothing qualifies), the category
    behind it, that category's score and its support (defining queries)."""
    return state.cached("labels", lambda: taxonomy.head_label_details(taxonomy_evidence(state)))


def sinks(state: PromptState, ratio: float = position.SINK_RATIO) -> position.SinkDecision:
    """The sink decision of the prompt (`position.sink_decision(record)`): α_k per
    `[layer, head, key]` read against uniform attention over the keys each query may
    see, with causality from the record's model spec."""
    return state.cached(
        ("sinks", float(ratio)), lambda: position.sink_decision(state.record, ratio=ratio)
    )


def sink_scores(state: PromptState) -> Tensor:
    """Sink score α_k per `[layer, head, key]` (Gu et al. 2025 metric), with the
    visibility of the model's mask (causality from the record)."""
    return sinks(state).alpha


def rollout(state: PromptState, residual: float = 0.5) -> Tensor:
    return state.cached(
        ("rollout", residual), lambda: flow.rollout(state.record.pattern, residual=residual)
    )


def attention_flow(state: PromptState, residual: float = 0.5) -> Tensor:
    return state.cached(
        ("flow", residual),
        lambda: flow.attention_flow(state.record.pattern, residual=residual, normalize=True),
    )


def content_free(n: int, n_layers: int, causal: bool, method: str, residual: float = 0.5) -> Tensor:
    """The content-free baseline's final `[query, key]` map (uniform attention
    over the mask, pushed through the same computation)."""
    result = flow.content_free_baseline(
        n, n_layers=n_layers, causal=causal, method=method, residual=residual
    )
    result = torch.as_tensor(result)
    return result[-1] if result.dim() == 3 else result


@dataclass(frozen=True)
class Relevance:
    """Gradient-weighted relevance of one prompt (Chefer et al. 2021, docs/methods.md
    §1.3) for the logit of the model's top prediction at the last position.

    `map` is R `[query, key]` (float64, R ≥ I, rows do not sum to 1); `target`
    is the predicted token id, `token` its text and `logit` its pre-softmax logit."""

    map: Tensor
    target: int
    token: str
    logit: float


def relevance(session: ModelSession, state: PromptState) -> Relevance:
    """`Relevance` of the prompt, memoized with it. The forward and backward pass
    hold the model lock; models without a trained LM head raise InputError (their
    logits mean nothing, so relevance needs a target the dashboard does not pick)."""

    def compute() -> Relevance:
        model = session.require_model()
        batch = session.tokenize(state.prompt)
        with session.lock:
            captured = model_relevance.attention_gradients(model, batch)
        target = captured.target
        assert target is not None  # the default target is a token (only callables have none)
        return Relevance(
            map=relevance_from_gradients(captured.pattern, captured.gradient),
            target=target,
            token=str(model.tokenizer.decode([target])),
            logit=captured.value,
        )

    return state.cached("relevance", compute)


#: Mask-only baselines offered on the position page, with their parameters.
MASKS: dict[str, dict] = {
    "causal": {},
    "bidirectional": {},
    "sliding_window": {"window": 8},
    "prefix": {"prefix": None},  # None: half the prompt
    "decay": {"gamma": 0.8},
}


def mask_label(kind: str, n: int) -> str:
    params = mask_parameters(kind, n)
    detail = ", ".join(f"{'γ' if k == 'gamma' else k}={v:g}" for k, v in params.items())
    return kind.replace("_", " ") + (f" ({detail})" if detail else "")


def mask_parameters(kind: str, n: int) -> dict:
    return {k: (n // 2 if v is None else v) for k, v in MASKS[kind].items()}


@dataclass(frozen=True)
class Influence:
    """Influence mass by |query − key| distance after each layer, for the
    model (head-averaged maps, no residual) and for the mask alone."""

    model: Tensor  # [layer, distance]
    baseline: Tensor  # [layer, distance]
    mask: str


def influence(state: PromptState, mask: str) -> Influence:

    def compute() -> Influence:
        pattern = state.record.pattern
        n_layers, n = pattern.shape[0], pattern.shape[-1]
        model_curve = position.influence_by_distance(position.cumulative_influence(pattern))
        mask_map = position.mask_attention(mask, n, **mask_parameters(mask, n))
        baseline = position.influence_by_distance(
            position.cumulative_influence(mask_map, n_layers=n_layers)
        )
        return Influence(model_curve, baseline, mask_label(mask, n))

    return state.cached(("influence", mask), compute)


# -- model-level (weights only) -------------------------------------------------------------------

MP_MATRICES = ("W_Q", "W_K", "W_V", "W_O")


def head_weights(session: ModelSession):
    """Per-head weights with norms folded in (`experiments.spectra.head_weights`).
    Reading them runs a short forward, so it takes the model lock."""

    def compute():
        with session.lock:
            return model_spectra.head_weights(session.require_model())

    return session.cached_model_result("head_weights", compute)


def spectra(session: ModelSession):
    """QK / OV spectra of every head (`spectral.HeadSpectra`), with copying
    scores only for models with a trained LM head (W_U means nothing otherwise);
    only the weight read holds the lock."""

    def compute():
        weights = head_weights(session)
        has_lm_head = session.require_model().spec.has_lm_head
        return model_spectra.spectra_from_weights(weights, has_lm_head)

    return session.cached_model_result("spectra", compute)


def composition(session: ModelSession, kind: str):
    """All-pairs composition scores of one kind with the random baseline
    (`experiments.spectra.composition_from_weights`), from the cached weights."""

    def compute():
        return model_spectra.composition_from_weights(head_weights(session), kind)

    return session.cached_model_result(("composition", kind), compute)


def mp_fit(session: ModelSession, layer: int, head: int, matrix: str):
    """Marchenko–Pastur fit of one head's weight matrix (Tracy–Widom margin)."""

    def compute():
        weights = head_weights(session)
        return spectral.marchenko_pastur_fit(getattr(weights, matrix)[layer, head])

    return session.cached_model_result(("mp", layer, head, matrix), compute)


def warm_up(session: ModelSession, stop: threading.Event | None = None) -> None:
    """Compute the spectra ahead of the first head page (run in a thread by
    `create_app`); a failure is left for the pages to report. `stop` (set when
    the server stops) is checked between the steps, so the thread ends within
    one step: the weight read (one short forward) or the spectra."""
    if session.model is None:
        return
    steps = (head_weights, spectra)
    for step in steps:
        if stop is not None and stop.is_set():
            return
        try:
            step(session)
        except Exception:
            return


# -- value-weighted attention (Kobayashi et al. 2020) ---------------------------------------------

#: The weightings of the head page's maps and token views: the attention weights α,
#: or α·‖v·W_O‖ with each query row renormalized to sum 1.
WEIGHTINGS = {
    "raw": "attention α",
    "value": "value-weighted α·‖v·W_O‖",
}


def value_norms(session: ModelSession, state: PromptState) -> Tensor:
    """‖v_{h,k}·W_O^h‖ per `[layer, head, key]` of the prompt (`experiments.attention.
    value_norms`), memoized with it: one forward (under the model lock) per prompt,
    after which every head's value-weighted map is a product."""

    def compute() -> Tensor:
        model = session.require_model()
        batch = session.tokenize(state.prompt)
        with session.lock:
            return model_attention.value_norms(model, batch)

    return state.cached("value-norms", compute)


def head_map(session: ModelSession, state: PromptState, layer: int, head: int, weighting: str):
    """One head's `[query, key]` map under `weighting` ("raw": the captured α;
    "value": α·‖v·W_O‖ renormalized per query row, so rows still sum to 1)."""
    pattern = state.record.map(layer, head)
    if weighting != "value":
        return pattern
    norms = value_norms(session, state)
    return model_attention.weight_by_value_norms(pattern, norms[layer, head])


def layer_maps(session: ModelSession, state: PromptState, layer: int, weighting: str) -> Tensor:
    """Every head's map of one layer, `[head, query, key]`, under `weighting`."""
    record = state.record
    li = record.layer_index.index(layer)
    pattern = record.pattern[li]
    if weighting != "value":
        return pattern
    norms = value_norms(session, state)[layer][list(record.head_index)]
    return model_attention.weight_by_value_norms(pattern, norms)
