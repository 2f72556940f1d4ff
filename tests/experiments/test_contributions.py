"""Direct logit attribution, logit lens and the contribution graph: the parts sum to
the model's own logit on toy-induction, a tiny GPT-2 (with non-zero biases) and a
tiny Llama (GQA); per-head values match a reference written on the Hugging Face
modules; the lens ends at the model's output; the toy circuit's induction heads
carry the largest direct effect; the proximity shares have known answers."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_hf_model, tiny_tokenizer

import headscope as hs
from headscope.analyses.contributions import contribution_graph, proximity_shares
from headscope.errors import InputError
from headscope.experiments.contributions import (
    contributions,
    direct_logit_attribution,
    embedding_attribution,
    logit_lens,
    token_id,
)

PROMPT = "t5 t9 t13 t40 t5 t9 t13"
TOY_PROMPT = "red cat blue tree moon red cat blue tree"


@pytest.fixture(scope="module")
def biased_models(tmp_path_factory):
    """Tiny GPT-2, Llama and BERT with every bias and norm weight random (initialised
    models have zero biases and unit gains, which would hide those terms)."""
    models = {}
    for arch in ("gpt2", "llama", "bert"):
        model = tiny_hf_model(arch, seed=1)
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias") or "norm" in name or "ln" in name:
                    noise = torch.randn(parameter.shape, generator=generator)
                    parameter.copy_(1.0 + 0.3 * noise if "weight" in name else 0.1 * noise)
        directory = tmp_path_factory.mktemp(f"biased-{arch}")
        model.save_pretrained(directory)
        tiny_tokenizer().save_pretrained(directory)
        models[arch] = hs.load_model(directory)
    return models


def _model_logits(model, prompt):
    batch = model.tokenize(prompt)
    with torch.no_grad():
        return model.forward(batch).logits[0].double()


def _cases(name, toy_model, biased_models):
    if name == "toy":
        return toy_model, TOY_PROMPT
    return biased_models[name], PROMPT


@pytest.mark.parametrize("name", ["toy", "gpt2", "llama"])
def test_the_parts_sum_to_the_models_logit(name, toy_model, biased_models):
    model, prompt = _cases(name, toy_model, biased_models)
    logits = _model_logits(model, prompt)
    n = logits.shape[0]
    for position in (1, n // 2, n - 1):
        for token in (None, 3, 17):
            result = direct_logit_attribution(model, prompt, position, token)
            target = int(logits[position].argmax()) if token is None else token
            assert result.target == target
            expected = float(logits[position, target])
            assert result.logit == pytest.approx(expected, abs=1e-5)
            assert result.total() == pytest.approx(expected, abs=1e-4)
        difference = direct_logit_attribution(model, prompt, position, 4, contrast=11)
        expected = float(logits[position, 4] - logits[position, 11])
        assert difference.total() == pytest.approx(expected, abs=1e-4)
        assert difference.contrast == 11 and "difference" in difference.measured


def test_bias_and_position_terms_are_exercised_on_gpt2(biased_models):
    result = direct_logit_attribution(biased_models["gpt2"], PROMPT, 4, 9)
    assert result.norm == "LayerNorm"
    assert result.attention_bias.abs().min() > 1e-4  # b_O is non-zero in every layer
    assert abs(result.final_bias) > 1e-4
    assert abs(result.positional_embedding) > 1e-6  # learned absolute positions
    rotary = direct_logit_attribution(biased_models["llama"], PROMPT, 4, 9)
    assert rotary.norm == "RMSNorm" and rotary.positional_embedding == 0.0
    assert rotary.final_bias == 0.0 and not rotary.attention_bias.any()


def _reference_heads(model, prompt, position, token):
    """Per-head DLA from the Hugging Face modules alone: each head's slice of the
    output projection's input times its columns, through the final norm with
    the scale measured on its own input (no bridge, no sites)."""
    hf = model.bridge.original_model
    seen = {}

    def keep(name):
        def hook(module, args):
            seen[name] = args[0].detach().double()

        return hook

    gpt2 = hasattr(hf, "transformer")
    blocks = hf.transformer.h if gpt2 else hf.model.layers
    handles = [
        (block.attn.c_proj if gpt2 else block.self_attn.o_proj).register_forward_pre_hook(keep(i))
        for i, block in enumerate(blocks)
    ]
    final = hf.transformer.ln_f if gpt2 else hf.model.norm
    handles.append(final.register_forward_pre_hook(keep("final")))
    ids = model.tokenize(prompt).ids
    try:
        with torch.no_grad():
            hf(ids)
    finally:
        for handle in handles:
            handle.remove()
    x = seen["final"][0, position]
    unembed = hf.lm_head.weight.detach().double()[token]
    gain = final.weight.detach().double()
    if gpt2:
        x = x - x.mean()
        scale = (x.pow(2).mean() + final.eps).sqrt()
    else:
        scale = (x.pow(2).mean() + final.variance_epsilon).sqrt()
    n_heads = model.spec.n_heads
    out = torch.zeros(len(blocks), n_heads, dtype=torch.float64)
    for layer, block in enumerate(blocks):
        z = seen[layer][0, position]
        d_head = z.shape[0] // n_heads
        if gpt2:
            weight = block.attn.c_proj.weight.detach().double()  # Conv1D: [in, out]
        else:
            weight = block.self_attn.o_proj.weight.detach().double().T
        for head in range(n_heads):
            part = (
                z[head * d_head : (head + 1) * d_head] @ weight[head * d_head : (head + 1) * d_head]
            )
            if gpt2:
                part = part - part.mean()
            out[layer, head] = part @ (gain * unembed) / scale
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_per_head_values_match_a_reference_on_the_hf_modules(arch, biased_models):
    model = biased_models[arch]
    for position, token in ((2, 5), (6, 40)):
        ours = direct_logit_attribution(model, PROMPT, position, token)
        expected = _reference_heads(model, PROMPT, position, token)
        assert torch.allclose(ours.heads.double(), expected, atol=1e-5), (ours.heads, expected)
        assert expected.abs().max() > 1e-3  # the comparison is not between zeros


@pytest.mark.parametrize("name", ["toy", "gpt2", "llama"])
def test_the_logit_lens_ends_at_the_models_output(name, toy_model, biased_models):
    model, prompt = _cases(name, toy_model, biased_models)
    logits = _model_logits(model, prompt)
    position = 4
    lens = logit_lens(model, prompt, position, 7, k=3)
    assert len(lens.stages) == model.spec.n_layers + 1
    probs = logits[position].softmax(-1)
    assert int(lens.top_ids[-1, 0]) == int(probs.argmax())
    assert torch.allclose(lens.top_probs[-1].double(), probs.topk(3).values, atol=1e-5)
    assert float(lens.target_prob[-1]) == pytest.approx(float(probs[7]), abs=1e-5)
    assert int(lens.target_rank[-1]) == int((logits[position] > logits[position, 7]).sum())
    # every stage is a distribution over the vocabulary, ranks are consistent
    assert (lens.top_probs[:, :-1] >= lens.top_probs[:, 1:]).all()
    top_is_target = lens.top_ids[:, 0] == 7
    assert torch.equal(top_is_target, lens.target_rank == 0)


def test_toy_induction_heads_carry_the_largest_direct_effect(toy_model, circuit):
    """On second-copy positions of repeated random sequences, the head with the
    largest direct logit attribution to the actual next token is one of the
    circuit's induction heads (found independently, by attention pattern)."""
    from headscope.models.induction_data import repeated_random_batch
    from headscope.models.toy_training import BOS_ID, WORD_RANGE

    tokens, _ = repeated_random_batch(
        4, 10, vocab=WORD_RANGE, bos_id=BOS_ID, generator=torch.Generator().manual_seed(5)
    )
    n = tokens.shape[1]
    mean = torch.zeros(toy_model.spec.n_layers, toy_model.spec.n_heads, dtype=torch.float64)
    count = 0
    for row in tokens:
        for position in range(n - 8, n - 1):
            result = direct_logit_attribution(toy_model, row, position, int(row[position + 1]))
            flat = int(result.heads.flatten().argmax())
            top = divmod(flat, toy_model.spec.n_heads)
            assert top in circuit.induction_heads, (position, result.heads)
            assert result.total() == pytest.approx(result.logit, abs=1e-4)
            mean += result.heads
            count += 1
    mean /= count
    ranked = [
        divmod(int(i), toy_model.spec.n_heads) for i in mean.flatten().argsort(descending=True)
    ]
    assert set(ranked[: len(circuit.induction_heads)]) == set(circuit.induction_heads)


