"""capture(): run a model on prompts and keep per-head attention as a record."""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from headscope.errors import InputError
from headscope.kernels.tiled import TiledAttentionResult, default_query_tile
from headscope.models.loading import HeadscopeModel, Inputs
from headscope.models.memory import (
    MemoryEstimate,
    Part,
    capture_estimate,
    check_fits,
    format_bytes,
    largest_fitting,
    parse_size,
)
from headscope.models.tokens import TokenBatch
from headscope.probes.fast_attention import instrumented_attention
from headscope.probes.run import run
from headscope.probes.sites import Site
from headscope.records.attention import AttentionRecord
from headscope.records.provenance import Provenance
from headscope.records.stats import PER_HEAD as STATS_PER_HEAD
from headscope.records.stats import PER_QUERY as STATS_PER_QUERY
from headscope.records.stats import HeadStats
from headscope.records.store import DEFAULT_CHUNK as DEFAULT_STORE_CHUNK
from headscope.records.store import MapStore

HeadSelection = Sequence[int] | Sequence[tuple[int, int]] | None


def resolve_heads(
    spec: Any, layers: Sequence[int] | None, heads: HeadSelection
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...] | None]:
    """(layer_index, head_index, requested pairs) for a capture request.

    `heads` is None (all), a list of head indices (in every kept layer), or a
    list of (layer, head) pairs (the grid is their layers × their heads, and
    only the pairs are filled). Indices are whole numbers (bools, floats and
    strings are refused, not rounded); `layers` and `heads` are lists, tuples,
    ranges or 1-d integer arrays. Raises InputError naming the argument for
    anything else and for out-of-range indices.
    """
    n_layers, n_heads = spec.n_layers, spec.n_heads
    layer_list = (
        list(range(n_layers))
        if layers is None
        else [_index(x, "layers") for x in _index_list(layers, "layers", "layer")]
    )
    pairs: list[tuple[int, int]] | None = None
    if heads is None:
        head_list = list(range(n_heads))
    else:
        items = _index_list(heads, "heads", "head")
        if not items:
            raise InputError("heads must name at least one head")
        if all(isinstance(h, (tuple, list)) and len(h) == 2 for h in items):
            pairs = sorted({(_index(a, "heads"), _index(b, "heads")) for a, b in items})
            if layers is None:
                layer_list = sorted({a for a, _ in pairs})
            else:
                pairs = [p for p in pairs if p[0] in layer_list]
                if not pairs:
                    raise InputError("none of the requested (layer, head) pairs is in `layers`")
            head_list = sorted({b for _, b in pairs})
        elif not any(isinstance(h, (tuple, list)) for h in items):
            head_list = sorted({_index(h, "heads") for h in items})
        else:
            raise InputError("heads must be a list of head indices or of (layer, head) pairs")
    if not layer_list:
        raise InputError("layers must name at least one layer")
    for layer in layer_list:
        if not 0 <= layer < n_layers:
            raise InputError(f"layer {layer} is out of range: the model has {n_layers} layers")
    for head in head_list:
        if not 0 <= head < n_heads:
            raise InputError(
                f"head {head} is out of range: the model has {n_heads} heads per layer"
            )
    layer_list = sorted(set(layer_list))
    requested = tuple(pairs) if pairs is not None else None
    if requested is not None and len(requested) == len(layer_list) * len(head_list):
        requested = None  # the pairs fill the grid: nothing is missing
    return tuple(layer_list), tuple(head_list), requested


def _index_list(value: Any, name: str, what: str) -> list:
    """The items of a list/tuple/range (or 1-d tensor / numpy array) argument;
    InputError for a bare number, a string, a dict or anything else."""
    if isinstance(value, (list, tuple, range)):
        return list(value)
    array = isinstance(value, Tensor) or type(value).__module__ == "numpy"
    if array and getattr(value, "ndim", None) == 1:
        return list(value)
    raise InputError(
        f"{name} must be a list of {what} indices, e.g. {name}=[1], "
        f"got {type(value).__name__} {value!r:.40}"
    )


