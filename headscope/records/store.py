"""MapStore: full attention maps of chosen heads, and top-k keys, on disk (zarr).

A long prompt's map is too big to hold: one head at 32k tokens is 4 GiB of
float32. `MapStore` writes each head's `[query, key]` map as it is captured,
a slab of query rows at a time (`MapWriter.write_rows`), into a chunked zarr v3
store, and builds a multi-resolution pyramid on the way: level ℓ holds the map
reduced by 2^ℓ × 2^ℓ blocks, once by block max (thin structure such as a
diagonal or a sink column stays visible) and once by block mean (mass). Level 0
is the map itself. Blocks at the bottom and right edges are partial: their
mean is over the cells that exist. Nothing ever holds more than a slab of rows
per level, so a 32k × 32k map can be written and browsed with a few MiB.

    store = MapStore.create("runs/long.zarr", n_tokens=8192, n_layers=12, n_heads=12,
                            heads=[(5, 1)], top_k=8)
    writer = store.writer(5, 1)
    for row0 in range(0, 8192, 256):
        writer.write_rows(row0, rows)          # rows [256, 8192]
    writer.close()
    store.finish()

    store = MapStore.open("runs/long.zarr")
    store.tile(5, 1, level=4, row0=0, col0=0, size=256)   # a small array
    store.read(5, 1, level=2, rows=(100, 300), cols=(0, 200), reduce="mean")

Layout (zarr v3, zstd-compressed float32 / int32 chunks of `chunk` × `chunk`;
chunks equal to the fill value 0, such as those above a causal diagonal, are
not written):

    zarr.json                      group; attributes: schema, sizes, heads, complete
    heads/L{l}H{h}/0               level 0: the map, [n_tokens, n_tokens]
    heads/L{l}H{h}/max/{ℓ}         level ℓ ≥ 1 by block max, [⌈n/2^ℓ⌉, ⌈n/2^ℓ⌉]
    heads/L{l}H{h}/mean/{ℓ}        level ℓ ≥ 1 by block mean
    topk/keys, topk/weights        [layer, head, query, k] (when written with top_k)

Opening validates before zarr reads anything: every metadata file is JSON of a
bounded size, the schema and version are headscope's, each array has the
shape, dtype, chunks and codecs (bytes + zstd only: no object or pickle
codecs) that the sizes imply, the store was finished (`complete`), and nothing
under the folder is a symbolic link. Each problem is a one-line
`RecordFormatError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from headscope.errors import InputError, RecordExistsError, RecordFormatError

SCHEMA = "headscope.map_store"
SCHEMA_VERSION = 1
#: Rows and columns per chunk (and the side the pyramid reduces down to).
DEFAULT_CHUNK = 256
#: Rows per chunk of the top-k arrays.
TOPK_ROWS = 4096
#: The largest metadata file a store may hold (they are a few hundred bytes).
MAX_METADATA_BYTES = 1 << 20
#: zstd level: 1 writes about three times faster than the default 3, and maps of
#: softmax weights compress about as well.
ZSTD_LEVEL = 1
#: Codecs a store's arrays may use (what `create` writes).
ALLOWED_CODECS = frozenset({"bytes", "zstd"})
METADATA = "zarr.json"

Reduce = Literal["max", "mean"]
REDUCTIONS: tuple[str, ...] = ("max", "mean")


def pyramid_levels(n_tokens: int, chunk: int) -> int:
    """How many levels a map of `n_tokens` gets: level 0, then halvings until the
    side fits one chunk (at least 1)."""
    levels = 1
    while math.ceil(n_tokens / 2 ** (levels - 1)) > chunk:
        levels += 1
    return levels


def level_side(n_tokens: int, level: int) -> int:
    """Rows (= columns) of a map at `level` (2^level × 2^level blocks)."""
    return math.ceil(n_tokens / 2**level)


def head_path(layer: int, head: int) -> str:
    return f"heads/L{int(layer)}H{int(head)}"


def _array_path(layer: int, head: int, level: int, reduce: str) -> str:
    base = head_path(layer, head)
    return f"{base}/0" if level == 0 else f"{base}/{reduce}/{level}"


def _block_sizes(n: int, factor: int) -> np.ndarray:
    """Sizes of the blocks of `factor` cells that cover n cells (the last may be partial)."""
    starts = np.arange(0, n, factor)
    return (np.minimum(starts + factor, n) - starts).astype(np.float64)


def _pair_columns(x: np.ndarray, how: str) -> np.ndarray:
    """Reduce adjacent column pairs (an odd last column stands alone)."""
    cols = x.shape[1]
    even = cols - cols % 2
    combine = np.maximum if how == "max" else np.add
    paired = combine(x[:, 0:even:2], x[:, 1:even:2])
    if cols % 2:
        paired = np.concatenate([paired, x[:, even:]], axis=1)
    return paired


def _pair_rows(x: np.ndarray, how: str) -> np.ndarray:
    """Reduce adjacent row pairs of an even number of rows."""
    combine = np.maximum if how == "max" else np.add
    return combine(x[0::2], x[1::2])


class _Level:
    """One pyramid level of one head while it is written: rows wait here until a
    whole chunk row can be written (aligned writes, no read-modify-write), and
    one row of this level may wait for its partner to form the next level."""

    def __init__(self, level: int, n_tokens: int, chunk: int, arrays: dict[str, Any]) -> None:
        self.level = level
        self.chunk = chunk
        self.side = level_side(n_tokens, level)
        self.arrays = arrays  # reduce -> zarr array ("max" only at level 0)
        factor = 2**level
        sizes = _block_sizes(n_tokens, factor)
        self.heights = sizes
        self.widths = sizes
        self.written = 0
        self.pending_max: list[np.ndarray] = []
        self.pending_sum: list[np.ndarray] = []
        self.pending_rows = 0
        self.carry: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, maxes: np.ndarray, sums: np.ndarray) -> None:
        self.pending_max.append(maxes)
        self.pending_sum.append(sums)
        self.pending_rows += maxes.shape[0]
        if self.pending_rows >= self.chunk:
            self.flush(final=False)

    def flush(self, *, final: bool) -> None:
        if not self.pending_rows:
            return
        maxes = (
            np.concatenate(self.pending_max) if len(self.pending_max) > 1 else self.pending_max[0]
        )
        sums = (
            np.concatenate(self.pending_sum) if len(self.pending_sum) > 1 else self.pending_sum[0]
        )
        usable = self.pending_rows if final else self.pending_rows - self.pending_rows % self.chunk
        if usable:
            start, stop = self.written, self.written + usable
            self.arrays["max"][start:stop, :] = maxes[:usable].astype(np.float32, copy=False)
            if "mean" in self.arrays:
                counts = self.heights[start:stop, None] * self.widths[None, :]
                self.arrays["mean"][start:stop, :] = (sums[:usable] / counts).astype(np.float32)
            self.written = stop
        self.pending_max = [maxes[usable:]] if usable < self.pending_rows else []
        self.pending_sum = [sums[usable:]] if usable < self.pending_rows else []
        self.pending_rows -= usable


class MapWriter:
    """Writes one head's map, a slab of query rows at a time, in order, and its
    pyramid as the rows arrive. Memory: about `chunk` rows per level (block max
    in float32, block sums in float64), under 40·chunk·n_tokens bytes in all."""

    def __init__(self, store: MapStore, layer: int, head: int) -> None:
        self.store = store
        self.layer, self.head = layer, head
        n, chunk = store.n_tokens, store.chunk
        self.levels = []
        for level in range(store.levels):
            arrays = {"max": store._array(layer, head, level, "max", create=True)}
            if level:
                arrays["mean"] = store._array(layer, head, level, "mean", create=True)
            self.levels.append(_Level(level, n, chunk, arrays))
        self.next_row = 0
        self.closed = False

    def write_rows(self, row0: int, rows: np.ndarray | torch.Tensor) -> None:
        """Rows `row0 .. row0 + len(rows) − 1` of the map (`[rows, n_tokens]`); rows
        arrive in order, in slabs of any height."""
        if self.closed:
            raise InputError(f"the map of head {self.layer}.{self.head} is already closed")
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().to("cpu", torch.float32).numpy()
        rows = np.asarray(rows, dtype=np.float32)
        n = self.store.n_tokens
        if rows.ndim != 2 or rows.shape[1] != n:
            raise InputError(f"map rows must be [rows, {n}], got shape {tuple(rows.shape)}")
        if row0 != self.next_row or row0 + rows.shape[0] > n:
            raise InputError(
                f"map rows must arrive in order: expected row {self.next_row}, got rows "
                f"{row0}..{row0 + rows.shape[0] - 1} of {n}"
            )
        if not rows.shape[0]:
            return
        self.next_row += rows.shape[0]
        self._feed(0, rows, rows)

    def _feed(self, level: int, maxes: np.ndarray, sums: np.ndarray) -> None:
        state = self.levels[level]
        state.add(maxes, sums)
        if level + 1 == len(self.levels):
            return
        if state.carry is not None:
            maxes = np.concatenate([state.carry[0], maxes])
            sums = np.concatenate([state.carry[1], sums])
            state.carry = None
        even = maxes.shape[0] - maxes.shape[0] % 2
        if even < maxes.shape[0]:
            state.carry = (maxes[even:], sums[even:])
        if even:
            upper_max = _pair_rows(_pair_columns(maxes[:even], "max"), "max")
            upper_sum = _pair_rows(_pair_columns(sums[:even].astype(np.float64), "sum"), "sum")
            self._feed(level + 1, upper_max, upper_sum)

    def close(self) -> None:
        """Write what is left (the partial last blocks) once every row has arrived."""
        if self.closed:
            return
        n = self.store.n_tokens
        if self.next_row != n:
            raise InputError(
                f"the map of head {self.layer}.{self.head} got {self.next_row} of its {n} rows"
            )
        for level, state in enumerate(self.levels[:-1]):
            if state.carry is not None:
                maxes, sums = state.carry
                state.carry = None
                # The last row of this level has no partner: its block is partial.
                self._feed(
                    level + 1,
                    _pair_columns(maxes, "max"),
                    _pair_columns(sums.astype(np.float64), "sum"),
                )
        for state in self.levels:
            state.flush(final=True)
        self.closed = True


class MapStore:
    """A zarr store of full maps (and their pyramids) of chosen heads of one
    prompt, plus optional top-k keys of every head. Create with `create`
    (then `writer` per head, `write_topk` per layer, `finish`), read with `open`
    (`tile`, `read`, `topk`)."""

    def __init__(self, path: Path, attributes: dict[str, Any], group: Any) -> None:
        self.path = path
        self.attributes = attributes
        self.n_tokens: int = attributes["n_tokens"]
        self.n_layers: int = attributes["n_layers"]
        self.n_heads: int = attributes["n_heads"]
        self.heads: tuple[tuple[int, int], ...] = tuple(
            (int(a), int(b)) for a, b in attributes["heads"]
        )
        self.chunk: int = attributes["chunk"]
        self.levels: int = attributes["levels"]
        self.top_k: int | None = attributes["top_k"]
        self.meta: dict[str, Any] = dict(attributes.get("meta") or {})
        self._group = group
        self._arrays: dict[str, Any] = {}

    # -- writing -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        n_tokens: int,
        n_layers: int,
        n_heads: int,
        heads: Iterable[tuple[int, int]] = (),
        top_k: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        meta: dict[str, str | int | float | bool | None] | None = None,
        overwrite: bool = False,
    ) -> MapStore:
        """A new, empty store at `path` (a folder). RecordExistsError when `path`
        already holds a store (or anything else) unless `overwrite`, which
        replaces a previous store only. `meta`: a few small JSON values kept as
        they are (model name, weights hash, ...)."""
        import zarr

        for name, value in (("n_tokens", n_tokens), ("n_layers", n_layers), ("n_heads", n_heads)):
            _check_whole(value, name, 1)
        _check_whole(chunk, "chunk", 1)
        if top_k is not None:
            _check_whole(top_k, "top_k", 1)
        pairs = sorted({(int(a), int(b)) for a, b in heads})
        for layer, head in pairs:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise InputError(
                    f"head {layer}.{head} is out of range: {n_layers} layers × {n_heads} heads"
                )
        meta = dict(meta or {})
        if any(
            not isinstance(v, str | int | float | bool | type(None)) or len(str(v)) > 1000
            for v in meta.values()
        ):
            raise InputError("store meta holds short strings and numbers only")
        root = Path(path)
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            raise RecordExistsError(f"{root} exists and is not a folder; choose another path")
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise RecordExistsError(
                    f"{root} is not empty; pass overwrite=True to replace a map store there, "
                    "or choose another folder"
                )
            if not (root / METADATA).is_file() or _schema_of(root) != SCHEMA:
                raise RecordExistsError(
                    f"{root} holds something other than a map store; not replacing it"
                )
            shutil.rmtree(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RecordFormatError(f"cannot create the map store {root}: {error}") from None
        attributes = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "n_tokens": n_tokens,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "heads": [list(p) for p in pairs],
            "chunk": chunk,
            "levels": pyramid_levels(n_tokens, chunk),
            "top_k": top_k,
            "complete": False,
            "meta": meta,
        }
        group = zarr.open_group(str(root), mode="w", zarr_format=3)
        group.attrs.update(attributes)
        store = cls(root, attributes, group)
        if top_k is not None:
            shape = (n_layers, n_heads, n_tokens, top_k)
            rows = min(TOPK_ROWS, n_tokens)
            store._create("topk/keys", shape, (1, 1, rows, top_k), "int32", -1)
            store._create("topk/weights", shape, (1, 1, rows, top_k), "float32", 0.0)
        return store

    def _create(self, name: str, shape: tuple, chunks: tuple, dtype: str, fill: Any) -> Any:
        import zarr

        array = self._group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL),
            overwrite=True,
        )
        self._arrays[name] = array
        return array

    def writer(self, layer: int, head: int) -> MapWriter:
        """The writer of one stored head's map (its arrays are created here)."""
        self._check_head(layer, head)
        return MapWriter(self, int(layer), int(head))

    def write_topk(
        self, layer: int, keys: np.ndarray | torch.Tensor, weights: np.ndarray | torch.Tensor
    ) -> None:
        """One layer's top-k keys and weights, `[head, query, k]` (keys −1 and
        weights 0 where a query sees fewer than k keys)."""
        if self.top_k is None:
            raise InputError("this map store was created without top_k")
        _check_whole(layer, "layer", 0)
        if layer >= self.n_layers:
            raise InputError(f"layer {layer} is out of range: the store has {self.n_layers}")
        keys, weights = _numpy(keys, np.int32), _numpy(weights, np.float32)
        shape = (self.n_heads, self.n_tokens, self.top_k)
        if keys.shape != shape or weights.shape != shape:
            raise InputError(
                f"top-k keys and weights must be {list(shape)}, got {list(keys.shape)} and "
                f"{list(weights.shape)}"
            )
        self._array_named("topk/keys")[layer] = keys
        self._array_named("topk/weights")[layer] = weights

    def finish(self) -> None:
        """Mark the store complete (`open` refuses an unfinished one)."""
        self.attributes["complete"] = True
        self._group.attrs["complete"] = True

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> MapStore:
        """Open a finished store for reading; RecordFormatError (one line, naming
        the file) when it is not one (see the module docstring)."""
        import zarr

        root = Path(path)
        if root.is_symlink():
            raise RecordFormatError(f"{root} is a symbolic link; open the map store it points to")
        if not root.is_dir():
            raise RecordFormatError(f"{root} is not a folder: not a map store")
        _refuse_links(root)
        attributes = _check_attributes(root)
        expected = _expected_arrays(attributes)
        for name, (shape, chunks, dtype) in expected.items():
            _check_array_metadata(root, name, shape, chunks, dtype)
        try:
            group = zarr.open_group(str(root), mode="r", zarr_format=3)
        except Exception as error:
            raise RecordFormatError(f"{root} cannot be opened as zarr: {_line(error)}") from None
        return cls(root, attributes, group)

    # -- reading -------------------------------------------------------------------------------

    def side(self, level: int) -> int:
        """Rows (= columns) of a stored map at `level`."""
        self._check_level(level)
        return level_side(self.n_tokens, level)

    @staticmethod
    def factor(level: int) -> int:
        """Tokens per cell side at `level`: 2^level."""
        return 2**level

    def level_for(self, span: int, max_cells: int) -> int:
        """The finest level at which `span` tokens take at most `max_cells` cells
        (the coarsest level when none does)."""
        for level in range(self.levels):
            if math.ceil(span / 2**level) <= max_cells:
                return level
        return self.levels - 1

    def tile(
        self,
        layer: int,
        head: int,
        level: int,
        row0: int,
        col0: int,
        size: int,
        reduce: Reduce = "max",
    ) -> np.ndarray:
        """A `[≤size, ≤size]` float32 array of head `layer`.`head`'s map at `level`,
        from cell (row0, col0) of that level (cut at the map's edge). Level 0 is
        the map; `reduce` picks block max or block mean above it."""
        _check_whole(size, "size", 1)
        return self.read(layer, head, level, (row0, row0 + size), (col0, col0 + size), reduce)

    def read(
        self,
        layer: int,
        head: int,
        level: int,
        rows: tuple[int, int],
        cols: tuple[int, int],
        reduce: Reduce = "max",
    ) -> np.ndarray:
        """Cells [rows[0], rows[1]) × [cols[0], cols[1]) of `level` (cut at the edge)."""
        self._check_head(layer, head)
        side = self.side(level)
        if reduce not in REDUCTIONS:
            raise InputError(f"reduce must be 'max' or 'mean', got {reduce!r:.40}")
        (r0, r1), (c0, c1) = (_span(rows, side, "rows"), _span(cols, side, "cols"))
        array = self._array(layer, head, level, reduce)
        try:
            return np.asarray(array[r0:r1, c0:c1], dtype=np.float32)
        except Exception as error:
            raise RecordFormatError(
                f"{self.path / _array_path(layer, head, level, reduce)}: a chunk cannot be read "
                f"({_line(error)})"
            ) from None

    def topk(
        self, layer: int, head: int, rows: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(keys int32, weights float32) `[query, k]` of one head, for query rows
        `rows` (default: all)."""
        if self.top_k is None:
            raise InputError("this map store holds no top-k keys (captured without top_k)")
        for value, name, limit in ((layer, "layer", self.n_layers), (head, "head", self.n_heads)):
            _check_whole(value, name, 0)
            if value >= limit:
                raise InputError(f"{name} {value} is out of range: the store has {limit}")
        r0, r1 = _span(rows or (0, self.n_tokens), self.n_tokens, "rows")
        keys = np.asarray(self._array_named("topk/keys")[layer, head, r0:r1], dtype=np.int32)
        weights = np.asarray(self._array_named("topk/weights")[layer, head, r0:r1])
        return keys, weights.astype(np.float32, copy=False)

    # -- internals -----------------------------------------------------------------------------

    def _check_head(self, layer: int, head: int) -> None:
        for value, name in ((layer, "layer"), (head, "head")):
            _check_whole(value, name, 0)
        if (int(layer), int(head)) not in self.heads:
            held = ", ".join(f"{a}.{b}" for a, b in self.heads) or "none"
            raise InputError(f"the store holds no map of head {layer}.{head} (it holds {held})")

    def _check_level(self, level: int) -> None:
        _check_whole(level, "level", 0)
        if level >= self.levels:
            raise InputError(f"level {level} is out of range: the store has {self.levels} levels")

    def _array(self, layer: int, head: int, level: int, reduce: str, *, create: bool = False):
        name = _array_path(layer, head, level, reduce)
        if name in self._arrays:
            return self._arrays[name]
        if create:
            side = level_side(self.n_tokens, level)
            size = min(self.chunk, side)
            return self._create(name, (side, side), (size, size), "float32", 0.0)
        return self._array_named(name)

    def _array_named(self, name: str):
        array = self._arrays.get(name)
        if array is None:
            try:
                array = self._group[name]
            except Exception as error:
                raise RecordFormatError(
                    f"{self.path / name} cannot be opened: {_line(error)}"
                ) from None
            self._arrays[name] = array
        return array


# -- validation ------------------------------------------------------------------------------------


def _check_whole(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r:.40}")


def _span(bounds: Sequence[int], limit: int, name: str) -> tuple[int, int]:
    if not isinstance(bounds, Sequence) or len(bounds) != 2:
        raise InputError(f"{name} must be a (start, stop) pair, got {bounds!r:.40}")
    start, stop = bounds
    for value in (start, stop):
        _check_whole(value, name, 0)
    if start >= limit or stop <= start:
        raise InputError(f"{name} {start}..{stop} is outside the 0..{limit} cells of this level")
    return int(start), int(min(stop, limit))


def _numpy(values: np.ndarray | torch.Tensor, dtype: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(values), dtype=dtype)


def _line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:300]


def _refuse_links(root: Path) -> None:
    """Nothing under `root` may be a symbolic link (a chunk linked to a file
    elsewhere would be read as map data)."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = Path(folder) / name
            if path.is_symlink():
                raise RecordFormatError(f"{path} is a symbolic link; a map store holds none")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise RecordFormatError(f"{path} is missing: not a complete map store")
    with path.open("rb") as handle:
        raw = handle.read(MAX_METADATA_BYTES + 1)
    if len(raw) > MAX_METADATA_BYTES:
        raise RecordFormatError(
            f"{path} is larger than {MAX_METADATA_BYTES >> 10} KiB: not zarr metadata"
        )
    try:
        value = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise RecordFormatError(f"{path} is not valid JSON: {_line(error)}") from None
    if not isinstance(value, dict):
        raise RecordFormatError(f"{path} must hold a JSON object")
    return value


def _schema_of(root: Path) -> object:
    try:
        return _read_json(root / METADATA).get("attributes", {}).get("schema")
    except (RecordFormatError, AttributeError):
        return None


def _field(attributes: dict, key: str, path: Path, *, minimum: int = 1, optional: bool = False):
    value = attributes.get(key)
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecordFormatError(
            f"{path}: the attribute {key!r} must be a whole number >= {minimum}, got {value!r:.40}"
        )
    return value


def _check_attributes(root: Path) -> dict[str, Any]:
    path = root / METADATA
    meta = _read_json(path)
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise RecordFormatError(f"{path} is not a zarr v3 group: not a map store")
    attributes = meta.get("attributes")
    if not isinstance(attributes, dict) or attributes.get("schema") != SCHEMA:
        found = attributes.get("schema") if isinstance(attributes, dict) else None
        raise RecordFormatError(f"{path} holds a {found!r:.60}, expected {SCHEMA!r}")
    version = attributes.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise RecordFormatError(
            f"{path} has schema version {version!r:.20}; this headscope reads version "
            f"{SCHEMA_VERSION}"
        )
    n = _field(attributes, "n_tokens", path)
    n_layers = _field(attributes, "n_layers", path)
    n_heads = _field(attributes, "n_heads", path)
    chunk = _field(attributes, "chunk", path)
    _field(attributes, "top_k", path, optional=True)
    levels = _field(attributes, "levels", path)
    if levels != pyramid_levels(n, chunk):
        raise RecordFormatError(
            f"{path}: {levels} levels do not fit {n} tokens in chunks of {chunk} "
            f"(expected {pyramid_levels(n, chunk)})"
        )
    heads = attributes.get("heads")
    if not isinstance(heads, list) or not all(
        isinstance(p, list)
        and len(p) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in p)
        and 0 <= p[0] < n_layers
        and 0 <= p[1] < n_heads
        for p in heads
    ):
        raise RecordFormatError(
            f"{path}: the attribute 'heads' must list [layer, head] pairs within "
            f"{n_layers} layers × {n_heads} heads"
        )
    if len({tuple(p) for p in heads}) != len(heads):
        raise RecordFormatError(f"{path}: the attribute 'heads' lists a head twice")
    if attributes.get("complete") is not True:
        raise RecordFormatError(
            f"{root} is an unfinished map store (its capture did not complete); capture it again"
        )
    meta_values = attributes.get("meta", {})
    if not isinstance(meta_values, dict):
        raise RecordFormatError(f"{path}: the attribute 'meta' must be an object")
    return attributes


