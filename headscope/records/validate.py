"""What a record must satisfy, checked when it is built (cheap structure) and loaded (content).

Records are built by `capture` and read back from disk, where anything may have
been written; these checks make a bad record fail when it is loaded instead of
giving wrong numbers later. Each raises `FieldError` (an `InputError`) whose
`field` names the record field at fault, so that a loader can name the file
that holds it. Maps are checked with `headscope.validation.check_row_stochastic`,
the validator `analyses.checks.check_pattern` also uses, at its tolerance.
"""

from __future__ import annotations

import math
import os
import reprlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from headscope.errors import InputError, RecordFormatError
from headscope.models.spec import ModelSpec
from headscope.records.io import SIDECAR_FILE, TENSOR_FILE
from headscope.validation import check_row_stochastic

#: Tolerance of row sums and of [0, 1] ranges (that of `check_row_stochastic`).
ATOL = 1e-4


class FieldError(InputError):
    """A record field is malformed; `field` names it (a tensor or a sidecar entry)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@contextmanager
def fields_of(directory: str | os.PathLike, tensors: dict[str, Tensor]) -> Iterator[None]:
    """Turn the InputError of a record being loaded into a one-line RecordFormatError
    naming the file that holds the field at fault (the tensor file or the sidecar)."""
    root = Path(directory)
    try:
        yield
    except InputError as error:
        field = getattr(error, "field", None)
        path = root / (TENSOR_FILE if field in tensors else SIDECAR_FILE)
        raise RecordFormatError(f"{path}: {error}") from None
    except (TypeError, ValueError) as error:
        raise RecordFormatError(f"{root} is not a consistent record: {error}") from None


def tokens_from(tokens: list, batched: bool) -> tuple:
    """The sidecar's token lists as tuples (anything else is left for `check_tokens`)."""
    if not batched:
        return tuple(tokens)
    return tuple(tuple(row) if isinstance(row, list) else row for row in tokens)


def pairs_from(requested: list | None) -> tuple | None:
    if requested is None:
        return None
    return tuple(tuple(pair) if isinstance(pair, list) else pair for pair in requested)


def short(value: Any) -> str:
    """A repr short enough for a one-line message, whatever the record holds."""
    return reprlib.repr(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_type(value: Any, kind: type | tuple[type, ...], field: str, what: str) -> None:
    if not isinstance(value, kind):
        raise FieldError(field, f"{field} must be {what}, got {type(value).__name__}")


def check_index(values: Any, field: str, limit: int, unit: str) -> None:
    """A non-empty tuple of distinct ints in increasing order inside [0, limit)."""
    if not isinstance(values, tuple) or not values or not all(is_int(v) for v in values):
        raise FieldError(field, f"{field} must be a non-empty list of ints, got {short(values)}")
    if min(values) < 0:
        raise FieldError(field, f"{field} holds the negative index {min(values)}")
    seen: set[int] = set()
    for value in values:
        if value in seen:
            raise FieldError(field, f"{field} repeats the index {value}")
        seen.add(value)
    if list(values) != sorted(values):
        raise FieldError(field, f"{field} must be in increasing order, got {short(list(values))}")
    if values[-1] >= limit:
        raise FieldError(
            field, f"{field} holds {values[-1]}: indices exceed the model spec ({limit} {unit})"
        )


def check_lengths(lengths: Any, n_prompts: int, n: int) -> None:
    """Batched records: one int per prompt, each in [1, n]."""
    if not isinstance(lengths, tuple) or not all(is_int(v) for v in lengths):
        raise FieldError("lengths", f"lengths must be a list of ints, got {short(lengths)}")
    if len(lengths) != n_prompts:
        raise FieldError("lengths", f"lengths has {len(lengths)} entries for {n_prompts} prompts")
    bad = [v for v in lengths if not 1 <= v <= n]
    if bad:
        raise FieldError(
            "lengths", f"lengths holds {bad[0]}; each prompt has between 1 and {n} tokens"
        )


def check_tokens(tokens: Any, lengths: tuple[int, ...] | None, n: int) -> None:
    """Token strings: as many as the maps' positions (one tuple per prompt, unpadded)."""
    rows = (tokens,) if lengths is None else tokens
    counts = (n,) if lengths is None else lengths
    if not isinstance(tokens, tuple) or (lengths is not None and len(tokens) != len(lengths)):
        raise FieldError("tokens", "tokens must have one list of token strings per prompt")
    for index, (row, count) in enumerate(zip(rows, counts, strict=True)):
        where = "tokens" if lengths is None else f"tokens of prompt {index}"
        if not isinstance(row, tuple) or not all(isinstance(t, str) for t in row):
            raise FieldError("tokens", f"{where} must be a list of strings")
        if len(row) != count:
            raise FieldError(
                "tokens", f"{where} has {len(row)} token strings for {count} positions"
            )


def check_token_ids(token_ids: Any, spec: ModelSpec, shape: Sequence[int]) -> None:
    """Integer ids of the given shape, inside the model's vocabulary (for a
    vision model, whose tokens are [CLS] and patches: token positions, inside
    [0, n_ctx))."""
    check_type(token_ids, Tensor, "token_ids", "a tensor")
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise FieldError("token_ids", f"token_ids must be integers, got {token_ids.dtype}")
    if tuple(token_ids.shape) != tuple(shape):
        raise FieldError(
            "token_ids",
            f"token_ids has shape {tuple(token_ids.shape)}, expected {tuple(shape)}",
        )
    if spec.is_vision:
        limit, what = spec.n_ctx, "the token positions"
    else:
        limit, what = spec.d_vocab, "the vocabulary"
    if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= limit):
        bad = int(token_ids.min()) if int(token_ids.min()) < 0 else int(token_ids.max())
        raise FieldError("token_ids", f"token_ids holds {bad}, outside {what} [0, {limit})")


