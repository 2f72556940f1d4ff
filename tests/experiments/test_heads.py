"""Head importance: the toy-induction circuit found by every method, batched
evaluation equal to loops of single forwards, closed-form checks of gradients
and patching, bad input refused."""

from __future__ import annotations

import math

import pytest
import torch

import headscope as hs
from headscope.analyses.ranking import rank_heads, top_heads
from headscope.errors import InputError
from headscope.experiments.ablation import ablation_scores, clean_metric, pruning_curve
from headscope.experiments.gating import causal_head_gating, contrastive_head_gating
from headscope.experiments.gradients import gradient_importance
from headscope.experiments.metrics import (
    first_copy_targets,
    logit_difference,
    next_token_loss,
    resolve_metric,
    second_copy_targets,
)
from headscope.experiments.patching import activation_patching, attribution_patching, patch_heads
from headscope.experiments.progress import AnalysisCancelledError
from headscope.models.induction_data import repeated_random_batch
from headscope.models.toy_training import BOS_ID, WORD_RANGE
from headscope.probes import batched
from headscope.probes.run import editing

LOG_V = math.log(WORD_RANGE[1] - WORD_RANGE[0])  # 61 words: chance-level loss


# -- the toy-induction circuit ------------------------------------------------------------------


class Toy:
    """16 sequences [BOS, p_1..p_3, r_1..r_20, r_1..r_20] and the circuit read off
    their attention patterns (not hard-coded)."""

    def __init__(self, model) -> None:
        generator = torch.Generator().manual_seed(7)
        self.ids, self.layout = repeated_random_batch(
            16, 20, prefix_length=3, vocab=WORD_RANGE, bos_id=BOS_ID, generator=generator
        )
        self.targets = second_copy_targets(self.layout, 16)
        self.loss = next_token_loss(self.targets)
        fresh = torch.randint(*WORD_RANGE, (16, 20), generator=generator)
        self.corrupted = self.ids.clone()
        self.corrupted[:, self.layout.second_start :] = fresh  # second copy: new random tokens
        # Every other word of the first copy replaced by a different word: breaks
        # the circuit at both heads (a replaced word leaves the induction head
        # nothing to copy; a replaced predecessor hides the word from it).
        first = slice(self.layout.first_start, self.layout.second_start, 2)
        shift = torch.randint(
            1, WORD_RANGE[1] - WORD_RANGE[0], self.ids[:, first].shape, generator=generator
        )
        self.corrupted_first = self.ids.clone()
        self.corrupted_first[:, first] = (self.ids[:, first] - WORD_RANGE[0] + shift) % (
            WORD_RANGE[1] - WORD_RANGE[0]
        ) + WORD_RANGE[0]
        # The heads are read off the patterns of 64 other sequences (the model
        # card's evaluation set): the two induction heads score 0.955 and 0.961
        # there, too close to tell apart on 16 sequences.
        probe, layout = repeated_random_batch(
            64, 20, vocab=WORD_RANGE, bos_id=BOS_ID, generator=torch.Generator().manual_seed(1234)
        )
        pattern = hs.capture(model, probe).pattern  # [batch, layer, head, query, key]
        q = torch.arange(1, probe.shape[1])
        previous = pattern[:, 0, :, q, q - 1].mean((0, -1))  # layer 0, [head]
        t, s2 = layout.repeat_length, layout.second_start
        q2 = torch.arange(s2 + 1, s2 + t)
        induction = pattern[:, 1, :, q2, q2 - t + 1].mean((0, -1))  # layer 1, [head]
        self.previous_score, self.induction_score = previous, induction
        self.previous_head = (0, int(previous.argmax()))
        self.induction_head = (1, int(induction.argmax()))
        self.induction_heads = {(1, int(h)) for h in (induction > 0.8).nonzero().flatten()}
        self.circuit = {self.previous_head, self.induction_head}


@pytest.fixture(scope="module")
def toy(toy_model):
    return Toy(toy_model)


@pytest.fixture(scope="module")
def toy_ablation(toy_model, toy):
    return ablation_scores(toy_model, toy.ids, metric=toy.loss)


def test_the_circuit_is_visible_in_the_patterns(toy):
    assert toy.previous_score.max() > 0.8
    assert toy.induction_score.max() > 0.8
    assert toy.induction_head in toy.induction_heads


