"""Training dynamics over the shipped toy-induction checkpoints (docs/methods.md
§2.13): the induction phase change of Olsson et al. 2022 shows up where it must."""

from __future__ import annotations

import math

import pytest
import torch

import headscope as hs
from headscope.analyses.dynamics import TrainingDynamics, largest_step_change, phase_change
from headscope.analyses.taxonomy import head_taxonomy_from_pattern
from headscope.errors import InputError
from headscope.experiments.dynamics import profile_model, repeat_prompts, training_dynamics
from headscope.figures.dynamics import dynamics_figure, importance_figure
from headscope.models.checkpoints import BUILTIN_SERIES
from headscope.models.zoo import BUILTINS

INDUCTION_HEAD = (1, 3)


@pytest.fixture(scope="module")
def dynamics() -> TrainingDynamics:
    return training_dynamics(hs.load_checkpoints("toy-induction"))


def test_induction_rises_where_the_in_context_loss_drops(dynamics):
    """The known answer: head 1.3's induction score jumps from chance to > 0.8
    across the shipped checkpoints, and its fastest rise is in the same or the
    adjacent checkpoint interval as the in-context loss's fastest drop."""
    phase = phase_change(dynamics, *INDUCTION_HEAD)
    assert phase.coincide, phase
    series = dynamics.head_series(*INDUCTION_HEAD)
    chance = dynamics.chance["induction"]
    assert abs(float(series[0]) - chance) < 0.02  # random init: attention near uniform
    assert float(series[-1]) > 0.8
    assert phase.rise > 0.2 and phase.drop > 0.5
    # the interval of the rise holds the phase change: before it the score is
    # within a few chance-widths, after it far above
    assert phase.score_before < 3 * chance and phase.score_after > 5 * chance
    # in-context learning goes from none (≈ 0, interval covering it or close) to
    # several nats, with intervals that exclude 0 at the end
    assert abs(float(dynamics.in_context_loss[0])) < 0.1
    assert float(dynamics.in_context_high[-1]) < -3.0
    # the previous-token head forms in the same window (it feeds the induction head)
    previous = phase_change(dynamics, 0, 2, "previous_token")
    assert (
        abs(
            dynamics.steps.index(previous.rise_steps[0]) - dynamics.steps.index(phase.rise_steps[0])
        )
        <= 1
    )


def test_importance_follows_the_circuit(dynamics):
    assert dynamics.importance is not None and dynamics.importance_low is not None
    first, last = dynamics.importance[0], dynamics.importance[-1]
    # at initialisation no head matters; at the end the induction head does, with
    # an interval that excludes zero
    assert float(first.abs().max()) < 0.1
    assert float(dynamics.importance_low[-1, 1, 3]) > 1.0
    assert float(last[1, 3]) == pytest.approx(float(last.max()), abs=1.0)


def test_scores_equal_the_taxonomy_of_each_checkpoint():
    """A checkpoint's scores are the taxonomy of its own maps: recomputed here
    from a plain Hugging Face model (eager attention) built from the shipped
    fp16 file and the built-in's config, not through `load_checkpoints`."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    series = hs.load_checkpoints("toy-induction")
    prompts = repeat_prompts(4, 6, seed=3)
    result = training_dynamics(
        [(step, series.load(step)) for step in (0, 650)], prompts, importance=False
    )
    config = LlamaConfig.from_pretrained(
        BUILTINS["toy-induction"].path(), attn_implementation="eager"
    )
    reference = LlamaForCausalLM(config).eval()
    weights = load_file(BUILTIN_SERIES["toy-induction"] / "step650.safetensors")
    reference.load_state_dict({k: v.float() for k, v in weights.items()})
    batch = series.load(650).tokenize(prompts)
    with torch.no_grad():
        out = reference(
            batch.ids, attention_mask=batch.attention_mask.long(), output_attentions=True
        )
    pattern = torch.stack(out.attentions, 1)  # [batch, layer, head, q, k]
    expected = head_taxonomy_from_pattern(
        pattern, batch.ids, lengths=batch.lengths, bos=True, causal=True
    ).scores
    for name, scores in result.scores.items():
        assert torch.allclose(scores[1], expected[name], atol=1e-4, equal_nan=True), name
    assert result.importance is None and result.steps == (0, 650)


def test_in_context_loss_is_late_minus_early_half():
    """The profile's halves recomputed from the logits by hand."""
    model = hs.load_model("toy-induction")
    prompts = [
        "red cat blue dog red cat blue dog",
        "one two three four five one two three four five",
    ]
    profile = profile_model(model, prompts, importance=False)
    for row, prompt in enumerate(prompts):
        batch = model.tokenize(prompt)
        with torch.no_grad():
            logits = model.forward(batch).logits[0].double()
        ids = batch.ids[0]
        nll = [-float(logits[q].log_softmax(-1)[ids[q + 1]]) for q in range(len(ids) - 1)]
        half = len(nll) // 2
        early, late = sum(nll[:half]) / half, sum(nll[half:]) / (len(nll) - half)
        assert float(profile.early_loss[row]) == pytest.approx(early, abs=1e-6)
        assert float(profile.in_context_loss[row]) == pytest.approx(late - early, abs=1e-6)


def test_largest_step_change_and_inputs():
    values = torch.tensor([0.0, 0.1, 0.7, 0.8, 1.6])
    assert largest_step_change(values, direction="rise") == (3, pytest.approx(0.8))
    assert largest_step_change(-values, direction="drop") == (3, pytest.approx(0.8))
    # per step, the short interval's 0.6 over 100 steps beats 0.8 over 1000
    steps = [0, 100, 200, 300, 1300]
    assert largest_step_change(values, direction="rise", steps=steps) == (1, pytest.approx(0.6))
    with pytest.raises(InputError):
        largest_step_change(values, direction="rise", steps=[0, 1, 2])
    with pytest.raises(InputError):
        largest_step_change(values[:1], direction="rise")
    with pytest.raises(InputError):
        largest_step_change(values, direction="sideways")
    prompts = repeat_prompts(3, 5, seed=1)
    assert all(p.split()[:5] == p.split()[5:] for p in prompts)
    assert all(len(set(p.split())) == 5 for p in prompts)
    with pytest.raises(InputError):
        repeat_prompts(1)


def test_figures_mark_the_phase_change(dynamics):
    phase = phase_change(dynamics, *INDUCTION_HEAD)
    figure = dynamics_figure(dynamics, phase=phase, chance=dynamics.chance["induction"])
    names = [trace.name for trace in figure.data]
    assert "1.3" in names and "in-context loss" in names
    shaded = [s for s in figure.layout.shapes if s.type == "rect"]
    # the phase change spans the rise and the drop (adjacent intervals here)
    bounds = (*phase.rise_steps, *phase.drop_steps)
    assert shaded and (shaded[0].x0, shaded[0].x1) == (min(bounds), max(bounds))
    line = next(t for t in figure.data if t.name == "1.3")
    assert list(line.x) == list(dynamics.steps)
    assert [round(v, 4) for v in line.y] == [
        round(float(v), 4) for v in dynamics.head_series(*INDUCTION_HEAD)
    ]
    bars = importance_figure(dynamics, [INDUCTION_HEAD], phase=phase)
    assert math.isclose(bars.data[0].y[-1], float(dynamics.importance[-1, 1, 3]), rel_tol=1e-5)
