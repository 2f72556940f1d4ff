"""Many head interventions per forward: the engine behind ablation, pruning,
patching and gating.

A *setting* is one intervention: an amount `a[layer, head]` in [0, 1] per head,
moving each head's z towards a source, z ← z + a·(z_source − z). The source is
zero (ablation; then z ← (1 − a)·z), a reference prompt's z (resample), a mean
(mean ablation) or the clean run's z (activation patching).

`evaluate_settings` scores every setting on every prompt. The prompts are
repeated once per setting, each row carrying its own amounts, and the rows are
chunked to `batch_size` sequences. Layers below a setting's first intervened
layer compute the same thing for every setting, so they run once on the plain
prompts and the batch is tiled on entering that layer (`tile_from_layer`;
exact, and it falls back to repeating the prompts from the start where an
architecture passes batch-sized state the tiling does not reach).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel, ModelOutput
from headscope.models.tokens import TokenBatch
from headscope.probes.run import Edit, run
from headscope.probes.sites import Site


class Scorer(Protocol):
    """What the engine evaluates: one value per row of a forward's batch.

    `rows[i]` is the original prompt of row i; `group` > 1 means prompts come
    in consecutive groups that must be evaluated together (e.g. paraphrase
    pairs); `needs_embedding` asks the forward for the sentence embedding.
    `headscope.experiments.metrics.Metric` is one."""

    group: int
    needs_embedding: bool

    def __call__(
        self, output: ModelOutput, batch: TokenBatch, rows: Int[Tensor, " row"] | None = None
    ) -> Float[Tensor, " row"]: ...


@dataclass(frozen=True)
class Source:
    """What an intervened z moves towards: zeros (`zs` None), or, for setting s
    and prompt b, `zs[layer][index[s, b]]` (a reference prompt's z, a mean, or
    the clean run's z). Each `zs[layer]` is `[source, position, head, d_head]`."""

    zs: list[Tensor] | None = None
    index: Int[Tensor, "setting prompt"] | None = None


@dataclass
class Sharing:
    """Whether layers below the first intervened layer may run once per chunk
    (switched off for the rest of a job once an architecture refuses)."""

    enabled: bool = True


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")


def prompt_chunks(size: int, chunk: int, group: int) -> list[Int[Tensor, " prompt"]]:
    """Consecutive prompt index ranges of at most `chunk` prompts, whole groups each."""
    chunk = max(group, chunk // group * group)
    return [torch.arange(i, min(i + chunk, size)) for i in range(0, size, chunk)]


def blend_edits(
    n_layers: int,
    amounts: Float[Tensor, "row layer head"],
    source: Source,
    setting_rows: Int[Tensor, " row"],
    prompt_rows: Int[Tensor, " row"],
) -> dict[Site, Edit]:
    """z ← z + a·(z_source − z) per row and head, on the layers where some
    amount is nonzero. With a zero source this is a gate 1 − a; with the
    clean z it is activation patching."""
    edits: dict[Site, Edit] = {}
    for layer in range(n_layers):
        amount = amounts[:, layer]
        if not bool((amount != 0).any()):
            continue

        def edit(z: Tensor, layer: int = layer, amount: Tensor = amount) -> Tensor:
            if z.shape[0] != amount.shape[0]:
                raise RuntimeError(
                    f"layer {layer}: z has {z.shape[0]} rows, the settings {amount.shape[0]}"
                )
            a = amount.to(z.device, z.dtype)[:, None, :, None]
            if source.zs is None:
                return z - a * z
            assert source.index is not None
            pick = source.index[setting_rows, prompt_rows]
            target = source.zs[layer][pick.to(source.zs[layer].device), : z.shape[1]]
            return z + a * (target.to(z.device, z.dtype) - z)

        edits[Site(layer, "z")] = edit
    return edits


def _tile_value(value: Any, size: int, copies: int) -> Any:
    if isinstance(value, Tensor) and value.dim() >= 2 and value.shape[0] == size:
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_tile_value(v, size, copies) for v in value)
    if isinstance(value, list):
        return [_tile_value(v, size, copies) for v in value]
    return value


@contextmanager
def tile_from_layer(model: HeadscopeModel, start: int, copies: int) -> Iterator[None]:
    """From block `start` on, run `copies` tiled copies of the batch (row
    i·size + j is copy i of prompt j): the hidden state entering `start` and
    every batch-sized tensor handed to later blocks (attention masks, rotary
    tables) are repeated. Blocks below `start` run once, at the original size.
    A tensor of the wrong size left untiled fails loudly (no silent broadcast
    unless the original batch has one row, where broadcasting is exact).

    This patches block inputs (torch pre-forward hooks on the bridge's blocks),
    not a `Site`: it changes the batch size, which no activation edit can."""
    blocks = model.bridge.blocks
    state: dict[str, int] = {}

    def tiling(index: int):
        def tile(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if index == start:
                hidden = args[0] if args else kwargs["hidden_states"]
                state["size"] = int(hidden.shape[0])
            size = state["size"]
            tiled_args = tuple(_tile_value(a, size, copies) for a in args)
            tiled_kwargs = {k: _tile_value(v, size, copies) for k, v in kwargs.items()}
            return tiled_args, tiled_kwargs

        return tile

    handles = [
        blocks[i].register_forward_pre_hook(tiling(i), with_kwargs=True)
        for i in range(start, len(blocks))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _first_layer(amounts: Float[Tensor, "setting layer head"]) -> list[int | None]:
    active = (amounts != 0).any(-1)  # [setting, layer]
    return [int(row.nonzero()[0]) if bool(row.any()) else None for row in active]


def plan(
    amounts: Float[Tensor, "setting layer head"], size: int, group: int, batch_size: int
) -> list[tuple[int | None, list[int], Int[Tensor, " prompt"]]]:
    """(first layer, settings, prompts) per forward: settings grouped by their
    first intervened layer, as many settings per forward as fit (the shared
    lower layers then run on few prompts)."""
    starts = _first_layer(amounts)
    groups: dict[int | None, list[int]] = {}
    for index, start in enumerate(starts):
        groups.setdefault(start, []).append(index)
    steps = []
    for start in sorted(groups, key=lambda s: -1 if s is None else s):
        members = groups[start]
        copies = max(1, min(len(members), batch_size // group))
        per_forward = max(group, batch_size // copies)
        chunks = prompt_chunks(size, per_forward, group)
        for i in range(0, len(members), copies):
            for prompt_chunk in chunks:
                steps.append((start, members[i : i + copies], prompt_chunk))
    return steps


def evaluate_settings(
    model: HeadscopeModel,
    batch: TokenBatch,
    scorer: Scorer,
    amounts: Float[Tensor, "setting layer head"],
    source: Source,
    *,
    batch_size: int,
    sharing: Sharing | None = None,
    on_step: Callable[[], None] | None = None,
) -> Float[Tensor, "setting prompt"]:
    """The scorer under every setting for every prompt, without gradients
    (float64).

    Settings that first intervene at the same layer are evaluated together:
    `copies` settings × `p` prompts per forward (≤ batch_size rows, p ≥ the
    scorer's group). `on_step()` is called after each forward (`len(plan(...))`
    of them). Memory: one forward of batch_size sequences (logits
    batch_size·N·d_vocab floats) plus the source z.
    """
    sharing = Sharing() if sharing is None else sharing
    n_settings, size = amounts.shape[0], batch.batch_size
    values = torch.empty(n_settings, size, dtype=torch.float64)
    n_layers = model.spec.n_layers
    for start, settings, prompt_chunk in plan(amounts, size, scorer.group, batch_size):
        copies = len(settings)
        setting_ids = torch.tensor(settings)
        prompt_rows = prompt_chunk.repeat(copies)
        setting_rows = setting_ids.repeat_interleave(len(prompt_chunk))
        row_amounts = amounts[setting_ids].repeat_interleave(len(prompt_chunk), 0)
        tiled = batch.select(prompt_rows)
        edits = blend_edits(n_layers, row_amounts, source, setting_rows, prompt_rows)
        output = None
        with torch.no_grad():
            if sharing.enabled and copies > 1 and start and not scorer.needs_embedding:
                try:
                    with tile_from_layer(model, start, copies):
                        output = run(model, batch.select(prompt_chunk), edit=edits).output
                    if output is None or output.logits.shape[0] != len(prompt_rows):
                        raise RuntimeError("the tiled forward returned the wrong batch size")
                except (RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError):
                    # This architecture passes some batch-sized state that the
                    # tiling did not reach: repeat the prompts from the start.
                    sharing.enabled = False
                    output = None
            if output is None:
                output = run(model, tiled, edit=edits, embedding=scorer.needs_embedding).output
            assert output is not None
            chunk_values = scorer(output, tiled, prompt_rows).double().cpu()
        values[setting_rows, prompt_rows] = chunk_values
        if on_step is not None:
            on_step()
    return values


def clean_values(
    model: HeadscopeModel, batch: TokenBatch, scorer: Scorer, batch_size: int
) -> Float[Tensor, " prompt"]:
    """The scorer on the unmodified model, per prompt (float64)."""
    values = []
    with torch.no_grad():
        for rows in prompt_chunks(batch.batch_size, batch_size, scorer.group):
            sub = batch.select(rows)
            output = run(model, sub, embedding=scorer.needs_embedding).output
            assert output is not None
            values.append(scorer(output, sub, rows).double().cpu())
    return torch.cat(values)
