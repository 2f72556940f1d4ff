"""Memory estimates and the guard that refuses work which would not fit.

Before a model is loaded (`load_model`) or maps are captured (`capture`),
headscope estimates the bytes the work needs and compares them with the memory
available on the device (psutil for the CPU and MPS, `torch.cuda.mem_get_info`
for CUDA) or with a caller's `max_memory`. Work that does not fit is refused
with a `MemoryLimitError` naming the estimate, what is available and the
options that fit, instead of running out of memory half-way.

The estimates are pure functions of sizes (no allocation, no model), so they
can be tested against known sizes. They count what headscope keeps and the
largest buffers it allocates; allocator slack and framework overhead are not
modelled, so treat them as lower bounds with the right order of magnitude.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from headscope.errors import InputError, MemoryLimitError

#: float32 statistics per (batch, layer, head, query) of a stats capture: entropy,
#: max weight, sink mass, previous-token mass, mean distance (4 bytes each), argmax
#: key (8), key mass and key visibility (4 each, per key): 36 bytes.
STATS_BYTES_PER_QUERY = 5 * 4 + 8 + 2 * 4
#: top-k keys (int64) and weights (float32) per (batch, layer, head, query, k).
TOPK_BYTES = 8 + 4
#: float32 tile buffers of the tiled kernel: scores, probabilities, scratch.
TILE_BUFFERS = 3
#: A forward keeps about this many residual-stream-sized tensors alive at once
#: (residual, norm output, q/k/v, the MLP's 4x hidden layer, hook copies).
ACTIVATION_FACTOR = 16
#: Full-size copies of eager attention scores alive at once inside one layer
#: (scores, masked scores, pattern).
EAGER_COPIES = 3
#: Statistics are stacked over layers at the end of a capture: two copies.
STACKED_COPIES = 2

Where = Literal["device", "host"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def dtype_size(dtype: torch.dtype) -> int:
    """Bytes per element of `dtype`."""
    return torch.empty((), dtype=dtype).element_size()


def format_bytes(n: float) -> str:
    """`1.5 GiB`, `512 MiB`, `12 KiB`, `300 B`."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def parse_size(value: int | str, *, name: str = "max_memory") -> int:
    """Bytes from an int or a string such as `8GB`, `512MiB`, `1.5G`, `2e9`."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a size in bytes or a string like '8GB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", value.lower())
        if match is None or match.group(2) not in _UNITS:
            raise InputError(
                f"{name} {value!r} is not a size; write bytes or e.g. 512MB, 8GB, 16GiB"
            )
        size = int(float(match.group(1)) * _UNITS[match.group(2)])
    else:
        raise InputError(
            f"{name} must be a size in bytes or a string like '8GB', got {type(value).__name__}"
        )
    if size < 1:
        raise InputError(f"{name} must be positive, got {value!r}")
    return size


@dataclass(frozen=True)
class Part:
    label: str
    bytes: int
    where: Where = "host"


@dataclass(frozen=True)
class MemoryEstimate:
    """The bytes a piece of work needs, in named parts, each on the device
    (the model's accelerator) or the host (CPU memory). On a CPU model both are
    the same memory."""

    parts: tuple[Part, ...]

    @property
    def total(self) -> int:
        return sum(part.bytes for part in self.parts)

    def on(self, where: Where) -> int:
        return sum(part.bytes for part in self.parts if part.where == where)

    def describe(self) -> str:
        """`1.2 GiB (maps 1.1 GiB, tile buffers 96 MiB)`: the largest parts named."""
        shown = [p for p in sorted(self.parts, key=lambda p: -p.bytes) if p.bytes > 0]
        details = ", ".join(f"{p.label} {format_bytes(p.bytes)}" for p in shown)
        return f"{format_bytes(self.total)} ({details})" if details else format_bytes(self.total)


# -- what things need ------------------------------------------------------------------------


def weights_estimate(n_floats: int, dtype: torch.dtype, other_bytes: int = 0) -> MemoryEstimate:
    """Weights of `n_floats` floating-point elements loaded in `dtype`, plus
    `other_bytes` of integer tensors kept as stored (both on the device)."""
    name = str(dtype).removeprefix("torch.")
    parts = [Part(f"weights in {name}", n_floats * dtype_size(dtype), "device")]
    if other_bytes:
        parts.append(Part("integer buffers", other_bytes, "device"))
    return MemoryEstimate(tuple(parts))


def capture_estimate(
    *,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    d_model: int,
    d_head: int,
    batch: int,
    n_tokens: int,
    n_maps: int,
    map_layers: int = 0,
    mode: Literal["maps", "stats"] = "maps",
    kernel: Literal["tiled", "eager"] = "tiled",
    query_tile: int = 128,
    top_k: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> MemoryEstimate:
    """Memory of one `capture` call.

    - maps kept: `n_maps` (layer, head) maps of `batch × n_tokens²` float32 (the
      result, filled in place as layers run; host);
    - statistics (`mode="stats"`): 36 bytes per (batch, layer, head, query),
      twice (per-layer results and the stacked record), plus top-k (12 bytes per
      key kept) (host);
    - tile buffers (tiled kernel): 3 float32 buffers of `batch · n_heads ·
      query_tile · n_tokens` (device), plus, for the maps of one layer, its
      kept heads in float32 before they move to the host (`n_maps / map_layers`
      heads; device);
    - eager attention (`kernel="eager"`): 3 copies of one layer's `batch ·
      n_heads · n_tokens²` scores in the model dtype, and the pattern of every
      layer read (`map_layers` of them) until the forward ends (device);
    - activations: 16 residual-stream-sized tensors in the model dtype and the
      float32 q, k, v and output of one layer (device).
    """
    b, n = batch, n_tokens
    f32 = 4
    itemsize = dtype_size(dtype)
    parts = [Part("maps", n_maps * b * n * n * f32)]
    if mode == "stats":
        stats = STACKED_COPIES * n_layers * b * n_heads * n * STATS_BYTES_PER_QUERY
        parts.append(Part("statistics", stats))
        if top_k:
            topk = STACKED_COPIES * n_layers * b * n_heads * n * min(top_k, n) * TOPK_BYTES
            parts.append(Part("top-k keys", topk))
    if kernel == "tiled":
        rows = min(query_tile, n)
        parts.append(Part("tile buffers", TILE_BUFFERS * b * n_heads * rows * n * f32, "device"))
        if n_maps:
            per_layer = math.ceil(n_maps / max(map_layers, 1))
            kernel_maps = per_layer * b * n * n * f32
            parts.append(Part("one layer's maps in the kernel", kernel_maps, "device"))
    else:
        layer_scores = b * n_heads * n * n * itemsize
        parts.append(Part("eager attention scores", EAGER_COPIES * layer_scores, "device"))
        parts.append(Part("eager patterns read", map_layers * layer_scores, "device"))
    qkv = b * n * (n_heads + 2 * n_kv_heads + n_heads) * d_head * f32
    parts.append(
        Part("activations", ACTIVATION_FACTOR * b * n * d_model * itemsize + qkv, "device")
    )
    return MemoryEstimate(tuple(parts))


def checkpoint_size(directory: str | Path) -> tuple[int, int] | None:
    """(floating-point elements, bytes of other tensors) of the weights in a
    `save_pretrained` directory, read from the safetensors headers alone (no
    tensor is loaded). None when the directory holds no safetensors weights or
    a header cannot be read (the loader then names the problem)."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    floats = other = 0
    for file in files:
        try:
            header = safetensors_header(file)
        except SafetensorsFormatError:
            return None
        for name, entry in header.items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            numel = math.prod(entry.get("shape", []))
            kind = str(entry.get("dtype", ""))
            if kind.startswith(("F", "BF")):
                floats += numel
            else:
                start, end = entry.get("data_offsets", (0, 0))
                other += int(end) - int(start)
    return floats, other


#: A safetensors header larger than this is not one (the format caps it at 100 MB).
MAX_HEADER = 100_000_000
#: How files that are not safetensors start: a zip archive (torch.save) or a pickle.
_PICKLE_STARTS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class SafetensorsFormatError(ValueError):
    """Why a file is not a usable safetensors file (`pickle` True when it is one)."""

    def __init__(self, reason: str, *, pickle: bool = False) -> None:
        super().__init__(reason)
        self.pickle = pickle


def safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size.

    Raises SafetensorsFormatError saying what is wrong: a pickle or zip archive
    (`torch.save`) under a safetensors name, a header that is not JSON, data
    that ends before the tensors the header lists (truncated) or runs past
    them. Reads the header only, never a tensor."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
            if length is None or length > MAX_HEADER or 8 + length > size:
                if prefix.startswith(_PICKLE_STARTS):
                    raise SafetensorsFormatError(
                        "is a pickle (torch.save format), not safetensors", pickle=True
                    )
                if length is None:
                    raise SafetensorsFormatError(
                        f"is truncated: {size} bytes, too short for a header"
                    )
                if length > MAX_HEADER:
                    raise SafetensorsFormatError(
                        "is not safetensors (its header length is impossible)"
                    )
                raise SafetensorsFormatError(
                    f"is truncated: it ends inside its header ({size} of {8 + length} bytes)"
                )
            raw = handle.read(length)
    except OSError as error:
        raise SafetensorsFormatError(f"cannot be read: {error.strerror or error}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise SafetensorsFormatError("is not safetensors (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError("is not safetensors (its header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise SafetensorsFormatError(f"is corrupt: header entry {name!r} has no data offsets")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise SafetensorsFormatError(
            f"is truncated: its tensors need {8 + length + end} bytes but the file has {size}"
        )
    if 8 + length + end < size:
        raise SafetensorsFormatError(
            f"is corrupt: {size - 8 - length - end} bytes follow the last tensor"
        )
    return header


# -- what is there ---------------------------------------------------------------------------


def available_memory(device: str | torch.device) -> int:
    """Bytes free for new allocations on `device`: `torch.cuda.mem_get_info` for
    CUDA, the system's available memory (psutil) for the CPU and MPS (which
    shares it)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(
    estimate: MemoryEstimate,
    *,
    device: str | torch.device,
    what: str,
    max_memory: int | None = None,
    options: Callable[[Callable[[MemoryEstimate], bool]], list[str]] | None = None,
) -> None:
    """Raise MemoryLimitError when `estimate` exceeds the memory available.

    On a CPU (or MPS, which shares it) model every part counts against the
    host's available memory; on CUDA the device parts count against the GPU's
    free memory and the host parts against the host's. `max_memory` (bytes)
    caps what counts as available (tests use it to trigger the refusal without
    allocating). `options(fits)` lists the alternatives for which
    `fits(other_estimate)` holds; they are named in the message.
    """
    device = torch.device(device)
    budgets: list[tuple[Callable[[MemoryEstimate], int], int, str]] = []
    places: list[tuple[Callable[[MemoryEstimate], int], torch.device, str]]
    if device.type == "cuda":
        places = [
            (lambda e: e.on("device"), device, str(device)),
            (lambda e: e.on("host"), torch.device("cpu"), "cpu"),
        ]
    else:
        shared = "cpu" if device.type == "cpu" else f"{device.type} (shared with the cpu)"
        places = [(lambda e: e.total, torch.device("cpu"), shared)]
    for needed, place, where in places:
        if needed(estimate) == 0:
            continue
        free, source = available_memory(place), f"available on {where}"
        if max_memory is not None and max_memory < free:
            free, source = max_memory, "allowed (max_memory)"
        budgets.append((needed, free, source))

    def fits(other: MemoryEstimate) -> bool:
        return all(needed(other) <= free for needed, free, _ in budgets)

    for needed, free, source in budgets:
        if needed(estimate) <= free:
            continue
        alternatives = options(fits) if options is not None else []
        hint = (
            "; options that fit: " + "; ".join(alternatives)
            if alternatives
            else "; free some memory or use a machine with more"
        )
        raise MemoryLimitError(
            f"{what} needs about {estimate.describe()} but only {format_bytes(free)} is "
            f"{source}{hint}"
        )


def largest_fitting(fits: Callable[[int], bool], upper: int) -> int:
    """The largest n in [1, upper] with fits(n) (fits is monotone: true below
    some n), or 0 when not even 1 fits."""
    if upper < 1 or not fits(1):
        return 0
    low, high = 1, upper
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