def _expected_arrays(attributes: dict) -> dict[str, tuple[tuple, tuple, str]]:
    n, chunk, levels = attributes["n_tokens"], attributes["chunk"], attributes["levels"]
    expected: dict[str, tuple[tuple, tuple, str]] = {}
    for layer, head in attributes["heads"]:
        for level in range(levels):
            side = level_side(n, level)
            size = min(chunk, side)
            for reduce in ("max",) if level == 0 else REDUCTIONS:
                name = _array_path(layer, head, level, reduce)
                expected[name] = ((side, side), (size, size), "float32")
    top_k = attributes["top_k"]
    if top_k is not None:
        shape = (attributes["n_layers"], attributes["n_heads"], n, top_k)
        chunks = (1, 1, min(TOPK_ROWS, n), top_k)
        expected["topk/keys"] = (shape, chunks, "int32")
        expected["topk/weights"] = (shape, chunks, "float32")
    return expected


def _check_array_metadata(root: Path, name: str, shape: tuple, chunks: tuple, dtype: str) -> None:
    path = root / name / METADATA
    meta = _read_json(path)
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise RecordFormatError(f"{path} is not a zarr v3 array")
    if meta.get("data_type") != dtype:
        raise RecordFormatError(f"{path} holds {meta.get('data_type')!r:.40}, expected {dtype}")
    if tuple(meta.get("shape") or ()) != shape:
        raise RecordFormatError(
            f"{path} has shape {meta.get('shape')!r:.60}, expected {list(shape)}"
        )
    grid = meta.get("chunk_grid")
    found = (
        grid.get("configuration", {}).get("chunk_shape")
        if isinstance(grid, dict) and grid.get("name") == "regular"
        else None
    )
    if not isinstance(found, list) or tuple(found) != chunks:
        raise RecordFormatError(f"{path} has chunks {found!r:.60}, expected {list(chunks)}")
    codecs = meta.get("codecs")
    names = [c.get("name") if isinstance(c, dict) else c for c in codecs or ()]
    if not names or any(c not in ALLOWED_CODECS for c in names):
        raise RecordFormatError(
            f"{path} uses the codecs {names!r:.80}; a map store uses {sorted(ALLOWED_CODECS)} only"
        )
    if meta.get("storage_transformers"):
        raise RecordFormatError(f"{path} uses storage transformers; a map store uses none")