def check_texts(texts: tuple[str, ...] | None, n_prompts: int) -> None:
    if texts is not None and len(texts) != n_prompts:
        raise FieldError(
            "provenance", f"provenance.texts has {len(texts)} texts for {n_prompts} prompts"
        )


def check_requested(
    requested: Any, layer_index: tuple[int, ...], head_index: tuple[int, ...]
) -> None:
    """Distinct (layer, head) pairs inside the layer_index × head_index grid."""
    if requested is None:
        return
    if not isinstance(requested, tuple) or not requested:
        raise FieldError("requested", "requested must be null or a non-empty list of pairs")
    for pair in requested:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(is_int(v) for v in pair)):
            raise FieldError(
                "requested", f"requested holds {short(pair)}, not a (layer, head) pair"
            )
        if pair[0] not in layer_index or pair[1] not in head_index:
            raise FieldError(
                "requested",
                f"requested holds the head {pair}, outside the captured grid "
                f"(layers {short(list(layer_index))}, heads {short(list(head_index))})",
            )
    if len(set(requested)) != len(requested):
        raise FieldError("requested", "requested repeats a (layer, head) pair")


def check_maps(
    pattern: Tensor,
    lengths: tuple[int, ...] | None,
    layer_index: tuple[int, ...],
    head_index: tuple[int, ...],
    requested: tuple[tuple[int, int], ...] | None,
) -> None:
    """Every captured map: rows of real queries sum to 1 (finite, non-negative),
    padded query rows and key columns are 0. One layer of one prompt at a time,
    so the temporaries stay at one layer's size."""
    prompts = [(None, pattern)] if lengths is None else list(enumerate(pattern))
    n_total = pattern.shape[-1]
    wanted = set(requested) if requested is not None else None
    kept_heads = [
        [hi for hi, head in enumerate(head_index) if wanted is None or (layer, head) in wanted]
        for layer in layer_index
    ]
    for prompt, maps in prompts:
        n = n_total if prompt is None else lengths[prompt]
        for li, layer in enumerate(layer_index):
            heads = kept_heads[li]
            if not heads:
                continue
            kept = maps[li] if len(heads) == len(head_index) else maps[li, heads]
            where = f"layer {layer}" if prompt is None else f"prompt {prompt}, layer {layer}"
            try:
                check_row_stochastic(kept[:, :n, :n], name=f"pattern ({where})", min_dims=3)
            except InputError as error:
                raise FieldError("pattern", str(error)) from None
            if n < n_total and not (
                (kept[:, n:].abs() <= ATOL).all() and (kept[:, :n, n:].abs() <= ATOL).all()
            ):
                raise FieldError(
                    "pattern",
                    f"pattern ({where}) has attention on padding: positions from {n} on must be 0",
                )


def check_range(tensor: Tensor, field: str, low: float, high: float) -> None:
    """Finite values in [low, high]."""
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise FieldError(field, f"{field} contains NaN or infinite values")
    if tensor.numel() and (tensor.min() < low or tensor.max() > high):
        lo, hi = tensor.min().item(), tensor.max().item()
        raise FieldError(
            field, f"{field} has values in [{lo:.6g}, {hi:.6g}], outside [{low:.6g}, {high:.6g}]"
        )


def entropy_bound(n: int) -> float:
    return math.log(max(n, 1)) + ATOL
