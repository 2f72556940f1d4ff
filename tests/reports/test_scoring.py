"""Shard scoring: truncation keeps BOS and the end, every metric runs with the
orientation "higher = more important", inputs are checked, threads restored;
a shard keeps what its scores measured (units, CHG seeds, targets, clean
metric, warnings and the prompts they apply to)."""

from __future__ import annotations

import pytest
import torch

from headscope.errors import InputError
from headscope.experiments.scoring import MethodScores, encode_prompt
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptItem
from headscope.reports.scoring import _warned_prompts, check_inputs, score_shard, scoring_prompt

REPEAT = "red cat blue dog sun tree red cat blue dog sun"


def _config(**kwargs) -> ReportConfig:
    return ReportConfig(model="toy-induction", prompts="unused.jsonl", **kwargs)


def test_truncation_keeps_bos_and_the_last_tokens_with_their_targets(toy_model):
    words = ("red cat blue dog " * 40).split()  # 160 words
    item = PromptItem(prompt=" ".join(words[:150]), target=" " + " ".join(words[150:]), line=1)
    row = encode_prompt(toy_model, scoring_prompt(item), metric="loss", truncate=True)
    assert len(row.ids) == 128 and row.rule == "continuation"
    full = toy_model.tokenize(item.prompt + item.target, max_length=1000).ids[0].tolist()
    assert row.ids == [full[0], *full[-127:]] and full[0] == toy_model.spec.bos_token_id
    assert sum(row.targets) == 10 and all(row.targets[-10:])


def test_logit_difference_and_embedding_metrics_score_the_circuit(toy_model, circuit):
    items = [
        PromptItem(
            prompt=REPEAT,
            line=1,
            answer=" tree",
            wrong=" cat",
            corrupted=REPEAT.replace(
                "red cat blue dog sun tree red", "key pen box fish hot ice key", 1
            ),
        ),
        PromptItem(
            prompt="up moon salt fish up moon salt",
            line=2,
            answer=" fish",
            wrong=" up",
            corrupted="key pen box cup key pen box",
        ),
    ]
    config = _config(metric="logit-diff", methods=("ablation", "gradient", "attribution"))
    scores = score_shard(toy_model, items, config).scores
    assert {name: tuple(s.shape) for name, s in scores.items()} == {
        "ablation": (2, 2, 4),
        "gradient": (2, 2, 4),
        "attribution": (2, 2, 4),
    }
    # ablation: the harm to a higher-is-better metric, so the circuit scores positive
    for method in ("ablation", "gradient"):
        mean = scores[method].mean(0)
        best = int(mean.flatten().argmax())
        assert (best // 4, best % 4) in circuit.heads, method
    assert scores["ablation"].mean(0).max() > 0.5
    assert torch.isfinite(scores["attribution"]).all()
    embedding = score_shard(toy_model, items, _config(metric="embedding", methods=("ablation",)))
    assert (embedding.scores["ablation"] >= -1e-6).all()  # cosine to the clean embedding only drops


def test_scoring_restores_the_thread_count_and_is_repeatable(toy_model):
    items = [PromptItem(prompt=REPEAT, line=1), PromptItem(prompt="sun tree sun tree", line=2)]
    config = _config(methods=("ablation", "chg"), seeds=2, chg_steps=3)
    before = torch.get_num_threads()
    first = score_shard(toy_model, items, config, shard_index=4)
    assert torch.get_num_threads() == before
    again = score_shard(toy_model, items, config, shard_index=4)
    other = score_shard(toy_model, items, config, shard_index=5)
    for name in first.scores:
        assert first.scores[name].dtype == torch.float64
        assert torch.equal(first.scores[name], again.scores[name]), name
    # CHG: one unit per seed, labelled by shard and seed, seeded by the shard index
    assert first.scores["chg"].shape == (2, 2, 4)
    assert first.units["chg"] == ("shard-4/seed-0", "shard-4/seed-1")
    assert other.units["chg"] == ("shard-5/seed-0", "shard-5/seed-1")
    assert not torch.equal(first.scores["chg"], other.scores["chg"])
    assert first.units["ablation"] == ("line-1", "line-2")
    # what the scores measured, per prompt: the target rule, its tokens, the clean loss
    rows = [encode_prompt(toy_model, scoring_prompt(item), metric="loss") for item in items]
    assert first.prompt_targets == tuple(row.rule for row in rows)
    assert first.target_tokens == tuple(sum(row.targets) for row in rows)
    assert first.prompt_targets[0] == "repeats"
    assert first.clean.dtype == torch.float64 and first.clean.shape == (2,)
    assert torch.equal(first.clean, again.clean) and bool((first.clean > 0).all())


def test_missing_inputs_name_the_method_or_metric():
    items = [PromptItem(prompt="a", line=3, corrupted="b"), PromptItem(prompt="c", line=7)]
    with pytest.raises(InputError, match=r"method 'attribution' needs a 'corrupted'.*\(line 7\)"):
        check_inputs(items, _config())
    check_inputs(items, _config(methods=("ablation", "chg")))
    with pytest.raises(InputError, match=r"metric 'logit_diff'.*'answer'.*\(line 3, line 7\)"):
        check_inputs(items, _config(metric="logit-diff", methods=("ablation",)))


def test_unequal_corrupted_lengths_are_refused_with_the_line(toy_model):
    items = [PromptItem(prompt=REPEAT, target=" tree", corrupted="red cat", line=9)]
    with pytest.raises(InputError, match="line 9: 'corrupted' has 3 tokens"):
        score_shard(toy_model, items, _config(methods=("attribution",)))


def test_a_warning_names_the_prompts_it_applies_to():
    """The gradient's warning applies to its silent prompts (every |dM/dgate|
    below the floor, as score_heads decides), a CHG warning to every prompt."""
    raw = torch.ones(3, 2, 4, dtype=torch.float64)
    raw[1] = 1e-9
    gradient = MethodScores("gradient", raw, ("a", "b", "c"), "", raw=raw, warning="no signal")
    assert _warned_prompts(gradient, 3) == (1,)
    chg = MethodScores("chg", raw[:2], ("s0", "s1"), "", warning="degenerate fit")
    assert _warned_prompts(chg, 3) == (0, 1, 2)
