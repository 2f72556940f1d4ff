"""score_heads, the one entry point: the dashboard's Importance page and
`headscope report` give identical scores; targets say what they scored; the
toy circuit comes out on top; bad options are refused with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headscope.dashboard.examples import prompt_set
from headscope.dashboard.importance import importance_scores
from headscope.errors import InputError
from headscope.experiments.scoring import ScoringPrompt, encode_prompt, score_heads
from headscope.experiments.targets import repeated_tokens, resolve_targets
from headscope.reports.config import ReportConfig
from headscope.reports.job import run_report

METHODS = ["ablation", "gradient", "chg"]


def test_dashboard_importance_page_and_report_give_identical_scores(
    toy_model, toy_session, tmp_path
):
    prompts = list(prompt_set(toy_model.spec))[:3]
    page = importance_scores(toy_session, "\n".join(prompts), METHODS, "zero", 2, 25)
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    config = ReportConfig(
        model="toy-induction",
        prompts=str(path),
        methods=tuple(METHODS),
        metric="loss",
        target="auto",
        shard_size=len(prompts),
        seeds=2,
        chg_steps=25,
    )
    report = run_report(config, tmp_path / "report", model=toy_model, progress=False)
    for method in METHODS:
        ours = page.methods[method].scores.numpy()
        theirs = report.scores[method]
        assert ours.shape == theirs.shape, method
        assert np.array_equal(ours, theirs), method
    # Both say what they measured, in the same words.
    assert page.metric.name == "loss" and page.target == "auto"
    assert set(page.prompt_targets) == {"repeats"}


def test_auto_targets_pick_the_repeated_tokens_and_record_their_support(toy_model):
    text = "red cat blue dog red cat blue dog"
    row = encode_prompt(toy_model, ScoringPrompt(text), metric="loss")
    words = text.split()
    assert row.rule == "repeats"
    # <bos> red cat blue dog red cat blue dog: the second "cat blue dog" only
    # (the second "red" follows "dog", a bigram never seen before).
    assert row.targets == [False] * 6 + [True] * 3 and len(row.ids) == len(words) + 1
    plain = encode_prompt(toy_model, ScoringPrompt("red cat blue dog"), metric="loss")
    assert plain.rule == "all" and sum(plain.targets) == 4
    given = encode_prompt(toy_model, ScoringPrompt("red cat", target=" blue"), metric="loss")
    assert given.rule == "continuation" and given.targets == [False, False, False, True]


def test_repeated_tokens_against_a_brute_force_definition():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        ids = torch.randint(0, 4, (12,), generator=generator).tolist()
        expected = [
            q > 0 and any((ids[p - 1], ids[p]) == (ids[q - 1], ids[q]) for p in range(1, q))
            for q in range(len(ids))
        ]
        assert repeated_tokens(ids) == expected


def test_score_heads_finds_the_circuit_on_the_default_prompt_set(toy_model, circuit):
    scores = score_heads(toy_model, list(prompt_set(toy_model.spec)), ["ablation", "gradient"])
    for method in ("ablation", "gradient"):
        top = torch.topk(scores.mean(method).flatten(), 2).indices.tolist()
        found = {(i // toy_model.spec.n_heads, i % toy_model.spec.n_heads) for i in top}
        assert circuit.previous_head in found and found & circuit.induction_heads, method
    ablation = scores.methods["ablation"]
    assert torch.allclose(ablation.scores, ablation.effect)  # a loss: harm = Δ metric
    assert scores.clean.shape == (len(scores.prompts),)
    assert sum(scores.target_tokens) > 0 and "repeats" in scores.described


def test_bad_options_are_refused_with_one_line(toy_model, minilm_model):
    with pytest.raises(InputError, match="unknown method"):
        score_heads(toy_model, ["red cat"], ["ablate"])
    with pytest.raises(InputError, match="unknown metric"):
        score_heads(toy_model, ["red cat"], ["ablation"], metric="bleu")
    with pytest.raises(InputError, match="unknown target"):
        score_heads(toy_model, ["red cat"], ["ablation"], target="middle")
    with pytest.raises(InputError, match="needs a trained LM head"):
        score_heads(minilm_model, ["The cat sat."], ["ablation"], metric="loss")
    with pytest.raises(InputError, match="'corrupted'"):
        score_heads(toy_model, ["red cat blue"], ["attribution"])
    with pytest.raises(InputError, match="no token to score"):
        resolve_targets("continuation", [1, 2, 3], [False, False, False])


@pytest.mark.slow
def test_gating_on_the_default_prompt_set_finds_the_circuit_or_says_it_is_degenerate(
    toy_model, circuit
):
    """The dashboard's default Importance run: scored on the repeated tokens
    (target auto), CHG finds the previous-token and induction heads
    facilitating; scored over every token (most of them unpredictable), the
    −λ refit switches every head off, which is reported as a degenerate fit
    instead of eight "irrelevant" roles."""
    prompts = list(prompt_set(toy_model.spec))
    informative = score_heads(toy_model, prompts, ["chg"], target="auto", chg_seeds=2)
    assert informative.chg.warning is None and informative.methods["chg"].warning is None
    roles = informative.chg.roles
    for layer, head in (circuit.previous_head, circuit.induction_head):
        assert roles[layer][head] == "facilitating", (layer, head)
    everything = score_heads(toy_model, prompts, ["chg"], target="all", chg_seeds=2)
    assert everything.chg.degenerate
    assert "switched every head off" in everything.methods["chg"].warning
    # The warning is right about the cause: every head's G⁻ sits at the floor,
    # while ablating the circuit does cost loss on these prompts.
    assert bool((everything.chg.g_minus < 0.02).all())


def test_a_gradient_at_the_metric_optimum_reports_no_first_order_signal(minilm_model, toy_model):
    sentences = ["The cat sat on the mat.", "A man is playing a guitar."]
    scores = score_heads(minilm_model, sentences, ["gradient"], metric="embedding_cosine")
    gradient = scores.methods["gradient"]
    assert gradient.warning is not None and "no first-order signal on 2 of 2" in gradient.warning
    assert bool((gradient.raw < 1e-6).all())
    assert not bool(gradient.scores.any())  # zeros, not normalised noise
    # A loss has a first-order signal: no warning, and each layer normalised to 1.
    toy = score_heads(toy_model, ["red cat blue dog red cat blue dog"], ["gradient"])
    assert toy.methods["gradient"].warning is None
    norms = toy.methods["gradient"].scores.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms))
