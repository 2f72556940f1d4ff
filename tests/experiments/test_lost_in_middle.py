"""position_curve: aggregation against closed forms, and a real recall curve on toy-induction."""

from __future__ import annotations

import pytest
import torch

from headscope.analyses.lost_in_middle import curve_gaps
from headscope.errors import InputError
from headscope.experiments.position import position_curve
from headscope.models.toy_training import BOS_ID, WORD_RANGE

MARK = 40  # a word id used as the "relevant item"


def marked_prompts(position: int, n: int = 20, count: int = 3):
    rows = torch.full((count, n), 7)
    rows[:, 0] = BOS_ID
    rows[:, position] = MARK
    return rows


def test_curve_aggregates_and_gaps_follow_the_metric(toy_model):
    def metric(output, batch):
        # a U-shaped, known function of where the mark is
        where = (batch.ids == MARK).float().argmax(1).double()
        return (where - 10.0) ** 2

    positions = [1, 4, 7, 10, 13, 16, 19]
    curve = position_curve(toy_model, marked_prompts, positions, metric)
    expected = torch.tensor([(p - 10.0) ** 2 for p in positions], dtype=torch.float64)
    assert torch.allclose(curve.values, expected)
    # middle third of the 5 interior positions is position 10 alone
    assert curve.middle == 0.0
    assert curve.first_minus_middle == 81.0 and curve.last_minus_middle == 81.0


def test_gaps_with_a_wider_middle():
    middle, first, last = curve_gaps([5.0, 1.0, 2.0, 3.0, 2.0, 1.0, 1.0, 4.0, 6.0, 9.0])
    # interior has 8 values; the middle third is 2 values centered: [2.0, 1.0]
    assert middle == 1.5 and first == 3.5 and last == 7.5


def test_recall_curve_on_toy_induction(toy_model):
    generator = torch.Generator().manual_seed(0)
    n = 40
    filler = torch.randint(*WORD_RANGE, (4, n), generator=generator)
    keys = torch.randint(*WORD_RANGE, (4,), generator=generator)
    values = torch.randint(*WORD_RANGE, (4,), generator=generator)

    def build(position):
        rows = filler.clone()
        rows[:, 0] = BOS_ID
        rows[:, position] = keys
        rows[:, position + 1] = values
        rows[:, -1] = keys  # query: the key again; the answer is the value after it
        return rows

    def answer_logprob(output, batch):
        last = output.logits[:, -1].log_softmax(-1)
        return last[torch.arange(len(values)), values]

    curve = position_curve(toy_model, build, [2, 10, 18, 26, 34], answer_logprob)
    assert curve.values.shape == (5,) and torch.isfinite(curve.values).all()
    # the induction head recalls the value at every distance: far better than chance
    assert (curve.values > torch.log(torch.tensor(1 / 61)) + 1.0).all()


def test_bad_input(toy_model):
    with pytest.raises(InputError, match="at least 3"):
        position_curve(toy_model, marked_prompts, [1, 2], lambda o, b: torch.zeros(3))
    with pytest.raises(InputError, match="returned 1 values for 3 prompts"):
        position_curve(toy_model, marked_prompts, [1, 2, 3], lambda o, b: torch.zeros(1))