def test_one_forward_gives_all_three_views(toy_model):
    result = contributions(toy_model, TOY_PROMPT, 3, "next")
    batch = toy_model.tokenize(TOY_PROMPT)
    assert result.next_token == int(batch.ids[0, 4])
    assert result.attribution.target == result.next_token == result.lens.target
    top = contributions(toy_model, TOY_PROMPT, 3, "top")
    assert top.attribution.target == top.top_prediction
    assert top.graph.n_layers == 2 and top.graph.n_heads == 4
    with pytest.raises(InputError, match="no next token"):
        contributions(toy_model, TOY_PROMPT, batch.length - 1, "next")


def test_the_graph_shares_sum_to_one_into_every_sum_node(toy_model):
    graph = contributions(toy_model, TOY_PROMPT, None, "top", min_share=0.0).graph
    into_mid = graph.residual_to_mid + graph.head_to_mid.sum(1) + graph.bias_to_mid
    into_residual = graph.mid_to_residual + graph.mlp_to_residual
    assert torch.allclose(into_mid, torch.ones(2), atol=1e-5)
    assert torch.allclose(into_residual, torch.ones(2), atol=1e-5)
    for node in graph.graph.nodes:
        incoming = [d["share"] for _, _, d in graph.graph.in_edges(node, data=True)]
        if incoming:
            assert sum(incoming) == pytest.approx(1.0, abs=1e-5)