def test_zero_ablation_ranks_the_circuit_first_and_breaks_induction(toy_model, toy, toy_ablation):
    assert set(top_heads(toy_ablation, 2)) == toy.circuit
    clean = clean_metric(toy_model, toy.ids, metric=toy.loss).mean().item()
    assert clean < 0.5
    for layer, head in toy.circuit:
        ablated = clean + toy_ablation[layer, head].item()
        assert ablated > 0.6 * LOG_V, (layer, head, ablated)


def test_mean_and_resample_ablation_rank_the_circuit_first(toy_model, toy):
    for mode in ("mean", "resample"):
        scores = ablation_scores(toy_model, toy.ids, metric=toy.loss, mode=mode, draws=2)
        assert set(top_heads(scores, 2)) == toy.circuit, mode


def test_gradient_importance_ranks_the_circuit_first(toy_model, toy):
    scores = gradient_importance(toy_model, toy.ids, metric=toy.loss)
    assert set(top_heads(scores, 2)) == toy.circuit
    after_mean = gradient_importance(toy_model, toy.ids, metric=toy.loss, absolute="after_mean")
    assert set(top_heads(after_mean, 2)) == toy.circuit


def _check_chg(result, toy, toy_ablation, seeds):
    dead = {
        (layer, head)
        for layer in range(2)
        for head in range(4)
        if abs(toy_ablation[layer, head].item()) < 0.01
    }
    assert dead and not dead & (toy.circuit | toy.induction_heads)
    assert result.g_plus.shape == result.g_minus.shape == (seeds, 2, 4)
    for roles in result.seed_roles:
        for layer, head in toy.circuit | toy.induction_heads:
            assert roles[layer][head] == "facilitating", (layer, head, roles)
        for layer, head in dead:
            assert roles[layer][head] == "irrelevant", (layer, head, roles)
    for layer, head in toy.circuit:
        assert result.roles[layer][head] == "facilitating"
        lowest_circuit = result.facilitation_per_seed[:, layer, head].min()
        assert all(lowest_circuit > result.facilitation_per_seed[:, a, b].max() for a, b in dead)
    assert top_heads(result.facilitation, 1)[0] in toy.induction_heads
    # λ > 0 raises gates: every G⁺ is at least its G⁻ (up to optimisation noise)
    assert bool((result.g_plus >= result.g_minus - 0.05).all())


def test_causal_head_gating_labels_the_circuit_facilitating(toy_model, toy, toy_ablation):
    # 8 of the 16 sequences keep this test fast; the slow test below uses all 16
    metric = next_token_loss(toy.targets[:8])
    result = causal_head_gating(
        toy_model, toy.ids[:8], metric=metric, seeds=2, steps=20, lam=1.0, progress=False
    )
    _check_chg(result, toy, toy_ablation, seeds=2)


@pytest.mark.slow
def test_causal_head_gating_five_seeds(toy_model, toy, toy_ablation):
    result = causal_head_gating(
        toy_model, toy.ids, metric=toy.loss, seeds=5, steps=60, lam=1.0, progress=False
    )
    _check_chg(result, toy, toy_ablation, seeds=5)
    assert torch.allclose(result.irrelevance, result.irrelevance_per_seed.mean(0))


def test_patching_on_a_corrupted_second_copy_ranks_the_induction_heads_first(toy_model, toy):
    # The corrupted run predicts the clean continuation: labels are the clean tokens.
    metric = next_token_loss(toy.targets, labels=toy.ids)
    attribution = attribution_patching(toy_model, toy.ids, toy.corrupted, metric)
    activation = activation_patching(toy_model, toy.ids, toy.corrupted, metric)
    assert len(toy.induction_heads) == 2
    assert set(top_heads(attribution, 2)) == toy.induction_heads
    assert set(top_heads(activation, 2)) == toy.induction_heads
    # The previous-token head helps only together with a clean query, so alone
    # it restores less than the induction heads, but more than nothing.
    layer, head = toy.previous_head
    assert activation[layer, head] > 0.02


def test_patching_on_a_corrupted_first_copy_ranks_the_circuit_first(toy_model, toy):
    assert (toy.corrupted_first != toy.ids).sum() > 0
    assert ((toy.corrupted_first != toy.ids).sum(1) == 10).all()  # 10 of 20 first-copy words
    metric = next_token_loss(toy.targets, labels=toy.ids)
    attribution = attribution_patching(toy_model, toy.ids, toy.corrupted_first, metric)
    activation = activation_patching(toy_model, toy.ids, toy.corrupted_first, metric)
    assert set(top_heads(attribution, 2)) == toy.circuit
    assert set(top_heads(activation, 2)) == toy.circuit