def _index(value: Any, name: str) -> int:
    """A whole-number index; bools, floats and strings are refused, not rounded."""
    if isinstance(value, (bool, float, str, bytes)) or (
        isinstance(value, Tensor) and (value.is_floating_point() or value.dtype == torch.bool)
    ):
        raise InputError(f"{name} must hold whole numbers, got {value!r:.40}")
    try:
        return operator.index(value)
    except TypeError:
        raise InputError(f"{name} must hold whole numbers, got {value!r:.40}") from None


def _whole(value: Any, name: str, minimum: int, *, optional: bool = False) -> int | None:
    """An int argument >= `minimum` (None allowed when `optional`)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = " or None" if optional else ""
        raise InputError(f"{name} must be a whole number >= {minimum}{allowed}, got {value!r:.40}")
    return value


def padding_mask(batch: TokenBatch) -> Tensor:
    """`[batch, query, key]` True where both query and key are real tokens."""
    real = batch.attention_mask
    return real[:, :, None] & real[:, None, :]


Kernel = Literal["tiled", "eager"]


@torch.no_grad()
def capture(
    model: HeadscopeModel,
    inputs: Inputs | TokenBatch,
    *,
    layers: Sequence[int] | None = None,
    heads: HeadSelection = None,
    mode: Literal["maps", "stats"] = "maps",
    kernel: Kernel = "tiled",
    sink_k: int = 1,
    top_k: int | None = None,
    query_tile: int | None = None,
    max_memory: int | str | None = None,
    store: str | os.PathLike | None = None,
    store_meta: dict | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> AttentionRecord | HeadStats:
    """Run `model` on `inputs` and keep per-head attention.

    `inputs`: a string, a list of strings (right-padded; padding masked out and
    per-prompt lengths kept) or a token-id tensor (`[position]` or `[batch,
    position]`, used as given). A vision model (`spec.is_vision`) takes an
    image or a batch instead (PIL images, paths, arrays; `models.images`): the
    record's tokens are [CLS] then "(row,column)" per patch, and its spec keeps
    the patch grid (`spec.patch_grid`, `spec.patch_size`).

    `mode="maps"` (default) returns an `AttentionRecord` of the chosen heads
    (`layers` / `heads` restrict what is kept, see `resolve_heads`); only those
    maps are ever materialized. Memory: 4·kept_layers·kept_heads·batch·N² bytes
    for the result (filled in place, layer by layer) plus one query tile of
    scores per layer call and one layer's kept maps in the kernel.

    `mode="stats"` returns a `HeadStats` record: per (layer, head, query)
    entropy, max weight, argmax key, mass on the first `sink_k` keys,
    previous-token mass and mean distance, per (layer, head) the distance
    histogram, key mass and key visibility, streamed one query tile at a time,
    so no N × N map exists for more than one tile. `top_k` adds each query's
    top keys (a sparse map; capped at the number of keys, with a warning).
    When `layers` or `heads` is given, the maps of those heads come along as
    `stats.maps`. Memory: O(layers·heads·batch·N) plus the tile buffers.

    `store` (stats mode, one prompt): a new folder where the maps of the heads
    named by `layers` / `heads` are written as a `records.store.MapStore`
    (zarr, with block-max and block-mean pyramids) instead of being kept in
    memory, plus every head's top-k keys when `top_k` is given; `stats.maps` is
    then None and `MapStore.open(store)` reads them. The kernel hands over one
    layer's maps per layer call (not per query tile), so the maps of one
    layer's stored heads exist at once in the kernel while they are written to
    the store in slabs of query rows; nothing else holds a map. `store_meta`:
    small values kept in the store (model name...). A store that exists is
    refused (RecordExistsError); a capture that fails leaves it unfinished,
    which `MapStore.open` refuses.

    `progress(done, total)` is called after each attention layer (total: the
    layers the capture runs).

    Whatever the model's dtype (float32, bfloat16, float16), scores, softmax,
    maps and statistics are computed and accumulated in float32.

    `kernel="tiled"` (default) runs headscope's query-tiled kernel
    (`kernels.tiled`) inside the model's attention layers; `kernel="eager"`
    keeps transformer-lens's eager attention and reads the pattern site (maps
    only; for parity checks). A model whose attention layers the tiled kernel
    does not support falls back to eager for maps (provenance.kernel says which
    ran) and raises InputError for stats. Grouped-query models give one map per
    query head. Either way the forward stops after the last attention layer the
    capture reads, so no logits (an [N, vocab] tensor) are computed.

    Before running, the memory the capture needs is estimated
    (`models.memory.capture_estimate`) and compared with the memory available
    on the model's device, or with `max_memory` (bytes or e.g. "8GB"); a
    capture that does not fit raises MemoryLimitError naming the estimate and
    the options that fit (stats mode, fewer heads, shorter or fewer prompts).
    Bad arguments raise InputError naming the argument.
    """
    if mode not in ("maps", "stats"):
        raise InputError(f"unknown capture mode {mode!r}; choose 'maps' or 'stats'")
    if kernel not in ("tiled", "eager"):
        raise InputError(f"unknown kernel {kernel!r}; choose 'tiled' or 'eager'")
    if mode == "stats" and kernel == "eager":
        raise InputError("statistics are streamed by the tiled kernel: use kernel='tiled'")
    if store is not None and mode != "stats":
        raise InputError("store= writes maps to disk during a statistics capture: use mode='stats'")
    sink_k = _whole(sink_k, "sink_k", 0)
    top_k = _whole(top_k, "top_k", 1, optional=True)
    query_tile = _whole(query_tile, "query_tile", 1, optional=True)
    limit = None if max_memory is None else parse_size(max_memory)
    if inputs is None:
        raise InputError(
            "inputs must be a prompt string, a list of prompts or a token-id tensor, got None"
        )
    batch = inputs if isinstance(inputs, TokenBatch) else model.tokenize(inputs)
    n_keys = batch.ids.shape[1]
    if store is not None and batch.ids.shape[0] != 1:
        raise InputError(f"store= takes one prompt, got {batch.ids.shape[0]}")
    if top_k is not None and top_k > n_keys:
        warnings.warn(
            f"top_k={top_k} is more than the {n_keys} keys of the input; keeping all {n_keys}",
            stacklevel=2,
        )
        top_k = n_keys
    want_maps = mode == "maps" or layers is not None or heads is not None
    layer_index, head_index, requested = (
        resolve_heads(model.spec, layers, heads) if want_maps else ((), (), None)
    )
    pairs = _pairs(layer_index, head_index, requested)
    plan = _Plan(
        model,
        batch,
        mode,
        kernel,
        pairs,
        layer_index,
        head_index,
        top_k,
        query_tile,
        to_store=store is not None,
    )
    plan.check(limit)

    writer = None
    if store is not None:
        writer = _StoreWriter(
            MapStore.create(
                store,
                n_tokens=n_keys,
                n_layers=model.spec.n_layers,
                n_heads=model.spec.n_heads,
                heads=pairs,
                top_k=top_k,
                meta={
                    "model_name": model.spec.name,
                    "weights_hash": model.weights_hash,
                    **(store_meta or {}),
                },
            )
        )
    pattern = plan.empty_pattern() if want_maps and writer is None else None
    used = kernel
    layer_stats: dict[int, TiledAttentionResult] = {}
    if kernel == "tiled":
        try:
            layer_stats = _run_tiled(
                model,
                batch,
                pairs,
                pattern,
                layer_index,
                head_index,
                stats=mode == "stats",
                sink_k=sink_k,
                top_k=top_k,
                query_tile=query_tile,
                writer=writer,
                progress=progress,
            )
        except NotImplementedError as error:
            if mode == "stats":
                raise InputError(
                    f"statistics capture is not available for this model: {error}"
                ) from None
            warnings.warn(f"falling back to eager attention: {error}", stacklevel=2)
            used = "eager"
            dataclasses.replace(plan, kernel="eager").check(limit)
    if used == "eager":
        assert pattern is not None
        _run_eager(model, batch, pattern, layer_index, head_index)
        if progress is not None:
            progress(len(layer_index), len(layer_index))
    if writer is not None:
        writer.store.finish()

    provenance = Provenance.now(
        model_name=model.spec.name,
        weights_hash=model.weights_hash,
        headscope_version=_version(),
        torch_version=torch.__version__,
        kernel=used,
        prepended_bos=batch.prepended_bos,
        texts=batch.texts,
    )
    record = (
        _attention_record(model, batch, pattern, layer_index, head_index, requested, provenance)
        if pattern is not None
        else None
    )
    if mode == "maps":
        return record
    return _head_stats(model, batch, layer_stats, record, provenance)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a capture will hold, for its memory estimate and the refusal's options."""

    model: HeadscopeModel
    batch: TokenBatch
    mode: str
    kernel: str
    pairs: list[tuple[int, int]]
    layer_index: tuple[int, ...]
    head_index: tuple[int, ...]
    top_k: int | None
    query_tile: int | None
    to_store: bool = False

    def estimate(
        self,
        *,
        mode: str | None = None,
        n_maps: int | None = None,
        batch: int | None = None,
        n_tokens: int | None = None,
        top_k: int | None = None,
    ) -> MemoryEstimate:
        spec = self.model.spec
        b = self.batch.ids.shape[0] if batch is None else batch
        n = self.batch.ids.shape[1] if n_tokens is None else n_tokens
        grid = len(self.layer_index) * len(self.head_index)
        maps = grid if n_maps is None else n_maps
        tile = self.query_tile or default_query_tile(b, spec.n_heads, n)
        estimate = capture_estimate(
            n_layers=spec.n_layers,
            n_heads=spec.n_heads,
            n_kv_heads=spec.n_kv_heads,
            d_model=spec.d_model,
            d_head=spec.d_head,
            batch=b,
            n_tokens=n,
            n_maps=maps,
            map_layers=min(len(self.layer_index), maps) if maps else 0,
            mode=mode or self.mode,  # type: ignore[arg-type]
            kernel=self.kernel,  # type: ignore[arg-type]
            query_tile=tile,
            top_k=self.top_k if top_k is None else top_k,
            dtype=self.model.dtype,
        )
        if not self.to_store:
            return estimate
        # Maps written to a store are not kept: the result holds none, and a
        # writer's slab buffers (one head at a time) take their place.
        buffers = STORE_BYTES_PER_ROW * DEFAULT_STORE_CHUNK * n if maps else 0
        return MemoryEstimate(
            tuple(
                Part("map store buffers", buffers) if part.label == "maps" else part
                for part in estimate.parts
            )
        )

    def empty_pattern(self) -> Tensor:
        """The result `[batch, layer, head, query, key]`, NaN until a map fills it."""
        shape = (*self.batch.ids.shape[:1], len(self.layer_index), len(self.head_index))
        n = self.batch.ids.shape[1]
        return torch.full((*shape, n, n), float("nan"))

    def check(self, limit: int | None) -> None:
        b, n = self.batch.ids.shape
        spec = self.model.spec
        grid = len(self.layer_index) * len(self.head_index)
        what = (
            f"capturing the maps of {grid} heads"
            if self.mode == "maps"
            else f"capturing the statistics of {spec.n_layers * spec.n_heads} heads"
            + (f" and {grid} maps" if grid else "")
        )
        what += f" for {b} prompt(s) of {n} tokens"

        def options(fits) -> list[str]:
            found = []
            if grid and fits(self.estimate(mode="stats", n_maps=0)):
                size = format_bytes(self.estimate(mode="stats", n_maps=0).total)
                found.append(f"stats mode without maps (about {size})")
            if grid > 1:
                heads = largest_fitting(lambda k: fits(self.estimate(n_maps=k)), grid - 1)
                if heads:
                    found.append(f"at most {heads} of the {grid} head maps (layers=/heads=)")
            if n > 1:
                tokens = largest_fitting(lambda k: fits(self.estimate(n_tokens=k)), n - 1)
                if tokens:
                    found.append(f"a shorter prompt (at most {tokens} tokens)")
            if b > 1:
                rows = largest_fitting(lambda k: fits(self.estimate(batch=k)), b - 1)
                if rows:
                    found.append(f"fewer prompts per call (at most {rows})")
            if self.top_k and self.top_k > 1:
                k = largest_fitting(lambda k: fits(self.estimate(top_k=k)), self.top_k - 1)
                if k:
                    found.append(f"top_k of at most {k}")
            return found

        check_fits(
            self.estimate(),
            device=self.model.device,
            what=what,
            max_memory=limit,
            options=options,
        )


