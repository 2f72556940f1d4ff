"""Train the built-in `toy-induction` model (deterministic, CPU, ~3 minutes on 2 cores).

    python -m headscope.models.toy_training   # writes headscope/models/builtin/toy-induction

A 2-layer Llama-architecture causal LM (RoPE, 4 heads, hidden 128) trained on
repeated random sequences (`induction_data.random_repeat_batch`) with a random
repeat length (8-30) and random prefix (0-12), so that only an induction
circuit predicts the second copy (Olsson et al. 2022; docs/methods.md §5.2). With
learned absolute positions (GPT-2) induction heads had not formed after 6,000
steps here; with RoPE they form in ~750.

The tokenizer is a word-level vocabulary of 61 common English words plus
<pad>, <bos>, <unk>, so text prompts such as "red cat blue dog red cat blue dog"
work. CI never retrains: the weights ship in the package as safetensors.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from headscope.models.induction_data import random_repeat_batch, repeated_random_batch

WORDS: tuple[str, ...] = tuple(
    "the a cat dog red blue green sun moon star tree leaf rock sea sky bird fish "
    "one two three four five big small old new hot cold up down left right "
    "run walk sing jump read write eat drink sleep open shut door key box cup "
    "pen book ship car road rain snow wind fire ice gold salt milk tea".split()
)
SPECIALS = ("<pad>", "<bos>", "<unk>")
PAD_ID, BOS_ID, UNK_ID = 0, 1, 2
VOCAB_SIZE = len(SPECIALS) + len(WORDS)  # 64
WORD_RANGE = (len(SPECIALS), VOCAB_SIZE)
DEFAULT_OUT = Path(__file__).resolve().parent / "builtin" / "toy-induction"

assert len(set(WORDS)) == len(WORDS) == 61, "vocabulary must be 61 distinct words"


def build_tokenizer():
    """Word-level fast tokenizer that prepends <bos> to every text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<bos>",
        unk_token="<unk>",
        add_bos_token=True,
        model_max_length=128,
    )


def build_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=BOS_ID,
        pad_token_id=PAD_ID,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


def _zero_head(model, head: int):
    d_head = model.config.hidden_size // model.config.num_attention_heads

    def hook(module, args):
        z = args[0].clone()
        z[..., head * d_head : (head + 1) * d_head] = 0
        return (z,)

    return hook


@torch.no_grad()
def evaluate(model, *, repeat_length: int = 20, batch: int = 64, seed: int = 1234) -> dict:
    """First/second-half loss and the best previous-token (layer 0) and
    induction (layer 1) scores on [BOS, r_1..r_T, r_1..r_T]."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    tokens, layout = repeated_random_batch(
        batch, repeat_length, vocab=WORD_RANGE, bos_id=BOS_ID, generator=generator
    )
    out = model(tokens, output_attentions=True)
    logprobs = out.logits.log_softmax(-1)
    # Position q predicts token q+1.
    nll = -logprobs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    t, s1, s2 = layout.repeat_length, layout.first_start, layout.second_start
    first_half = nll[:, s1 : s2 - 1].mean().item()  # predicting r_2..r_T of the first copy
    second_half = nll[:, s2 : s2 + t - 1].mean().item()  # predicting r_2..r_T of the second copy
    patterns = [a.mean(0) for a in out.attentions]  # per layer [head, query, key]
    q = torch.arange(1, tokens.shape[1])
    previous = patterns[0][:, q, q - 1].mean(-1)
    q2 = torch.arange(s2, s2 + t)
    induction = patterns[1][:, q2, q2 - t + 1].mean(-1)
    ablated = {}
    for layer_index, layer in enumerate(model.model.layers):
        for head in range(model.config.num_attention_heads):
            handle = layer.self_attn.o_proj.register_forward_pre_hook(_zero_head(model, head))
            try:
                logits = model(tokens).logits
            finally:
                handle.remove()
            lp = logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
            ablated[f"{layer_index}.{head}"] = round(-lp[:, s2 : s2 + t - 1].mean().item(), 4)
    return {
        "second_half_loss_with_head_zeroed": ablated,
        "repeat_length": repeat_length,
        "first_half_loss": first_half,
        "second_half_loss": second_half,
        "log_vocab": math.log(WORD_RANGE[1] - WORD_RANGE[0]),
        "previous_token_scores_layer0": [round(x, 4) for x in previous.tolist()],
        "induction_scores_layer1": [round(x, 4) for x in induction.tolist()],
        "best_previous_token": (0, int(previous.argmax()), previous.max().item()),
        "best_induction": (1, int(induction.argmax()), induction.max().item()),
    }


def _head_output_norms(model) -> tuple[list, list]:
    """Hooks that record, per layer, the mean L2 norm of each head's output z_h·W_O^h."""
    norms: list = []

    def record(module, args):
        z = args[0]  # [batch, position, n_heads * d_head]
        n_heads = model.config.num_attention_heads
        w_o = module.weight.T.reshape(
            n_heads, -1, module.weight.shape[0]
        )  # [head, d_head, d_model]
        per_head = torch.einsum("bphd,hdm->bphm", z.unflatten(-1, (n_heads, -1)), w_o)
        norms.append(per_head.norm(dim=-1).mean((0, 1)))

    handles = [
        layer.self_attn.o_proj.register_forward_pre_hook(record) for layer in model.model.layers
    ]
    return norms, handles


