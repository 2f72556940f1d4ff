"""Train the built-in `toy-vit` model (deterministic, CPU, a few minutes on 1 thread).

    python -m headscope.models.vit_training   # writes headscope/models/builtin/toy-vit

A Hugging Face `ViTForImageClassification` (16×16 grayscale images, 2×2
patches so an 8×8 patch grid, 3 layers, 4 heads, hidden 64, MLP 128, 10
classes) trained on `vit_data`: a scikit-learn 8×8 digit in one quadrant of a
16×16 canvas, shuffled dimmed digits in the other three. Training canvases are
redrawn every epoch; the held-out test split (360 digits never trained on) is
fixed. Writes a `save_pretrained` directory (fp32 safetensors, config with the
digit labels), a ViT `preprocessor_config.json` (resize to 16×16, pixel values
in [0, 1] normalised with mean 0.5, std 0.5), `training.json` and `MODEL_CARD.md`.
CI never retrains: the weights ship in the package.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from headscope.models import vit_data

DEFAULT_OUT = Path(__file__).resolve().parent / "builtin" / "toy-vit"
PATCH_SIZE = 2
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def build_model(seed: int = 0):
    """The untrained toy-vit (seeded)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=vit_data.IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
        id2label={i: str(i) for i in range(10)},
        label2id={str(i): i for i in range(10)},
    )
    return ViTForImageClassification(config)


def pixel_values(canvases: torch.Tensor) -> torch.Tensor:
    """`[image, 16, 16]` in [0, 1] -> normalised `[image, 1, 16, 16]`, as the
    shipped preprocessor config does."""
    return ((canvases - PIXEL_MEAN) / PIXEL_STD)[:, None]


def preprocessor_config() -> dict:
    """A Hugging Face ViT image-processor config matching `pixel_values`."""
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": vit_data.IMAGE_SIZE, "width": vit_data.IMAGE_SIZE},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [PIXEL_MEAN],
        "image_std": [PIXEL_STD],
    }


@torch.no_grad()
def accuracy(model, canvases: vit_data.DigitCanvases) -> float:
    """Top-1 accuracy of `model` on `canvases`."""
    model.eval()
    logits = model(pixel_values=pixel_values(canvases.images)).logits
    return float((logits.argmax(-1) == canvases.labels).float().mean())


def train(epochs: int = 80, *, seed: int = 0, batch: int = 128, lr: float = 2e-3, threads: int = 1):
    """AdamW with a linear warm-up (5% of steps) and cosine decay, cross-entropy,
    fresh canvases every epoch. Returns (model, log)."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    model = build_model(seed)
    digit_images, labels = vit_data.train_digits()
    test = vit_data.test_split()
    generator = torch.Generator().manual_seed(seed + 100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    per_epoch = math.ceil(len(labels) / batch)
    total = epochs * per_epoch
    warmup = max(1, total // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    log = []
    start = time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        canvases = vit_data.draw(digit_images, labels, digit_images, generator)
        order = torch.randperm(len(labels), generator=generator)
        total_loss = 0.0
        for first in range(0, len(order), batch):
            rows = order[first : first + batch]
            out = model(pixel_values=pixel_values(canvases.images[rows]), labels=labels[rows])
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(out.loss) * len(rows)
        if epoch % 10 == 0 or epoch == epochs:
            entry = {
                "epoch": epoch,
                "train_loss": round(total_loss / len(order), 4),
                "test_accuracy": round(accuracy(model, test), 4),
                "seconds": round(time.time() - start, 1),
            }
            log.append(entry)
            print(json.dumps(entry), flush=True)
    return model.eval(), {"seconds": round(time.time() - start, 1), "log": log}


def save(model, out: Path, info: dict) -> None:
    """The save_pretrained directory, the preprocessor config, training.json, MODEL_CARD.md."""
    out.mkdir(parents=True, exist_ok=True)
    model.config.attn_implementation = None
    model.save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(card(info))


def card(info: dict) -> str:
    return f"""# toy-vit

A 3-layer, 4-head Hugging Face ViT (`ViTForImageClassification`, hidden 64,
MLP 128, 16×16 grayscale input, 2×2 patches: an 8×8 patch grid, 64 patch
tokens plus [CLS]) trained by headscope to classify digits. Built-in model for
tests, notebooks and demos of the vision views; it knows nothing else.

## Data (`headscope.models.vit_data`)

- scikit-learn's bundled 8×8 digits (1797), split once with seed 0: 1437
  training digits, 360 held-out test digits.
- Each image is a 16×16 canvas: the digit in one quadrant (uniform), the
  other three quadrants hold digits of the same split with their pixels
  shuffled, at half the ink. Only the digit's quadrant decides the class.
  Ink is bright (1.0) on a dark (0.0) background: invert dark-on-light images.
- Pixel values in [0, 1], normalised with mean 0.5, std 0.5
  (`preprocessor_config.json`).

## Training

- Cross-entropy, AdamW (lr {info["lr"]}, weight decay 0.05), batch {info["batch"]},
  {info["epochs"]} epochs with fresh canvases each epoch, 5% linear warm-up then
  cosine decay, seed {info["seed"]}, fp32, CPU, {info["threads"]} thread(s),
  deterministic algorithms: {info["seconds"]} s.
- Reproduce: `python -m headscope.models.vit_training --epochs {info["epochs"]}
  --seed {info["seed"]} --threads {info["threads"]}`.

## Measured

| quantity | value |
| --- | --- |
| test accuracy (360 held-out digits, canvases of `vit_data.test_split()`) \
| {info["test_accuracy"]:.4f} |
| training accuracy (last epoch's canvases) | {info["train_accuracy"]:.4f} |
| chance | 0.1 |
| parameters | {info["parameters"]} |
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    model, result = train(
        args.epochs, seed=args.seed, batch=args.batch, lr=args.lr, threads=args.threads
    )
    digit_images, labels = vit_data.train_digits()
    train_canvases = vit_data.draw(
        digit_images, labels, digit_images, torch.Generator().manual_seed(args.seed + 200)
    )
    info = {
        "epochs": args.epochs,
        "seed": args.seed,
        "batch": args.batch,
        "lr": args.lr,
        "threads": args.threads,
        "seconds": result["seconds"],
        "test_accuracy": round(accuracy(model, vit_data.test_split()), 4),
        "train_accuracy": round(accuracy(model, train_canvases), 4),
        "n_test": vit_data.N_TEST,
        "parameters": sum(p.numel() for p in model.parameters()),
        "log": result["log"],
    }
    save(model, args.out, info)
    print(json.dumps({k: v for k, v in info.items() if k != "log"}))


if __name__ == "__main__":
    main()
