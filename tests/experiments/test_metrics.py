"""Per-prompt metrics: loss and logit difference against Hugging Face, embedding
cosines by hand, per-prompt data follows repeated rows, bad input is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import load_eager_hf

from headscope.errors import InputError
from headscope.experiments.metrics import (
    Metric,
    embedding_cosine,
    evaluate_metric,
    first_copy_targets,
    logit_difference,
    next_token_loss,
    paraphrase_cosine,
    resolve_metric,
    second_copy_targets,
)
from headscope.models.induction_data import repeated_random_batch

PROMPTS = ["t5 t6 t7 t8 t9 t10", "t11 t12 t13"]


def _repeat_rows(batch, rows):
    return batch.select(torch.as_tensor(rows))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_loss_equals_hugging_face_cross_entropy_per_prompt(tiny_models, tiny_dirs, arch):
    model = tiny_models[arch]
    batch = model.tokenize(PROMPTS)  # padded: the second prompt is shorter
    hf = load_eager_hf(tiny_dirs[arch])
    got = evaluate_metric(model, "loss", batch)
    for i, length in enumerate(batch.lengths):
        ids = batch.ids[i : i + 1, :length]
        with torch.no_grad():
            logits = hf(ids).logits[0]
        expected = F.cross_entropy(logits[:-1], ids[0, 1:])
        assert abs(got[i].item() - expected.item()) < 1e-5


def test_target_mask_restricts_the_loss_to_the_marked_tokens(tiny_models, tiny_dirs):
    model = tiny_models["gpt2"]
    batch = model.tokenize(PROMPTS)
    targets = torch.zeros_like(batch.ids, dtype=torch.bool)
    targets[0, 3:5] = True  # tokens 3 and 4 of prompt 0, predicted from positions 2 and 3
    targets[1, 2] = True
    targets[1, 5] = True  # a padded position: never counts
    got = evaluate_metric(model, next_token_loss(targets), batch)
    hf = load_eager_hf(tiny_dirs["gpt2"])
    with torch.no_grad():
        logits = hf(batch.ids).logits
    nll = -logits.log_softmax(-1)[:, :-1].gather(-1, batch.ids[:, 1:, None])[..., 0]
    assert abs(got[0].item() - nll[0, 2:4].mean().item()) < 1e-5
    assert abs(got[1].item() - nll[1, 1].item()) < 1e-5


def test_labels_score_other_tokens_than_the_input(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize(["t5 t6 t7 t8"])
    labels = batch.ids.clone()
    labels[0, 2] = 40
    own = evaluate_metric(model, "loss", batch)
    relabelled = evaluate_metric(model, next_token_loss(labels=labels), batch)
    assert not torch.allclose(own, relabelled)
    same = evaluate_metric(model, next_token_loss(labels=batch.ids), batch)
    assert torch.allclose(own, same)


def test_logit_difference_reads_each_prompts_last_real_token(tiny_models):
    model = tiny_models["llama"]
    batch = model.tokenize(PROMPTS)
    got = evaluate_metric(model, logit_difference([7, 9], [8, 3]), batch)
    for i, (answer, wrong) in enumerate([(7, 8), (9, 3)]):
        alone = model.tokenize(PROMPTS[i])
        with torch.no_grad():
            last = model.forward(alone).logits[0, -1]
        assert abs(got[i].item() - (last[answer] - last[wrong]).item()) < 1e-4
    one_id = evaluate_metric(model, "logit_diff", batch, answer=7, wrong=8)
    assert abs(one_id[0].item() - got[0].item()) < 1e-6


def test_per_prompt_data_follows_repeated_rows(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize(PROMPTS)
    metric = resolve_metric(model, logit_difference([7, 9], [8, 3]), batch)
    rows = torch.tensor([1, 0, 1, 1])
    tiled = _repeat_rows(batch, rows)
    with torch.no_grad():
        values = metric(model.forward(tiled), tiled, rows)
    base = evaluate_metric(model, metric, batch)
    assert torch.allclose(values, base[rows], atol=1e-5)


def test_embedding_cosine_is_one_unablated_and_paraphrase_cosine_by_hand(tiny_models):
    model = tiny_models["bert"]
    prompts = ["t5 t6 t7", "t5 t6 t8", "t30 t31 t32", "t40 t41 t42"]
    batch = model.tokenize(prompts)
    same = evaluate_metric(model, embedding_cosine(), batch)
    assert torch.allclose(same, torch.ones(4), atol=1e-5)
    pairs = evaluate_metric(model, paraphrase_cosine(), batch)
    with torch.no_grad():
        embedding = model.forward(batch, embedding=True).embedding
    first = F.cosine_similarity(embedding[0], embedding[1], dim=0)
    second = F.cosine_similarity(embedding[2], embedding[3], dim=0)
    assert torch.allclose(pairs, torch.stack([first, first, second, second]), atol=1e-5)


def test_models_without_an_lm_head_refuse_loss_and_logit_difference(minilm_model):
    batch = minilm_model.tokenize(["A man plays a guitar.", "A cat sleeps."])
    with pytest.raises(InputError, match="needs a trained LM head"):
        resolve_metric(minilm_model, "loss", batch)
    with pytest.raises(InputError, match="needs a trained LM head"):
        resolve_metric(minilm_model, logit_difference(1000, 1001), batch)
    values = evaluate_metric(minilm_model, "embedding_cosine", batch)
    assert torch.allclose(values, torch.ones(2), atol=1e-5)


def test_a_plain_callable_is_a_metric(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize(PROMPTS)

    def top_logit(output, batch):
        return output.logits[:, 0].max(-1).values

    values = evaluate_metric(model, top_logit, batch)
    with torch.no_grad():
        expected = model.forward(batch).logits[:, 0].max(-1).values
    assert torch.allclose(values, expected)
    metric = resolve_metric(model, top_logit)
    assert isinstance(metric, Metric) and metric.direction == "minimize"


def test_bad_metric_input_is_refused(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize(PROMPTS)
    with pytest.raises(InputError, match="unknown metric"):
        resolve_metric(model, "bleu", batch)
    with pytest.raises(InputError, match="shape"):
        resolve_metric(model, next_token_loss(torch.ones(2, 3, dtype=torch.bool)), batch)
    no_targets = torch.zeros_like(batch.ids, dtype=torch.bool)
    no_targets[0, 2] = True
    with pytest.raises(InputError, match=r"prompts \[1\] have no target"):
        resolve_metric(model, next_token_loss(no_targets), batch)
    with pytest.raises(InputError, match="3 rows for 2 prompts"):
        resolve_metric(model, logit_difference([1, 2, 3], [4, 5, 6]), batch)
    with pytest.raises(InputError, match="token ids must lie"):
        resolve_metric(model, logit_difference(500, 4), batch)
    with pytest.raises(InputError, match="logit_diff"):
        resolve_metric(model, "logit_diff", batch)  # answer and wrong are missing
    with pytest.raises(InputError, match="groups of 2"):
        resolve_metric(model, paraphrase_cosine(), model.tokenize(["t5", "t6", "t7"]))

    def wrong_shape(output, batch):
        return output.logits[:, :2, 0]

    with pytest.raises(InputError, match="one value per prompt"):
        evaluate_metric(model, wrong_shape, batch)


def test_repeat_targets_mark_the_tokens_only_induction_predicts():
    generator = torch.Generator().manual_seed(0)
    ids, layout = repeated_random_batch(
        3, 7, prefix_length=2, vocab=(3, 60), bos_id=1, generator=generator
    )
    second = second_copy_targets(layout, 3)
    first = first_copy_targets(layout, 3)
    assert second.shape == first.shape == ids.shape
    assert second.sum(1).tolist() == [6, 6, 6] and first.sum(1).tolist() == [6, 6, 6]
    positions = second[0].nonzero().flatten()
    # each second-copy target repeats the token 7 places earlier, and so does its predecessor
    assert torch.equal(ids[:, positions], ids[:, positions - 7])
    assert torch.equal(ids[:, positions - 1], ids[:, positions - 8])
    assert not (first & second).any()
    assert int(first[0].nonzero().min()) == layout.first_start + 1
