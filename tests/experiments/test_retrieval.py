"""Retrieval and streaming heads on models: the streaming intervention against
identities, and the toy's known answers (its copying heads 1.0 and 1.3 are the
retrieval heads; ablating them breaks copying, ablating streaming heads does not;
the sink-dominated heads whose ablation changes nothing are dormant)."""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.errors import InputError
from headscope.experiments import retrieval as rx
from headscope.probes.run import run
from headscope.probes.sites import Site
from headscope.probes.streaming import stream_heads, streaming_mask

COPYING = {(1, 0), (1, 3)}


@pytest.fixture(scope="module")
def copy_result(toy_model) -> rx.RetrievalResult:
    task = rx.copy_task(toy_model, prompts=8, source_length=12, cue_length=2, seed=0)
    return rx.retrieval_scores(toy_model, task)


def test_streaming_mask_keeps_sink_and_window() -> None:
    mask = streaming_mask(6, 1, 2)
    expected = torch.tensor([[q >= k and (k < 1 or k > q - 2) for k in range(6)] for q in range(6)])
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_stream_heads_identities(tiny_models, arch) -> None:
    model = tiny_models[arch]
    spec = model.spec
    batch = model.batch_from_ids([[1, *range(5, 17)]])
    n = batch.length
    clean = run(model, batch).output.logits
    ones = torch.ones(spec.n_layers, spec.n_heads)
    zeros = torch.zeros(spec.n_layers, spec.n_heads)
    with torch.no_grad():
        with stream_heads(model, ones, sink=1, window=2):
            kept = run(model, batch).output.logits
        with stream_heads(model, zeros, sink=0, window=n):  # the window holds every key
            wide = run(model, batch).output.logits
        with stream_heads(model, zeros, sink=0, window=1):  # each query sees itself only
            read = run(model, batch, read=[Site(0, "v"), Site(0, "z")])
        with stream_heads(model, zeros, sink=1, window=2):
            narrow = run(model, batch).output.logits
    assert torch.allclose(kept, clean, atol=1e-5)
    assert torch.allclose(wide, clean, atol=1e-5)
    v = read[Site(0, "v")].repeat_interleave(spec.n_heads // spec.n_kv_heads, dim=2)
    assert torch.allclose(read[Site(0, "z")], v, atol=1e-5)  # attention on itself: z = v
    assert not torch.allclose(narrow, clean, atol=1e-3)


def test_stream_heads_refuses_encoders_and_bad_windows(tiny_models) -> None:
    bert = tiny_models["bert"]
    gates = torch.ones(bert.spec.n_layers, bert.spec.n_heads)
    with pytest.raises(InputError, match="causal"), stream_heads(bert, gates):
        pass
    with pytest.raises(InputError, match="window"):
        streaming_mask(4, 1, 0)
    with pytest.raises(InputError, match="causal language model"):
        rx.retrieval_scores(bert)


def test_retrieval_scores_run_on_a_grouped_query_model(tiny_models) -> None:
    model = tiny_models["llama"]
    task = rx.copy_task(model, prompts=3, source_length=8, cue_length=2, seed=2)
    result = rx.retrieval_scores(model, task)
    generated = result.sequences[:, task.prompt_length :]
    sources = result.sequences[:, 1 : 1 + task.source_length]
    steps = sum(
        int(token in sources[b].tolist()) for b in range(3) for token in generated[b].tolist()
    )
    assert int(result.scores.support[0, 0]) == steps  # copy steps counted by hand
    assert result.scores.score.shape == (model.spec.n_layers, model.spec.n_heads)
    if steps:
        assert bool(((result.scores.score >= 0) & (result.scores.score <= 1)).all())


def test_toy_copies_and_its_copying_heads_get_the_top_retrieval_scores(copy_result) -> None:
    assert copy_result.accuracy.accuracy >= 0.95  # the model really copies
    scores = copy_result.scores
    ranked = sorted(
        ((float(scores.score[l, h]), (l, h)) for l in range(2) for h in range(4)), reverse=True
    )
    assert {ranked[0][1], ranked[1][1]} == COPYING
    assert ranked[1][0] > 0.9 and ranked[2][0] < 0.1
    assert int(scores.support[0, 0]) == 8 * (12 - 2)
    for l, h in COPYING:  # far above chance, interval and all
        assert float(scores.low[l, h]) > 10 * float(scores.baseline[l, h])


def test_one_capture_of_the_final_sequence_equals_per_step_captures(toy_model, copy_result) -> None:
    # the claim retrieval_scores rests on: map row p - 1 of the final sequence is the
    # row the model used when it generated token p
    sequence = copy_result.sequences[0]
    final = hs.capture(toy_model, sequence).pattern
    start = copy_result.task.prompt_length
    for p in range(start, sequence.shape[0]):
        prefix = hs.capture(toy_model, sequence[:p]).pattern  # what generating p saw
        assert torch.allclose(prefix[:, :, p - 1, :p], final[:, :, p - 1, :p], atol=1e-6)


def test_greedy_generation_is_the_argmax_continuation(toy_model, copy_result) -> None:
    sequences = copy_result.sequences[:2]
    logits = run(toy_model, toy_model.batch_from_ids(sequences.tolist())).output.logits
    start = copy_result.task.prompt_length
    assert torch.equal(logits[:, start - 1 : -1].argmax(-1), sequences[:, start:])


def test_duoattention_gates_keep_the_copying_heads(toy_model) -> None:
    task = rx.passkey_task(toy_model, prompts=4, seed=0)
    gates = rx.streaming_gates(toy_model, task, sink=1, window=4, steps=30, lr=0.08)
    kept = {(l, h) for l, h in (gates.gates >= 0.5).nonzero().tolist()}
    assert kept == COPYING
    assert gates.warning is None
    assert gates.kl_all_streaming > 1.0 > 0.05 > gates.kl_fitted
    with pytest.raises(InputError, match="reaches the needle"):
        rx.streaming_gates(toy_model, task, window=task.distance)


def test_gates_of_a_model_that_needs_no_retrieval_say_so(tiny_models) -> None:
    # a random-weight model barely reads its context: streaming every head moves its
    # output by almost nothing, and the fit must say that the gates mean nothing
    model = tiny_models["gpt2"]
    gates = rx.streaming_gates(model, rx.passkey_task(model, prompts=4), steps=3)
    assert gates.kl_all_streaming < 0.01
    assert gates.warning is not None and "say nothing" in gates.warning


def test_data_free_long_range_peak_finds_the_copying_heads(toy_model) -> None:
    peak = rx.long_range_scores(toy_model, sink=1, window=4)
    top = {tuple(x) for x in rx.rank_by(peak.score, 2)}
    assert top == COPYING
    assert float(peak.score.min()) >= 0.0
    for l, h in COPYING:
        assert float(peak.low[l, h]) > 5 * float(peak.baseline[l, h])


@pytest.mark.parametrize("intervention", ["zero", "stream"])
def test_changing_the_retrieval_heads_breaks_copying_and_streaming_heads_do_not(
    toy_model, copy_result, intervention
) -> None:
    task = rx.copy_task(toy_model, prompts=8, source_length=12, cue_length=2, seed=5)
    check = rx.ablation_check(
        toy_model,
        copy_result.scores.score,
        by="retrieval score",
        threshold=0.1,
        count=2,
        draws=15,
        intervention=intervention,
        task=task,
    )
    assert set(check.top.ablated) == COPYING
    assert check.clean.accuracy >= 0.95
    assert check.top.accuracy < 0.2
    assert len(check.bottom) == 15  # every pair of the six streaming heads
    assert check.bottom_pooled.accuracy > 0.6 and check.separated
    if intervention == "stream":
        # DuoAttention's claim: streaming heads lose nothing under sink + window
        assert min(item.accuracy for item in check.bottom) >= 0.95


def test_the_study_labels_the_toy(toy_model) -> None:
    study = rx.retrieval_study(toy_model, prompts=8, source_length=12, draws=2, gate_steps=40)
    labels = {head: {x.label for x in found} for head, found in study.labels.items()}
    assert {head for head, found in labels.items() if "retrieval" in found} == COPYING
    assert all("streaming" in labels[head] for head in labels if head not in COPYING)
    # heads 1.1 and 1.2 put ~all attention on BOS and their ablation changes nothing
    dormant = {head for head, found in labels.items() if "dormant" in found}
    assert dormant == {(1, 1), (1, 2)}
    for head in dormant:
        assert float(study.taxonomy.scores["first_token_sink"][head]) > 0.9
        assert abs(float(study.ablation.mean[head])) < 0.01
    assert len(study.checks) == 6 and all(check.separated for check in study.checks)
