"""capture(): run a model on prompts and keep per-head attention as a record."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from headscope.errors import InputError
from headscope.kernels.tiled import TiledAttentionResult
from headscope.models.loading import HeadscopeModel, Inputs
from headscope.models.tokens import TokenBatch
from headscope.probes.fast_attention import instrumented_attention
from headscope.probes.run import run
from headscope.probes.sites import Site
from headscope.records.attention import AttentionRecord
from headscope.records.provenance import Provenance
from headscope.records.stats import PER_HEAD as STATS_PER_HEAD
from headscope.records.stats import PER_QUERY as STATS_PER_QUERY
from headscope.records.stats import HeadStats

HeadSelection = Sequence[int] | Sequence[tuple[int, int]] | None


def resolve_heads(
    spec: Any, layers: Sequence[int] | None, heads: HeadSelection
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...] | None]:
    """(layer_index, head_index, requested pairs) for a capture request.

    `heads` is None (all), a list of head indices (in every kept layer), or a
    list of (layer, head) pairs (the grid is their layers × their heads, and
    only the pairs are filled). Raises InputError for out-of-range indices.
    """
    n_layers, n_heads = spec.n_layers, spec.n_heads
    layer_list = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    pairs: list[tuple[int, int]] | None = None
    if heads is None:
        head_list = list(range(n_heads))
    else:
        items = list(heads)
        if not items:
            raise InputError("heads must name at least one head")
        if all(isinstance(h, (tuple, list)) and len(h) == 2 for h in items):
            pairs = sorted({(int(a), int(b)) for a, b in items})
            if layers is None:
                layer_list = sorted({a for a, _ in pairs})
            else:
                pairs = [p for p in pairs if p[0] in layer_list]
                if not pairs:
                    raise InputError("none of the requested (layer, head) pairs is in `layers`")
            head_list = sorted({b for _, b in pairs})
        elif all(isinstance(h, int) for h in items):
            head_list = sorted({int(h) for h in items})
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
) -> AttentionRecord | HeadStats:
    """Run `model` on `inputs` and keep per-head attention.

    `inputs`: a string, a list of strings (right-padded; padding masked out and
    per-prompt lengths kept) or a token-id tensor (`[position]` or `[batch,
    position]`, used as given).

    `mode="maps"` (default) returns an `AttentionRecord` of the chosen heads
    (`layers` / `heads` restrict what is kept, see `resolve_heads`); only those
    maps are ever materialized. Memory: 4·kept_layers·kept_heads·batch·N² bytes
    for the result plus one query tile of scores per layer call.

    `mode="stats"` returns a `HeadStats` record: per (layer, head, query)
    entropy, max weight, argmax key, mass on the first `sink_k` keys,
    previous-token mass and mean distance, per (layer, head) the distance
    histogram, key mass and key visibility, streamed one query tile at a time,
    so no N × N map exists for more than one tile. `top_k` adds each query's
    top keys (a sparse map). When `layers` or `heads` is given, the maps of
    those heads come along as `stats.maps`. Memory: O(layers·heads·batch·N)
    plus the tile buffers.

    `kernel="tiled"` (default) runs headscope's query-tiled kernel
    (`kernels.tiled`) inside the model's attention layers; `kernel="eager"`
    keeps transformer-lens's eager attention and reads the pattern site (maps
    only; for parity checks). A model whose attention layers the tiled kernel
    does not support falls back to eager for maps (provenance.kernel says which
    ran) and raises InputError for stats. Grouped-query models give one map per
    query head. Either way the forward stops after the last attention layer the
    capture reads, so no logits (an [N, vocab] tensor) are computed.
    """
    if mode not in ("maps", "stats"):
        raise InputError(f"unknown capture mode {mode!r}; choose 'maps' or 'stats'")
    if kernel not in ("tiled", "eager"):
        raise InputError(f"unknown kernel {kernel!r}; choose 'tiled' or 'eager'")
    if mode == "stats" and kernel == "eager":
        raise InputError("statistics are streamed by the tiled kernel: use kernel='tiled'")
    batch = inputs if isinstance(inputs, TokenBatch) else model.tokenize(inputs)
    want_maps = mode == "maps" or layers is not None or heads is not None
    layer_index, head_index, requested = (
        resolve_heads(model.spec, layers, heads) if want_maps else ((), (), None)
    )
    pairs = _pairs(layer_index, head_index, requested)

    used = kernel
    maps: dict[int, Tensor] = {}
    layer_stats: dict[int, TiledAttentionResult] = {}
    if kernel == "tiled":
        try:
            maps, layer_stats = _run_tiled(
                model,
                batch,
                pairs,
                stats=mode == "stats",
                sink_k=sink_k,
                top_k=top_k,
                query_tile=query_tile,
            )
        except NotImplementedError as error:
            if mode == "stats":
                raise InputError(
                    f"statistics capture is not available for this model: {error}"
                ) from None
            warnings.warn(f"falling back to eager attention: {error}", stacklevel=2)
            used = "eager"
    if used == "eager":
        maps = _run_eager(model, batch, layer_index, head_index)

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
        _attention_record(model, batch, maps, layer_index, head_index, requested, provenance)
        if want_maps
        else None
    )
    if mode == "maps":
        return record
    return _head_stats(model, batch, layer_stats, record, provenance)


def _pairs(
    layer_index: tuple[int, ...],
    head_index: tuple[int, ...],
    requested: tuple[tuple[int, int], ...] | None,
) -> list[tuple[int, int]]:
    if requested is not None:
        return list(requested)
    return [(layer, head) for layer in layer_index for head in head_index]


def _run_tiled(
    model: HeadscopeModel,
    batch: TokenBatch,
    pairs: list[tuple[int, int]],
    *,
    stats: bool,
    sink_k: int,
    top_k: int | None,
    query_tile: int | None,
) -> tuple[dict[int, Tensor], dict[int, TiledAttentionResult]]:
    """Maps `{layer: [batch, head, query, key]}` for the heads in `pairs` (NaN
    rows for the heads of a layer that were not asked for) and the per-layer
    kernel results (statistics moved to the CPU, output dropped)."""
    n_heads, last = model.spec.n_heads, model.spec.n_layers - 1
    maps: dict[int, Tensor] = {}
    results: dict[int, TiledAttentionResult] = {}

    def collect(layer: int, result: TiledAttentionResult) -> None:
        if result.maps is not None:
            full = torch.full((result.maps.shape[0], n_heads, *result.maps.shape[2:]), float("nan"))
            full[:, list(result.map_heads)] = result.maps.float().cpu()
            maps[layer] = full
        if stats:
            results[layer] = _to_cpu(result)
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
    return maps, results


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
    layer_index: tuple[int, ...],
    head_index: tuple[int, ...],
) -> dict[int, Tensor]:
    """transformer-lens eager attention, read at the pattern site of each kept
    layer; the forward stops after the last of them."""
    sites = [Site(layer, "pattern") for layer in layer_index]
    read = run(model, batch, read=sites, stop_after=sites[-1]).activations
    heads = torch.tensor(head_index)
    kept: dict[int, Tensor] = {}
    for layer, site in zip(layer_index, sites, strict=True):
        pattern = read[site]
        full = torch.full(pattern.shape, float("nan"))
        full[:, heads] = pattern[:, heads.to(pattern.device)].float().cpu()
        kept[layer] = full
    return kept


def _attention_record(
    model: HeadscopeModel,
    batch: TokenBatch,
    maps: dict[int, Tensor],
    layer_index: tuple[int, ...],
    head_index: tuple[int, ...],
    requested: tuple[tuple[int, int], ...] | None,
    provenance: Provenance,
) -> AttentionRecord:
    heads = torch.tensor(head_index)
    pattern = torch.stack([maps[layer][:, heads] for layer in layer_index], dim=1)
    # Padded rows and columns are exactly 0; NaN marks heads that were not asked for.
    pattern = pattern * padding_mask(batch)[:, None, None].to(pattern.dtype)
    if requested is not None:
        wanted = torch.zeros(len(layer_index), len(head_index), dtype=torch.bool)
        for layer, head in requested:
            wanted[layer_index.index(layer), head_index.index(head)] = True
        pattern = pattern.masked_fill(~wanted[None, :, :, None, None], float("nan"))
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
