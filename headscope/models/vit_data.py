"""The `toy-vit` data: scikit-learn's bundled 8×8 digits, each placed in one
quadrant of a 16×16 canvas whose other three quadrants hold distractors.

Only the quadrant holding the digit decides the class; the distractors are the
pixels of other digits of the same split, shuffled (the same ink statistics, no
stroke shape) and dimmed. That makes the region that decides the class known
for every image, which the relevance known answer needs (docs/methods.md §7).
Pixel values lie in [0, 1] with ink bright (1) on a dark (0) background.

Splits are fixed: the 1797 digits are permuted with seed 0; the first 1437 are
the training digits, the last 360 the held-out test digits. The test canvases
(quadrants and distractors) are drawn once with `TEST_SEED`, so every call of
`test_split()` returns the same images; training canvases are redrawn every
epoch from the training generator (augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.errors import MissingExtraError

IMAGE_SIZE = 16
DIGIT_SIZE = 8
QUADRANTS = 4
N_TEST = 360
SPLIT_SEED = 0
TEST_SEED = 1
#: Distractor ink relative to the digit's.
DISTRACTOR_SCALE = 0.5


@dataclass(frozen=True)
class DigitCanvases:
    """Canvases `[image, 16, 16]` in [0, 1], their digit labels, and the quadrant
    (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) holding the digit."""

    images: Float[Tensor, "image height width"]
    labels: Int[Tensor, " image"]
    quadrants: Int[Tensor, " image"]


def digits() -> tuple[Float[Tensor, "digit 8 8"], Int[Tensor, " digit"]]:
    """scikit-learn's 1797 digits scaled to [0, 1] (from 0..16), and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise MissingExtraError(
            "the toy-vit data needs scikit-learn (its bundled digits): pip install scikit-learn"
        ) from error
    data = load_digits()
    images = torch.as_tensor(data.images, dtype=torch.float32) / 16.0
    return images, torch.as_tensor(data.target, dtype=torch.long)


def split() -> tuple[Int[Tensor, " train"], Int[Tensor, " test"]]:
    """Indices of the training and the held-out test digits (fixed, seed 0)."""
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[:-N_TEST], order[-N_TEST:]


def quadrant_slices(quadrant: int) -> tuple[slice, slice]:
    """(rows, columns) of a quadrant of the 16×16 canvas."""
    row, col = divmod(quadrant, 2)
    return (
        slice(row * DIGIT_SIZE, (row + 1) * DIGIT_SIZE),
        slice(col * DIGIT_SIZE, (col + 1) * DIGIT_SIZE),
    )


def place(
    digit_images: Float[Tensor, "image 8 8"],
    quadrants: Int[Tensor, " image"],
    distractors: Float[Tensor, "image 3 8 8"],
) -> Float[Tensor, "image 16 16"]:
    """Canvases with each digit in its quadrant and the distractors, in order,
    in the other three."""
    canvases = torch.zeros(len(digit_images), IMAGE_SIZE, IMAGE_SIZE)
    for i, (digit, quadrant) in enumerate(zip(digit_images, quadrants.tolist(), strict=True)):
        others = [q for q in range(QUADRANTS) if q != quadrant]
        rows, cols = quadrant_slices(quadrant)
        canvases[i, rows, cols] = digit
        for k, other in enumerate(others):
            rows, cols = quadrant_slices(other)
            canvases[i, rows, cols] = distractors[i, k]
    return canvases


def draw(
    digit_images: Float[Tensor, "image 8 8"],
    labels: Int[Tensor, " image"],
    pool: Float[Tensor, "pool 8 8"],
    generator: torch.Generator,
) -> DigitCanvases:
    """Random canvases: a uniform quadrant per digit; distractors are digits of
    `pool` with their 64 pixels shuffled, times `DISTRACTOR_SCALE`."""
    n = len(digit_images)
    quadrants = torch.randint(QUADRANTS, (n,), generator=generator)
    picks = torch.randint(len(pool), (n, 3), generator=generator)
    flat = pool[picks].reshape(n, 3, DIGIT_SIZE * DIGIT_SIZE)
    shuffle = torch.rand(n, 3, DIGIT_SIZE * DIGIT_SIZE, generator=generator).argsort(-1)
    distractors = flat.gather(-1, shuffle).reshape(n, 3, DIGIT_SIZE, DIGIT_SIZE)
    canvases = place(digit_images, quadrants, DISTRACTOR_SCALE * distractors)
    return DigitCanvases(canvases, labels, quadrants)


def test_split() -> DigitCanvases:
    """The 360 held-out test canvases (the same on every call)."""
    images, labels = digits()
    _, test = split()
    generator = torch.Generator().manual_seed(TEST_SEED)
    return draw(images[test], labels[test], images[test], generator)


def train_digits() -> tuple[Float[Tensor, "digit 8 8"], Int[Tensor, " digit"]]:
    """The 1437 training digits and their labels."""
    images, labels = digits()
    train, _ = split()
    return images[train], labels[train]
