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

Checkpoints (docs/methods.md §2.13): `--checkpoint-steps 0,100,... --checkpoint-dir DIR`
saves a `save_pretrained` directory (fp32 safetensors, config, tokenizer) per
step under `DIR/step{N}`; `--trace-every 25` logs `trace_metrics` (the
previous-token scores of layer 0, the induction scores of layer 1 and the
in-context loss, second-copy minus first-copy loss) to `DIR/trace.json`.
Neither changes the training run: evaluation draws from its own generator and
the model has no dropout. `pack_checkpoints` turns such
directories into the compact shipped series (fp16 weights only, sharing the
built-in's config and tokenizer):

    python -m headscope.models.toy_training --checkpoint-steps 0,400,550,650,800,1200,3000 \
        --checkpoint-dir /tmp/toy-ckpt --trace-every 25 --out /tmp/toy-final
    python -m headscope.models.toy_training --pack /tmp/toy-ckpt
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from headscope.errors import InputError
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
CHECKPOINTS_OUT = Path(__file__).resolve().parent / "builtin" / "toy-induction-checkpoints"

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


@torch.no_grad()
def trace_metrics(model, *, repeat_length: int = 20, batch: int = 64, seed: int = 1234) -> dict:
    """The training-dynamics trace on `evaluate`'s set (same seed, no ablations):
    first- and second-copy loss, the in-context loss (second minus first: late
    minus early in the context, Olsson et al. 2022), and the previous-token
    (layer 0) and induction (layer 1) score of every head."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    tokens, layout = repeated_random_batch(
        batch, repeat_length, vocab=WORD_RANGE, bos_id=BOS_ID, generator=generator
    )
    out = model(tokens, output_attentions=True)
    nll = -out.logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    t, s1, s2 = layout.repeat_length, layout.first_start, layout.second_start
    first = nll[:, s1 : s2 - 1].mean().item()
    second = nll[:, s2 : s2 + t - 1].mean().item()
    patterns = [a.mean(0) for a in out.attentions]
    q = torch.arange(1, tokens.shape[1])
    q2 = torch.arange(s2, s2 + t)
    model.train(was_training)
    return {
        "first_half_loss": round(first, 4),
        "second_half_loss": round(second, 4),
        "in_context_loss": round(second - first, 4),
        "previous_token_scores_layer0": [
            round(x, 4) for x in patterns[0][:, q, q - 1].mean(-1).tolist()
        ],
        "induction_scores_layer1": [
            round(x, 4) for x in patterns[1][:, q2, q2 - t + 1].mean(-1).tolist()
        ],
    }


def save_checkpoint(model, directory: Path) -> None:
    """A `save_pretrained` directory (fp32 safetensors, config, tokenizer) of a
    copy of `model`, so the model being trained is left untouched."""
    snapshot = copy.deepcopy(model)
    snapshot.config.attn_implementation = None
    directory.mkdir(parents=True, exist_ok=True)
    snapshot.save_pretrained(directory, safe_serialization=True)
    build_tokenizer().save_pretrained(directory)


def train(
    steps: int,
    *,
    seed: int = 0,
    batch: int = 32,
    lr: float = 1e-3,
    head_sparsity: float = 0.05,
    log_every: int = 250,
    checkpoint_steps: Sequence[int] = (),
    checkpoint_dir: Path | None = None,
    trace_every: int | None = None,
    threads: int = 2,
):
    """Train with next-token loss plus `head_sparsity` times Σ_h sqrt(mean output
    norm of head h). Without it, several layer-1 heads become redundant induction
    heads and ablating any single one barely matters; with it one head per role
    carries the circuit.

    `checkpoint_steps` (0 = the initialisation) are saved as
    `checkpoint_dir/step{N}` (`save_checkpoint`); with `trace_every`,
    `trace_metrics` every that many steps goes to `checkpoint_dir/trace.json`.
    Neither changes the weights the run ends with. `threads`: torch's CPU
    threads (the shipped model used 2; a different count may reorder float
    reductions)."""
    wanted = sorted(set(checkpoint_steps))
    if wanted and (wanted[0] < 0 or wanted[-1] > steps):
        raise InputError(f"checkpoint steps must lie in 0..{steps}, got {wanted}")
    if (wanted or trace_every) and checkpoint_dir is None:
        raise InputError("checkpoint_steps and trace_every need a checkpoint_dir")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    model = build_model(seed)
    model.train()
    norms, _ = _head_output_norms(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    trace: list[dict] = []

    def checkpoint(step: int) -> None:
        if step in wanted:
            save_checkpoint(model, checkpoint_dir / f"step{step}")
        if trace_every and (step % trace_every == 0 or step == steps or step in wanted):
            trace.append({"step": step, **trace_metrics(model)})
            (checkpoint_dir / "trace.json").write_text(json.dumps(trace, indent=1) + "\n")

    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        checkpoint(0)
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
        if checkpoint_dir is not None:
            checkpoint(step)
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


def _steps(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def pack_checkpoints(source: Path, out: Path = CHECKPOINTS_OUT, *, base: str = "toy-induction"):
    """Pack `source/step{N}` directories (from `train(checkpoint_dir=source)`)
    into the compact series that `headscope.load_checkpoints(base)` reads:
    `out/step{N}.safetensors` holding the weights only, in float16 (about 0.7 MB
    each for toy-induction), and `checkpoints.json` naming the steps and the
    built-in whose config and tokenizer they share. A step whose weights equal
    the built-in's bit for bit is listed as `base` instead of stored again.
    `source/trace.json`, when present, is copied beside them."""
    from safetensors.torch import load_file, save_file

    from headscope.models.zoo import BUILTINS

    base_weights = load_file(BUILTINS[base].path() / "model.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for directory in sorted(source.glob("step*"), key=lambda d: int(d.name[4:])):
        step = int(directory.name[4:])
        weights = load_file(directory / "model.safetensors")
        same = weights.keys() == base_weights.keys() and all(
            torch.equal(weights[k], base_weights[k]) for k in weights
        )
        if same:
            entries.append({"step": step, "weights": "base"})
            continue
        name = f"step{step}.safetensors"
        half = {k: v.to(torch.float16).contiguous() for k, v in weights.items()}
        save_file(half, out / name, metadata={"step": str(step), "dtype": "float16"})
        entries.append({"step": step, "weights": name})
    manifest = {"base": base, "dtype": "float16", "checkpoints": entries}
    (out / "checkpoints.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if (source / "trace.json").is_file():
        (out / "trace.json").write_text((source / "trace.json").read_text())
    print(json.dumps(manifest, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-sparsity", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--checkpoint-steps",
        type=_steps,
        default=(),
        help="comma-separated steps to save (0 = initialisation) under --checkpoint-dir",
    )
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    parser.add_argument(
        "--trace-every", type=int, default=None, help="log trace_metrics every N steps"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--pack",
        type=Path,
        default=None,
        metavar="DIR",
        help="pack DIR's step* checkpoints into --pack-out (fp16 weights only) and exit",
    )
    parser.add_argument("--pack-out", type=Path, default=CHECKPOINTS_OUT)
    args = parser.parse_args(argv)
    if args.pack is not None:
        pack_checkpoints(args.pack, args.pack_out)
        return
    model, seconds = train(
        args.steps,
        seed=args.seed,
        head_sparsity=args.head_sparsity,
        checkpoint_steps=args.checkpoint_steps,
        checkpoint_dir=args.checkpoint_dir,
        trace_every=args.trace_every,
        threads=args.threads,
    )
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
