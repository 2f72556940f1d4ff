"""Spectral diagnostics of a loaded model's heads (docs/methods.md §4): the
weights are read with their norms folded (`head_weights`), then handed to the
pure functions of `headscope.analyses.spectral`.

- `head_weights`: per-head W_Q/W_K/W_V/W_O, W_E and W_U, with ln1 folded into
  the layers whose attention reads it and ln_final into W_U where the
  unembedding reads it, both decided by one 3-token forward (`reads_normalized`).
- `copying_scores` (Elhage et al. 2021, "A Mathematical Framework for Transformer
  Circuits"), `composition_scores` with its random baseline (same paper), and
  `spectra` (QK and OV spectra plus copying scores).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.analyses.spectral import (
    CompositionKind,
    CompositionScores,
    HeadSpectra,
    composition_baseline,
    composition_scores_from_weights,
    copying_score,
    qk_ov_spectra,
)
from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel
from headscope.models.weights import HeadWeights
from headscope.models.weights import head_weights as read_head_weights
from headscope.probes.run import run
from headscope.probes.sites import Site, available


@torch.no_grad()
def reads_normalized(model: HeadscopeModel) -> tuple[list[bool], bool]:
    """Per layer: does attention read ln1's output (pre-norm)? And does the
    unembedding read ln_final's output? Answered by one 3-token forward that
    compares both sides of each pair; an architecture that will not run bare
    ids falls back to its adapter's `supports_fold_ln` flag."""
    n_layers = model.spec.n_layers
    pairs = [(Site(layer, "ln1_out"), Site(layer, "attn_in")) for layer in range(n_layers)]
    pairs.append((Site(None, "final_norm"), Site(None, "unembed_in")))
    wanted = [site for pair in pairs for site in pair if available(model, site)]
    bridge = model.bridge
    fallback = bool(getattr(getattr(bridge, "adapter", None), "supports_fold_ln", True))
    try:
        ids = (torch.arange(3) % model.spec.d_vocab)[None]
        seen = run(model, model.batch_from_ids(ids.tolist()), read=wanted).activations
    except Exception:  # an architecture that will not run bare ids: trust the adapter
        return [fallback] * n_layers, fallback

    def same(pair: tuple[Site, Site]) -> bool:
        a, b = (seen.get(site) for site in pair)
        return (
            a is not None
            and b is not None
            and a.shape == b.shape
            and bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5))
        )

    return [same(pair) for pair in pairs[:-1]], same(pairs[-1])


def head_weights(model: HeadscopeModel) -> HeadWeights:
    """Per-head weights with the norms folded where the model reads them
    normalized (`reads_normalized`); see `headscope.models.weights.HeadWeights`."""
    attention, unembed = reads_normalized(model)
    return read_head_weights(model, fold_attention=attention, fold_unembed=unembed)


def copying_scores(model: HeadscopeModel) -> Float[Tensor, "layer head"]:
    """`copying_score` of every head of a loaded model, from `head_weights(model)`
    (token embedding only, no positions; ln_final folded into W_U where it applies).
    Raises InputError for a model without a trained LM head (e.g. minilm): its W_U
    is untrained, so W_E·OV·W_U would be a number that means nothing."""
    if not model.spec.has_lm_head:
        raise InputError(
            f"{model.spec.name} has no trained LM head, so copying scores (W_E·OV·W_U) "
            "mean nothing for it"
        )
    weights = head_weights(model)
    return copying_score(weights.W_E, weights.W_V, weights.W_O, weights.W_U).float()


def composition_scores(model: HeadscopeModel, kind: CompositionKind = "K") -> CompositionScores:
    """All-pairs Q/K/V composition scores of a loaded model with the random baseline
    for its d_model and d_head (`composition_scores_from_weights`,
    `composition_baseline`)."""
    weights = head_weights(model)
    return composition_from_weights(weights, kind)


def composition_from_weights(weights: HeadWeights, kind: CompositionKind) -> CompositionScores:
    """`CompositionScores` of already-read weights (the dashboard caches the read)."""
    scores = composition_scores_from_weights(
        weights.W_Q, weights.W_K, weights.W_V, weights.W_O, kind
    )
    d_model, d_head = weights.W_Q.shape[-2:]
    return CompositionScores(
        scores=scores.float(),
        baseline=composition_baseline(int(d_model), int(d_head)),
        kind=kind,
    )


def spectra(model: HeadscopeModel) -> HeadSpectra:
    """QK and OV spectra of every head of a loaded model plus its copying scores."""
    return spectra_from_weights(head_weights(model), model.spec.has_lm_head)


def spectra_from_weights(weights: HeadWeights, has_lm_head: bool) -> HeadSpectra:
    """QK and OV spectra of already-read weights plus copying scores. `copying`
    is None for a model without a trained LM head (e.g. minilm): its W_U is
    untrained, so W_E·OV·W_U would be a meaningless number."""
    result = qk_ov_spectra(weights.W_Q, weights.W_K, weights.W_V, weights.W_O)
    copying = None
    if has_lm_head:
        copying = copying_score(weights.W_E, weights.W_V, weights.W_O, weights.W_U).float()
    return HeadSpectra(qk=result.qk, ov=result.ov, copying=copying)