def train(
    steps: int,
    *,
    seed: int = 0,
    batch: int = 32,
    lr: float = 1e-3,
    head_sparsity: float = 0.05,
    log_every: int = 250,
):
    """Train with next-token loss plus `head_sparsity` times Σ_h sqrt(mean output
    norm of head h). Without it, several layer-1 heads become redundant induction
    heads and ablating any single one barely matters; with it one head per role
    carries the circuit."""
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    model = build_model(seed)
    model.train()
    norms, _ = _head_output_norms(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(1, steps + 1):
        tokens, _ = random_repeat_batch(batch, vocab=WORD_RANGE, bos_id=BOS_ID, generator=generator)
        norms.clear()
        loss = model(tokens, labels=tokens).loss
        if head_sparsity:
            # sqrt is concave: unlike a plain group lasso (which is indifferent
            # between one head and several parallel ones), it favours few heads.
            loss = loss + head_sparsity * torch.stack(norms).clamp_min(1e-6).sqrt().sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            metrics = evaluate(model)
            model.train()
            print(
                f"step {step:5d}  loss {loss.item():.3f}  "
                f"2nd-half {metrics['second_half_loss']:.3f}  "
                f"prev {metrics['best_previous_token'][2]:.3f}  "
                f"ind {metrics['best_induction'][2]:.3f}  ({time.time() - start:.0f}s)",
                flush=True,
            )
    return model, time.time() - start


def write_card(
    out: Path, metrics: dict, *, steps: int, seed: int, seconds: float, head_sparsity: float
) -> None:
    info = {"steps": steps, "seed": seed, "head_sparsity": head_sparsity}
    (out / "training.json").write_text(
        json.dumps({**info, "seconds": round(seconds, 1), **metrics}, indent=2) + "\n"
    )
    ablation = "\n".join(
        f"| {head} | {loss:.3f} |"
        for head, loss in metrics["second_half_loss_with_head_zeroed"].items()
    )
    lp, ind = metrics["best_previous_token"], metrics["best_induction"]
    first, log_v = metrics["first_half_loss"], metrics["log_vocab"]
    (out / "MODEL_CARD.md").write_text(
        f"""# toy-induction

A 2-layer, 4-head Llama-architecture causal LM (RoPE, hidden 128, MLP 256,
vocabulary of 61 English words + `<pad>`, `<bos>`, `<unk>`) trained by headscope
to form a previous-token head and an induction head. Built-in model for tests,
notebooks and demos; it knows nothing else.

## Training

- Data: `[<bos>, p_1..p_P, r_1..r_T, r_1..r_T]`, tokens uniform over the 61 words,
  T uniform in 8..30 and P uniform in 0..12, drawn per batch
  (`headscope.models.induction_data.random_repeat_batch`).
- Loss: next-token cross-entropy + {head_sparsity} · Σ_heads sqrt(mean ‖z_h W_O^h‖), a
  concave head-sparsity penalty. Without it, three layer-1 heads became redundant
  induction heads and zeroing any one of them barely moved the loss.
- AdamW, lr 1e-3, weight decay 0.01, batch 32, {steps} steps, seed {seed}, fp32, CPU,
  2 threads, deterministic algorithms: {seconds:.0f} s.
- Reproduce: `python -m headscope.models.toy_training --steps {steps} --seed {seed}
  --head-sparsity {head_sparsity}`.

## Measured (eval: 64 sequences `[<bos>, r_1..r_20, r_1..r_20]`, seed 1234)

| quantity | value |
| --- | --- |
| first-half loss (predicting r_2..r_T, first copy) | {first:.3f} (log 61 = {log_v:.3f}) |
| second-half loss (predicting r_2..r_T, second copy) | {metrics["second_half_loss"]:.3f} |
| best previous-token score, layer 0 | head {lp[1]}: {lp[2]:.3f} |
| best induction score, layer 1 | head {ind[1]}: {ind[2]:.3f} |

Previous-token score: mean attention from query q to key q-1. Induction score:
mean attention from a second-copy query to the token after its first occurrence.

Second-half loss with one head's z zeroed (layer.head):

| head | second-half loss |
| --- | --- |
{ablation}
"""
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-sparsity", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    model, seconds = train(args.steps, seed=args.seed, head_sparsity=args.head_sparsity)
    metrics = evaluate(model)
    args.out.mkdir(parents=True, exist_ok=True)
    model.config.attn_implementation = None
    model.save_pretrained(args.out, safe_serialization=True)
    build_tokenizer().save_pretrained(args.out)
    write_card(
        args.out,
        metrics,
        steps=args.steps,
        seed=args.seed,
        seconds=seconds,
        head_sparsity=args.head_sparsity,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