def test_contrastive_gating_closes_the_circuit_for_the_second_copy(toy_model, toy):
    retain = next_token_loss(first_copy_targets(toy.layout, 8))  # chance level either way
    result = contrastive_head_gating(
        toy_model,
        toy.ids[:8],
        toy.ids[:8],
        metric=retain,
        forget_metric=next_token_loss(toy.targets[:8]),
        seeds=2,
        steps=20,
        progress=False,
    )
    assert result.gates.shape == (2, 2, 4)
    for seed in range(2):
        lowest = top_heads(-result.gates[seed], 1)[0]
        assert lowest in toy.circuit | toy.induction_heads
    assert (result.forget_value > result.clean_forget + 1.0).all()
    assert (result.retain_value - result.clean_retain).abs().max() < 0.3


# -- batched evaluation equals loops -------------------------------------------------------------


PADDED = ["t5 t6 t7 t8 t9 t10", "t11 t12 t13", "t20 t21 t22 t23 t24", "t30 t31"]


def _loop_ablation(model, prompts, mode):
    batch = model.tokenize(prompts)
    metric = resolve_metric(model, "loss", batch)
    spec = model.spec
    out = torch.zeros(batch.batch_size, spec.n_layers, spec.n_heads, dtype=torch.float64)
    with torch.no_grad():
        clean = metric(model.forward(batch), batch).double()
        for layer in range(spec.n_layers):
            for head in range(spec.n_heads):
                gates = torch.ones(spec.n_layers, spec.n_heads)
                gates[layer, head] = 0
                reference = batch if mode != "zero" else None
                with hs.gate_heads(model, gates, mode=mode, reference=reference):
                    out[:, layer, head] = metric(model.forward(batch), batch).double() - clean
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_batched_ablation_equals_a_loop_of_single_head_gates(tiny_models, arch, mode):
    model = tiny_models[arch]
    expected = _loop_ablation(model, PADDED, mode)
    for batch_size in (3, 16):  # chunks smaller than, and larger than, one layer's masks
        got = ablation_scores(model, PADDED, mode=mode, per_prompt=True, batch_size=batch_size)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5), (batch_size, (got - expected).abs().max())
    assert torch.allclose(ablation_scores(model, PADDED, mode=mode), expected.mean(0), atol=1e-5)


def test_sharing_the_lower_layers_is_exact_and_falls_back(tiny_models, monkeypatch):
    model = tiny_models["llama"]
    shared = ablation_scores(model, PADDED, per_prompt=True, batch_size=8)
    plain = ablation_scores(model, PADDED, per_prompt=True, batch_size=8, reuse_lower_layers=False)
    assert torch.allclose(shared, plain, atol=1e-5)

    def refuse(model, start, copies):
        raise RuntimeError("this architecture cannot tile")

    monkeypatch.setattr(batched, "tile_from_layer", refuse)
    fallback = ablation_scores(model, PADDED, per_prompt=True, batch_size=8)
    assert torch.allclose(fallback, plain, atol=1e-5)


def test_resampling_from_the_prompt_itself_changes_nothing(tiny_models):
    model = tiny_models["gpt2"]
    scores = ablation_scores(model, "t5 t6 t7 t8", mode="resample", reference="t5 t6 t7 t8")
    assert scores.abs().max() < 1e-5
    with pytest.raises(InputError, match="at least 5 tokens"):
        ablation_scores(model, "t5 t6 t7 t8", mode="mean", reference="t5 t6")


def test_activation_patching_equals_patching_one_head_at_a_time(tiny_models):
    model = tiny_models["gpt2"]
    clean, corrupted = ["t5 t6 t7 t8 t9", "t20 t21 t22"], ["t5 t40 t7 t8 t9", "t20 t41 t22"]
    metric = logit_difference([10, 11], [12, 13])
    batched = activation_patching(model, clean, corrupted, metric, batch_size=5)
    for layer in range(2):
        for head in range(4):
            alone = patch_heads(model, clean, corrupted, [(layer, head)], metric)
            assert abs(batched[layer, head].item() - alone.item()) < 1e-5


