"""Benchmark: single-head zero-ablation of every head, headscope vs a transformer-lens loop.

    .venv/bin/python benchmarks/heads.py            # writes benchmarks/results/heads.json
    .venv/bin/python benchmarks/heads.py --quick    # skips the "batching only" row

Model: a random-init GPT-2 configuration with 12 layers, 12 heads, d_model 768
(GPT-2 small without its 50k vocabulary: a 100-token word-level tokenizer),
built in-process and loaded through `headscope.load_model` from a temporary
`save_pretrained` directory; no download. Prompts: 8 random sequences of 128
tokens. Metric: mean next-token loss per prompt over all positions.

- peer: one `bridge.run_with_hooks` forward per head (144) plus one clean
  forward, each with a hook on `blocks.{l}.attn.hook_z` that zeroes head h.
- headscope: `ablation_scores(..., mode="zero")`: many masks per forward, and
  the layers below the ablated layer run once per chunk instead of once per
  mask (`reuse_lower_layers`).
- headscope, batching only: the same with `reuse_lower_layers=False`.

The scores must agree within 1e-4. Also timed: `gradient_importance` and
`causal_head_gating` with one seed and a few steps per phase. One run each,
2 threads; the 1-minute load average is recorded because other processes on
a shared machine slow every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results" / "heads.json"
VOCAB = 100


def word_tokenizer():
    """The tests' tiny word-level tokenizer: <pad>, <bos>, <unk>, t3..t99."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        unk_token="<unk>",
        eos_token="<bos>",
    )


def build_model(directory: Path, layers: int, heads: int, width: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    import headscope as hs

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=layers,
        n_head=heads,
        n_embd=width,
        vocab_size=VOCAB,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=1,
    )
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    word_tokenizer().save_pretrained(directory)
    return hs.load_model(directory)


def per_prompt_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL per prompt over every position (written independently
    of headscope's metric, so that agreement checks both)."""
    logprobs = logits[:, :-1].float().log_softmax(-1)
    nll = -logprobs.gather(-1, ids[:, 1:, None])[..., 0]
    return nll.double().mean(1)


def peer_loop(model, ids: torch.Tensor) -> torch.Tensor:
    """One transformer-lens hooked forward per head."""
    bridge, spec = model.bridge, model.spec
    scores = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.float64)
    with torch.no_grad():
        clean = per_prompt_loss(bridge(ids), ids)
        for layer in range(spec.n_layers):
            for head in range(spec.n_heads):

                def zero_head(z, hook, head=head):
                    z = z.clone()
                    z[:, :, head] = 0
                    return z

                logits = bridge.run_with_hooks(
                    ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)]
                )
                scores[layer, head] = (per_prompt_loss(logits, ids) - clean).mean()
    return scores


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chg-steps", type=int, default=3, help="CHG steps per phase")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="skip the batching-only row")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from headscope.experiments.ablation import ablation_scores
    from headscope.experiments.gating import causal_head_gating
    from headscope.experiments.gradients import gradient_importance

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp), args.layers, args.heads, args.width)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (args.prompts, args.tokens), generator=generator)
    with torch.no_grad():
        model.forward(model.tokenize(ids[:1]))  # warm-up: first-call allocations

    rows = []
    load_before = os.getloadavg()[0]
    peer, peer_s = timed(lambda: peer_loop(model, ids))
    rows.append(
        ("transformer-lens loop (1 forward per head)", peer_s, args.layers * args.heads + 1)
    )
    ours, ours_s = timed(
        lambda: ablation_scores(model, ids, metric="loss", batch_size=args.batch_size)
    )
    rows.append(("headscope ablation_scores", ours_s, None))
    difference = float((ours - peer).abs().max())
    batched_s = None
    if not args.quick:
        batched, batched_s = timed(
            lambda: ablation_scores(
                model, ids, metric="loss", batch_size=args.batch_size, reuse_lower_layers=False
            )
        )
        difference = max(difference, float((batched - peer).abs().max()))
        rows.append(("headscope, batching only (reuse_lower_layers=False)", batched_s, None))
    _, gradient_s = timed(lambda: gradient_importance(model, ids, batch_size=args.prompts))
    rows.append(("headscope gradient_importance (1 fwd+bwd)", gradient_s, None))
    _, chg_s = timed(
        lambda: causal_head_gating(
            model,
            ids,
            seeds=1,
            steps=args.chg_steps,
            batch_size=2 * args.prompts,
            progress=False,
        )
    )
    rows.append(
        (
            f"headscope causal_head_gating (1 seed, {args.chg_steps}+{args.chg_steps} steps)",
            chg_s,
            None,
        )
    )
    load_after = os.getloadavg()[0]
    assert difference < 1e-4, f"headscope and the transformer-lens loop differ by {difference}"

    result = {
        "benchmark": "single-head zero ablation of every head",
        "model": {
            "architecture": "GPT2LMHeadModel (random init)",
            "layers": args.layers,
            "heads": args.heads,
            "d_model": args.width,
            "d_vocab": VOCAB,
        },
        "prompts": args.prompts,
        "tokens": args.tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "seconds": {
            "transformer_lens_loop": peer_s,
            "headscope_ablation_scores": ours_s,
            "headscope_batching_only": batched_s,
            "headscope_gradient_importance": gradient_s,
            "headscope_chg_one_seed": chg_s,
        },
        "chg_steps_per_phase": args.chg_steps,
        "speedup_vs_loop": peer_s / ours_s,
        "speedup_batching_only": None if batched_s is None else peer_s / batched_s,
        "max_abs_difference": difference,
        "top_head_peer": [int(i) for i in divmod(int(peer.argmax()), args.heads)],
        "load_average_1min": [load_before, load_after],
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    width = max(len(name) for name, _, _ in rows)
    print(f"{'method':<{width}}  {'seconds':>8}  {'vs loop':>8}")
    for name, seconds, _ in rows:
        print(f"{name:<{width}}  {seconds:8.1f}  {peer_s / seconds:7.2f}x")
    print(f"max |difference| headscope vs loop: {difference:.2e}")
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