def test_proximity_shares_known_answers():
    whole = torch.tensor([2.0, -1.0, 0.5])
    assert torch.equal(
        proximity_shares(torch.stack([whole, torch.zeros(3)]), whole),
        torch.tensor([1.0, 0.0]).double(),
    )
    halves = proximity_shares(torch.stack([whole / 2, whole / 2]), whole)
    assert torch.allclose(halves, torch.tensor([0.5, 0.5]).double())
    # a part pointing away from the whole gets nothing; ‖w‖₁ = 3.5 and ‖w − 2w‖₁ = 3.5
    against = proximity_shares(torch.stack([2 * whole, -whole]), whole)
    assert torch.allclose(against, torch.tensor([0.0, 0.0]).double())
    # ALTI by hand: ‖w‖₁ − ‖w − p‖₁ for p = (2, 0, 0): 3.5 − 1.5 = 2; for (0, −1, .5): 3.5 − 2 = 1.5
    parts = torch.tensor([[2.0, 0.0, 0.0], [0.0, -1.0, 0.5]])
    assert torch.allclose(
        proximity_shares(parts, whole), torch.tensor([2 / 3.5, 1.5 / 3.5]).double()
    )


def test_the_graph_threshold_drops_small_edges_only():
    generator = torch.Generator().manual_seed(0)
    heads = torch.randn(3, 4, 16, generator=generator)
    heads[1, 2] *= 20  # one dominant head
    args = (
        torch.randn(16, generator=generator),
        heads,
        torch.zeros(3, 16),
        torch.randn(3, 16, generator=generator),
    )
    full = contribution_graph(*args, min_share=0.0)
    pruned = contribution_graph(*args, min_share=0.2)
    assert full.graph.number_of_nodes() == pruned.graph.number_of_nodes() == 1 + 3 * (4 + 4)
    assert all(d["share"] >= 0.2 for _, _, d in pruned.graph.edges(data=True))
    kept = {(a, b) for a, b, d in full.graph.edges(data=True) if d["share"] >= 0.2}
    assert set(pruned.graph.edges) == kept
    assert ("head/1/2", "mid/1") in kept
    assert not pruned.graph.has_edge("bias/0", "mid/0")  # a zero bias has no share


def test_encoders_and_bad_arguments_are_refused(toy_model, minilm_model, tiny_models):
    with pytest.raises(InputError, match="no trained LM head"):
        direct_logit_attribution(minilm_model, "The cat sat.")
    with pytest.raises(InputError, match="encoder"):
        direct_logit_attribution(tiny_models["bert"], PROMPT)
    with pytest.raises(InputError, match="position"):
        direct_logit_attribution(toy_model, TOY_PROMPT, 99)
    with pytest.raises(InputError, match="outside the vocabulary"):
        direct_logit_attribution(toy_model, TOY_PROMPT, 2, 10_000)
    with pytest.raises(InputError, match="not in the vocabulary"):
        token_id(toy_model, "zebra")
    assert toy_model.tokenizer.decode([token_id(toy_model, "moon")]).strip() == "moon"


@pytest.mark.parametrize("name", ["minilm", "bert"])
def test_encoder_parts_sum_to_the_sentence_embedding(name, minilm_model, biased_models):
    model = minilm_model if name == "minilm" else biased_models["bert"]
    prompt = "The cat sat on the mat." if name == "minilm" else PROMPT
    with torch.no_grad():
        embedding = model.forward(model.tokenize(prompt), embedding=True).embedding[0]
    result = embedding_attribution(model, prompt)
    norm = float(embedding.double().norm())
    assert result.norm == pytest.approx(norm, rel=1e-6)
    assert result.total() == pytest.approx(norm, abs=1e-4 * max(1.0, norm))
    assert result.heads.shape == (model.spec.n_layers, model.spec.n_heads)
    assert abs(result.norm_biases) > 1e-6 and result.mlps.abs().max() > 1e-6


def test_the_embedding_split_refuses_a_pre_norm_model(toy_model):
    with pytest.raises(InputError, match="post-norm"):
        embedding_attribution(toy_model, TOY_PROMPT)