# -- closed forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gradient_importance_equals_a_finite_difference(tiny_dirs, arch):
    # float64, so that a one-sided difference with a small step is not rounding noise
    model = hs.load_model(tiny_dirs[arch], dtype=torch.float64)
    prompt = "t5 t9 t13 t5 t9 t14"
    got = gradient_importance(model, prompt, normalize=False)
    batch = model.tokenize(prompt)
    metric = resolve_metric(model, "loss", batch)
    eps = 1e-3  # Llama RMSNorm runs in fp32 even in an fp64 model: keep the step large
    with torch.no_grad():
        base = metric(model.forward(batch), batch).double().item()
        for layer in range(2):
            for head in range(4):
                gates = torch.ones(2, 4, dtype=torch.float64)
                gates[layer, head] = 1 - eps
                with hs.gate_heads(model, gates):
                    lower = metric(model.forward(batch), batch).double().item()
                difference = abs((base - lower) / eps)
                assert abs(got[layer, head].item() - difference) < 1e-3 * difference + 1e-6


def test_per_example_absolute_values_and_normalisation(tiny_models):
    model = tiny_models["gpt2"]
    prompts = ["t5 t9 t13 t5", "t30 t31 t32 t33"]
    raw = [gradient_importance(model, p, normalize=False) for p in prompts]
    per_example = gradient_importance(model, prompts, normalize=False)
    assert torch.allclose(per_example, (raw[0] + raw[1]) / 2, atol=1e-6)
    normalized = gradient_importance(model, prompts)
    assert torch.allclose(normalized.norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(normalized, per_example / per_example.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_patching_every_head_gives_one_and_none_gives_zero(tiny_models, arch):
    model = tiny_models[arch]
    # Only an earlier token differs: the last position hears about it only through attention.
    clean, corrupted = ["t5 t6 t7 t8 t9", "t20 t21 t22"], ["t40 t6 t7 t8 t9", "t20 t44 t22"]
    metric = logit_difference([10, 11], [12, 13])
    spec = model.spec
    both = patch_heads(
        model, clean, corrupted, torch.stack([torch.ones(2, 4), torch.zeros(2, 4)]), metric
    )
    assert abs(both[0].item() - 1) < 1e-4 and abs(both[1].item()) < 1e-9
    everything = [(layer, head) for layer in range(spec.n_layers) for head in range(spec.n_heads)]
    assert abs(patch_heads(model, clean, corrupted, everything, metric).item() - 1) < 1e-4
    assert abs(patch_heads(model, clean, corrupted, [], metric).item()) < 1e-9


def test_attribution_equals_activation_patching_for_a_metric_linear_in_the_last_z(tiny_models):
    model = tiny_models["gpt2"]
    clean = ["t5 t6 t7 t8 t9", "t20 t21 t22 t23 t24"]  # 6 tokens with BOS
    corrupted = ["t5 t6 t33 t8 t9", "t20 t34 t22 t23 t24"]
    last = model.spec.n_layers - 1
    weights = torch.randn(6, model.spec.d_model, generator=torch.Generator().manual_seed(0))
    kept = {}

    def keep(attn_out):
        kept["attn_out"] = attn_out
        return attn_out

    def readout(output, batch):
        # attn_out of the last layer = Σ_h z_h W_O^h + b_O: linear in each head's z
        return (kept["attn_out"] * weights).sum((1, 2))

    with editing(model, {hs.Site(last, "attn_out"): keep}):
        attribution = attribution_patching(model, clean, corrupted, readout)
        activation = activation_patching(model, clean, corrupted, readout)
    assert torch.allclose(attribution[last], activation[last], atol=1e-4)
    assert activation[last].abs().max() > 1e-2


def test_pruning_curve_endpoints_and_a_middle_point(tiny_models):
    model = tiny_models["llama"]
    prompts = PADDED[:2]
    importance = torch.arange(8.0).reshape(2, 4)  # head (0, 0) is the least important
    fractions, values = pruning_curve(model, prompts, importance, fractions=(0, 0.25, 1))
    assert fractions.tolist() == [0, 0.25, 1]
    batch = model.tokenize(prompts)
    metric = resolve_metric(model, "loss", batch)
    with torch.no_grad():
        clean = metric(model.forward(batch), batch).mean().item()
        gates = torch.ones(2, 4)
        gates[0, :2] = 0  # 25% of 8 heads: the two least important
        with hs.gate_heads(model, gates):
            middle = metric(model.forward(batch), batch).mean().item()
        with hs.gate_heads(model, torch.zeros(2, 4)):
            pruned = metric(model.forward(batch), batch).mean().item()
    assert values.tolist() == pytest.approx([clean, middle, pruned], abs=1e-5)
    ranked = [(layer, head) for layer, head, _ in rank_heads(importance)]
    _, again = pruning_curve(model, prompts, ranked, fractions=(0, 0.25, 1))
    assert torch.allclose(again, values)


def test_rank_heads_orders_by_score_and_keeps_ties_in_order():
    scores = torch.tensor([[0.5, 2.0], [2.0, -1.0]])
    assert rank_heads(scores) == [(0, 1, 2.0), (1, 0, 2.0), (0, 0, 0.5), (1, 1, -1.0)]
    assert rank_heads(scores, descending=False)[0] == (1, 1, -1.0)
    with pytest.raises(InputError, match="NaN"):
        rank_heads(torch.tensor([[float("nan")]]))


# -- progress, cancellation, bad input -----------------------------------------------------------


def test_callbacks_see_progress_and_can_cancel(tiny_models):
    model = tiny_models["gpt2"]
    seen = []
    causal_head_gating(
        model,
        "t5 t6 t7 t8",
        seeds=2,
        steps=3,
        progress=False,
        callback=lambda step, total: seen.append((step, total)),
    )
    assert seen == [(i, 6) for i in range(1, 7)]
    with pytest.raises(AnalysisCancelledError):
        causal_head_gating(
            model, "t5 t6 t7 t8", steps=5, progress=False, callback=lambda step, total: step < 2
        )
    with pytest.raises(KeyboardInterrupt):

        def interrupt(step, total):
            raise KeyboardInterrupt

        ablation_scores(model, PADDED, callback=interrupt)


def test_bad_input_is_refused(tiny_models, minilm_model):
    model = tiny_models["gpt2"]
    with pytest.raises(InputError, match="no prompts"):
        ablation_scores(model, [])
    with pytest.raises(InputError, match="unknown ablation mode"):
        ablation_scores(model, PADDED, mode="median")
    with pytest.raises(InputError, match="batch_size"):
        gradient_importance(model, PADDED, batch_size=0)
    with pytest.raises(InputError, match="equal token lengths"):
        activation_patching(model, ["t5 t6 t7"], ["t5 t6"], logit_difference(1, 2))
    with pytest.raises(InputError, match="2 clean prompts but 1"):
        attribution_patching(model, ["t5 t6", "t7 t8"], ["t5 t6"], logit_difference(1, 2))
    with pytest.raises(InputError, match="nothing to restore"):
        patch_heads(model, "t5 t6 t7", "t5 t6 t7", [(0, 1)], logit_difference(1, 2))
    with pytest.raises(InputError, match=r"shape \[layer, head\] = \[2, 4\]"):
        patch_heads(model, "t5 t6 t7", "t5 t8 t7", torch.ones(3, 4), logit_difference(1, 2))
    with pytest.raises(InputError, match="out of range"):
        patch_heads(model, "t5 t6 t7", "t5 t8 t7", [(2, 0)], logit_difference(1, 2))
    with pytest.raises(InputError, match=r"shape \[layer, head\]"):
        pruning_curve(model, PADDED, torch.ones(4, 2))
    with pytest.raises(InputError, match="each of the 8 heads once"):
        pruning_curve(model, PADDED, [(0, 0), (0, 1)])
    with pytest.raises(InputError, match="fractions"):
        pruning_curve(model, PADDED, torch.ones(2, 4), fractions=(0.5, 2))
    with pytest.raises(InputError, match="seeds"):
        causal_head_gating(model, PADDED, seeds=0, progress=False)
    with pytest.raises(InputError, match="needs a trained LM head"):
        ablation_scores(minilm_model, ["A man plays a guitar."])
    with pytest.raises(InputError, match="needs a trained LM head"):
        causal_head_gating(minilm_model, ["A man plays a guitar."], progress=False)


def test_minilm_ablation_with_the_embedding_metric(minilm_model):
    prompts = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The cat sleeps on the mat.",
    ]
    scores = ablation_scores(minilm_model, prompts, metric="embedding_cosine", batch_size=24)
    spec = minilm_model.spec
    assert scores.shape == (spec.n_layers, spec.n_heads)
    # cosine to the unablated embedding is at most 1, so no ablation can raise it
    assert bool((scores <= 1e-6).all()) and scores.min() < -1e-3
    importance = gradient_importance(minilm_model, prompts, metric="embedding_cosine")
    assert torch.isfinite(importance).all()
