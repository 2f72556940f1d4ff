"""Saving and loading records: safetensors for tensors, a JSON sidecar for the rest.

Nothing here unpickles. The sidecar stores the sha256 of the tensor file and
the shape of every tensor, so a tampered or mismatched pair fails loudly.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from headscope.errors import RecordFormatError

TENSOR_FILE = "tensors.safetensors"
SIDECAR_FILE = "record.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_hash(sidecar: dict) -> str:
    body = {k: v for k, v in sidecar.items() if k != "sidecar_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(
    directory: str | os.PathLike, kind: str, version: int, tensors: dict[str, Tensor], meta: dict
) -> Path:
    """Write `tensors` and `meta` into `directory` (created if needed), each file atomically."""
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RecordFormatError(f"cannot create the output directory {out}: {error}") from None
    if not os.access(out, os.W_OK):
        raise RecordFormatError(f"the output directory {out} is not writable")
    tensor_path = out / TENSOR_FILE
    contiguous = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    _atomic_write(tensor_path, lambda tmp: save_file(contiguous, tmp))
    sidecar = {
        "schema": kind,
        "schema_version": version,
        "tensor_file": TENSOR_FILE,
        "tensor_sha256": _sha256(tensor_path),
        "tensor_shapes": {name: list(t.shape) for name, t in contiguous.items()},
        **meta,
    }
    sidecar["sidecar_sha256"] = _content_hash(sidecar)

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")

    _atomic_write(out / SIDECAR_FILE, write_json)
    return out


def read_record(
    directory: str | os.PathLike, kind: str, version: int
) -> tuple[dict[str, Tensor], dict]:
    """Read and verify a record written by `write_record`.

    Raises RecordFormatError when files are missing, the JSON is malformed or
    was edited (the sidecar carries a hash of its own content), the schema or
    version differs, or the tensor file's hash or shapes do not match.
    """
    root = Path(directory)
    sidecar_path = root / SIDECAR_FILE
    if not sidecar_path.is_file():
        raise RecordFormatError(f"{root} has no {SIDECAR_FILE}; is it a saved headscope record?")
    try:
        meta: dict[str, Any] = json.loads(sidecar_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecordFormatError(f"{sidecar_path} is not valid JSON: {error}") from None
    if not isinstance(meta, dict):
        raise RecordFormatError(f"{sidecar_path} must hold a JSON object")
    if meta.get("sidecar_sha256") != _content_hash(meta):
        raise RecordFormatError(
            f"{sidecar_path} was edited after it was written (its content hash does not match)"
        )
    if meta.get("schema") != kind:
        raise RecordFormatError(f"{sidecar_path} holds a {meta.get('schema')!r}, expected {kind!r}")
    if meta.get("schema_version") != version:
        raise RecordFormatError(
            f"{sidecar_path} has schema version {meta.get('schema_version')!r}; "
            f"this headscope reads version {version}"
        )
    tensor_path = root / str(meta.get("tensor_file", TENSOR_FILE))
    if tensor_path.parent.resolve() != root.resolve() or not tensor_path.is_file():
        raise RecordFormatError(f"the tensor file named in {sidecar_path} is missing")
    if _sha256(tensor_path) != meta.get("tensor_sha256"):
        raise RecordFormatError(
            f"{tensor_path.name} does not match the sha256 in {SIDECAR_FILE}: "
            "one of the two files was changed or replaced"
        )
    tensors = load_file(str(tensor_path))
    shapes = meta.get("tensor_shapes")
    if not isinstance(shapes, dict) or {k: list(v.shape) for k, v in tensors.items()} != shapes:
        raise RecordFormatError(f"tensor shapes in {SIDECAR_FILE} do not match {tensor_path.name}")
    return tensors, meta


def require(meta: dict, key: str, kinds: type | tuple[type, ...]) -> Any:
    """meta[key], checked to be present and of the given type(s)."""
    if key not in meta:
        raise RecordFormatError(f"{SIDECAR_FILE} is missing the field {key!r}")
    value = meta[key]
    if not isinstance(value, kinds):
        raise RecordFormatError(f"{SIDECAR_FILE} field {key!r} has the wrong type")
    return value