def _pairs(
    layer_index: tuple[int, ...],
    head_index: tuple[int, ...],
    requested: tuple[tuple[int, int], ...] | None,
) -> list[tuple[int, int]]:
    if requested is not None:
        return list(requested)
    return [(layer, head) for layer in layer_index for head in head_index]


#: Bytes per map row (per token of the prompt) that a store writer buffers:
#: a chunk of rows per pyramid level in float32 (max) and float64 (sums).
STORE_BYTES_PER_ROW = 40


@dataclasses.dataclass
class _StoreWriter:
    """Hands each layer's kept maps to a MapStore, a slab of query rows at a time."""

    store: MapStore

    def write_layer(self, layer: int, result: TiledAttentionResult) -> None:
        if result.maps is not None:
            rows = self.store.chunk
            for k, head in enumerate(result.map_heads):
                if (layer, head) not in self.store.heads:
                    continue
                writer = self.store.writer(layer, head)
                layer_map = result.maps[0, k]
                for row0 in range(0, layer_map.shape[0], rows):
                    writer.write_rows(row0, layer_map[row0 : row0 + rows])
                writer.close()
        if self.store.top_k is not None and result.topk_keys is not None:
            self.store.write_topk(layer, result.topk_keys[0], result.topk_weights[0])


def _run_tiled(
    model: HeadscopeModel,
    batch: TokenBatch,
    pairs: list[tuple[int, int]],
    pattern: Tensor | None,
    layer_index: tuple[int, ...],
    head_index: tuple[int, ...],
    *,
    stats: bool,
    sink_k: int,
    top_k: int | None,
    query_tile: int | None,
    writer: _StoreWriter | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> dict[int, TiledAttentionResult]:
    """Run the forward with the tiled kernel: the maps of the heads in `pairs`
    are copied into `pattern` `[batch, layer, head, query, key]` (positions
    given by `layer_index` / `head_index`), or written to `writer`'s store, as
    each layer runs; returns the per-layer kernel results (statistics moved to
    the CPU, output dropped)."""
    last = model.spec.n_layers - 1
    results: dict[int, TiledAttentionResult] = {}
    layer_at = {layer: i for i, layer in enumerate(layer_index)}
    head_at = {head: j for j, head in enumerate(head_index)}

    def collect(layer: int, result: TiledAttentionResult) -> None:
        if result.maps is not None and pattern is not None and layer in layer_at:
            for k, head in enumerate(result.map_heads):
                if head in head_at:
                    pattern[:, layer_at[layer], head_at[head]] = result.maps[:, k].float().cpu()
        if writer is not None:
            writer.write_layer(layer, result)
        if stats:
            results[layer] = _to_cpu(result)
        if progress is not None:
            progress(layer + 1, last + 1)
        if layer == last:
            raise _AttentionDone

    with instrumented_attention(
        model.bridge,
        collector=collect,
        maps_for=pairs or None,
        stats=stats,
        sink_k=sink_k,
        top_k=top_k,
        query_tile=query_tile,
    ) as scope:
        _forward_until_done(model, batch)
    missing = [layer for layer in range(model.spec.n_layers) if layer not in scope.calls]
    if missing:
        raise RuntimeError(f"the tiled kernel did not run for layers {missing}")
    return results


class _AttentionDone(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised once the last attention layer a capture needs has run."""


def _forward_until_done(model: HeadscopeModel, batch: TokenBatch) -> None:
    """Run the forward only as far as the attention a capture reads: everything
    after the last needed attention layer (its output projection, the MLPs
    above it, the final norm and the [N, vocab] unembedding, 1.6 GB at N = 8192
    for GPT-2) cannot change what was captured. Patches are removed on the way
    out as after any exception."""
    with contextlib.suppress(_AttentionDone):
        run(model, batch)


def _to_cpu(result: TiledAttentionResult) -> TiledAttentionResult:
    """The statistics on the CPU; the output and maps dropped (the model has used them)."""
    moved = {
        f.name: getattr(result, f.name).cpu()
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), Tensor) and f.name not in ("output", "maps")
    }
    return dataclasses.replace(result, output=result.output[:0].cpu(), maps=None, **moved)


def _run_eager(
    model: HeadscopeModel,
    batch: TokenBatch,
    pattern: Tensor,
    layer_index: tuple[int, ...],
    head_index: tuple[int, ...],
) -> None:
    """transformer-lens eager attention, read at the pattern site of each kept
    layer (the forward stops after the last of them), copied into `pattern`."""
    sites = [Site(layer, "pattern") for layer in layer_index]
    read = run(model, batch, read=sites, stop_after=sites[-1]).activations
    heads = torch.tensor(head_index)
    for i, site in enumerate(sites):
        layer_pattern = read[site]
        pattern[:, i] = layer_pattern[:, heads.to(layer_pattern.device)].float().cpu()


def _attention_record(
    model: HeadscopeModel,
    batch: TokenBatch,
    pattern: Tensor,
    layer_index: tuple[int, ...],
    head_index: tuple[int, ...],
    requested: tuple[tuple[int, int], ...] | None,
    provenance: Provenance,
) -> AttentionRecord:
    # Padded rows and columns are exactly 0; NaN marks heads that were not asked
    # for (both in place: the result is the only copy of the maps).
    pattern.mul_(padding_mask(batch)[:, None, None].to(pattern.dtype))
    if requested is not None:
        wanted = torch.zeros(len(layer_index), len(head_index), dtype=torch.bool)
        for layer, head in requested:
            wanted[layer_index.index(layer), head_index.index(head)] = True
        pattern.masked_fill_(~wanted[None, :, :, None, None], float("nan"))
    single = batch.single
    return AttentionRecord(
        pattern=pattern[0] if single else pattern,
        token_ids=batch.ids[0] if single else batch.ids,
        tokens=batch.tokens[0] if single else batch.tokens,
        lengths=None if single else batch.lengths,
        layer_index=layer_index,
        head_index=head_index,
        spec=model.spec,
        provenance=provenance,
        requested=requested,
    )


def _head_stats(
    model: HeadscopeModel,
    batch: TokenBatch,
    results: dict[int, TiledAttentionResult],
    maps: AttentionRecord | None,
    provenance: Provenance,
) -> HeadStats:
    ordered = [results[layer] for layer in range(model.spec.n_layers)]
    single = batch.single

    def stack(name: str) -> Tensor | None:
        values = [getattr(result, name) for result in ordered]
        if values[0] is None:
            return None
        stacked = torch.stack(values, dim=1)  # [batch, layer, head, ...]
        return stacked[0] if single else stacked

    fields = {name: stack(name) for name in (*STATS_PER_QUERY, *STATS_PER_HEAD)}
    return HeadStats(
        **fields,
        distance_bin_edges=ordered[0].distance_bin_edges,
        sink_keys=ordered[0].sink_keys,
        token_ids=batch.ids[0] if single else batch.ids,
        tokens=batch.tokens[0] if single else batch.tokens,
        lengths=None if single else batch.lengths,
        spec=model.spec,
        provenance=provenance,
        topk_keys=stack("topk_keys"),
        topk_weights=stack("topk_weights"),
        maps=maps,
    )


def _version() -> str:
    from headscope import __version__

    return __version__
