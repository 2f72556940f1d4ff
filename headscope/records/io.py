"""Saving and loading records: safetensors for tensors, a JSON sidecar for the rest.

Nothing here unpickles. The sidecar stores the sha256 of the tensor file and
the shape of every tensor, so a tampered or mismatched pair fails loudly.

Reading treats both files as untrusted input: each must be a regular file that
resolves inside the record directory (a symlink out of it is refused), the
sidecar is capped in size and nesting depth before and while it is parsed, and
the tensor file's header is checked before safetensors reads it. Every problem
is a one-line `RecordFormatError` naming the file. Files are written atomically,
with the permissions of any new file (0666 less the umask, 0644 usually), and a
record is never written over another one unless `overwrite=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
import secrets
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from headscope.errors import RecordExistsError, RecordFormatError

TENSOR_FILE = "tensors.safetensors"
SIDECAR_FILE = "record.json"
#: A sidecar holds token strings and a few small fields: 256 MiB is millions of tokens.
MAX_SIDECAR_BYTES = 256 << 20
#: A record's sidecar nests 4 levels deep (record → tokens → prompt → token).
MAX_JSON_DEPTH = 16
#: The safetensors header of a record lists a dozen tensors (safetensors itself allows 100 MB).
MAX_TENSOR_HEADER_BYTES = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_hash(sidecar: dict) -> str:
    body = {k: v for k, v in sidecar.items() if k != "sidecar_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _temporary(path: Path) -> Path:
    """A new empty file beside `path`, created like any new file (mode 0666 less
    the umask; `tempfile.mkstemp` would make it 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _atomic_write(path: Path, write) -> None:
    try:
        tmp = _temporary(path)
    except OSError as error:
        raise RecordFormatError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        mode = tmp.stat().st_mode & 0o777  # what the umask gave a new file
        write(str(tmp))
        os.chmod(tmp, mode)  # a writer may have replaced the file (safetensors does)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise RecordFormatError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def holds_record(directory: str | os.PathLike) -> bool:
    """Whether `directory` already holds (part of) a saved record."""
    root = Path(directory)
    return any(
        (root / name).exists() or (root / name).is_symlink() for name in (SIDECAR_FILE, TENSOR_FILE)
    )


def refuse_existing(directory: str | os.PathLike, overwrite: bool) -> None:
    """Raise RecordExistsError when `directory` holds a record and `overwrite` is False."""
    if not overwrite and holds_record(directory):
        raise RecordExistsError(
            f"{directory} already holds a record; pass overwrite=True "
            "(--overwrite on the command line) to replace it, or choose another directory"
        )


def write_record(
    directory: str | os.PathLike,
    kind: str,
    version: int,
    tensors: dict[str, Tensor],
    meta: dict,
    *,
    overwrite: bool = False,
) -> Path:
    """Write `tensors` and `meta` into `directory` (created if needed), each file atomically.

    Raises RecordExistsError when `directory` already holds a record and
    `overwrite` is False, RecordFormatError when it cannot be written.
    """
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RecordFormatError(f"cannot create the output directory {out}: {error}") from None
    if not os.access(out, os.W_OK):
        raise RecordFormatError(f"the output directory {out} is not writable")
    refuse_existing(out, overwrite)
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


def inside(root: Path, name: str) -> Path:
    """`root / name`, resolved, checked to be a regular file inside `root`
    (a symlink may point elsewhere in the directory, never out of it)."""
    path = root / name
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise RecordFormatError(f"{path} is missing (or is a link to nothing)") from None
    except (OSError, RuntimeError) as error:  # a symlink loop, no permission
        raise RecordFormatError(f"{path} cannot be resolved: {error}") from None
    if not resolved.is_relative_to(root.resolve()):
        raise RecordFormatError(
            f"{path} is a link to {resolved}, outside the record directory; refusing to follow it"
        )
    if not resolved.is_file():
        raise RecordFormatError(f"{path} is not a regular file")
    return resolved


def inside_dir(root: Path, name: str) -> Path:
    """`root / name` checked to be a directory inside `root` (not a link out of it)."""
    path = root / name
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise RecordFormatError(f"{path} is missing (or is a link to nothing)") from None
    except (OSError, RuntimeError) as error:
        raise RecordFormatError(f"{path} cannot be resolved: {error}") from None
    if not resolved.is_relative_to(root.resolve()) or resolved == root.resolve():
        raise RecordFormatError(
            f"{path} is a link to {resolved}, outside the record directory; refusing to follow it"
        )
    if not resolved.is_dir():
        raise RecordFormatError(f"{path} is not a directory")
    return path


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, depth + 1) for child in children)
    return deepest


def _read_sidecar(root: Path) -> tuple[Path, dict[str, Any]]:
    sidecar_path = root / SIDECAR_FILE
    if not sidecar_path.exists() and not sidecar_path.is_symlink():
        raise RecordFormatError(f"{root} has no {SIDECAR_FILE}; is it a saved headscope record?")
    resolved = inside(root, SIDECAR_FILE)
    with resolved.open("rb") as handle:
        raw = handle.read(MAX_SIDECAR_BYTES + 1)
    if len(raw) > MAX_SIDECAR_BYTES:
        raise RecordFormatError(
            f"{sidecar_path} is larger than {MAX_SIDECAR_BYTES >> 20} MiB: not a record sidecar"
        )
    try:
        meta = json.loads(raw.decode("utf-8"))
        too_deep = _depth(meta) > MAX_JSON_DEPTH
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        message = str(error).splitlines()[0]
        raise RecordFormatError(f"{sidecar_path} is not valid JSON: {message}") from None
    except RecursionError:
        too_deep = True
    if too_deep:
        raise RecordFormatError(
            f"{sidecar_path} is nested more than {MAX_JSON_DEPTH} levels deep: not a record sidecar"
        )
    if not isinstance(meta, dict):
        raise RecordFormatError(f"{sidecar_path} must hold a JSON object")
    return sidecar_path, meta


_MAGIC = {b"\x80": "a pickle (headscope never unpickles)", b"PK": "a zip archive (torch.save?)"}


def _load_tensors(path: Path, resolved: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, its header checked before safetensors reads it."""
    size = resolved.stat().st_size
    with resolved.open("rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        state = "empty" if size == 0 else f"truncated ({size} bytes)"
        raise RecordFormatError(f"{path} is {state}: not a safetensors file")
    header = int.from_bytes(head, "little")
    if header > MAX_TENSOR_HEADER_BYTES or 8 + header > size:
        # Only now: a valid header length may well start with these bytes.
        for magic, what in _MAGIC.items():
            if head.startswith(magic):
                raise RecordFormatError(f"{path} is {what}, not a safetensors file")
        raise RecordFormatError(
            f"{path} is truncated or not a safetensors file: its header claims {header} bytes "
            f"and the file has {size}"
        )
    try:
        return load_file(str(resolved))
    except (SafetensorError, ValueError, TypeError, RuntimeError, OSError) as error:
        message = (str(error).splitlines() or [type(error).__name__])[0]
        raise RecordFormatError(f"{path} is not a valid safetensors file: {message}") from None


def read_record(
    directory: str | os.PathLike, kind: str, version: int
) -> tuple[dict[str, Tensor], dict]:
    """Read and verify a record written by `write_record`.

    Raises RecordFormatError when files are missing, are links out of the
    directory, the JSON is malformed, oversized, nested too deeply or was edited
    (the sidecar carries a hash of its own content), the schema or version
    differs, or the tensor file is not safetensors or its hash or shapes do not
    match.
    """
    root = Path(directory)
    sidecar_path, meta = _read_sidecar(root)
    if meta.get("sidecar_sha256") != _content_hash(meta):
        raise RecordFormatError(
            f"{sidecar_path} was edited after it was written (its content hash does not match)"
        )
    if meta.get("schema") != kind:
        raise RecordFormatError(
            f"{sidecar_path} holds a {reprlib.repr(meta.get('schema'))}, expected {kind!r}"
        )
    found = meta.get("schema_version")
    if not isinstance(found, int) or isinstance(found, bool) or found != version:
        raise RecordFormatError(
            f"{sidecar_path} has schema version {reprlib.repr(found)}; "
            f"this headscope reads version {version}"
        )
    if meta.get("tensor_file") != TENSOR_FILE:
        raise RecordFormatError(
            f"{sidecar_path} names the tensor file {reprlib.repr(meta.get('tensor_file'))}; "
            f"a record's tensors are in {TENSOR_FILE!r}"
        )
    tensor_path = root / TENSOR_FILE
    if not tensor_path.exists() and not tensor_path.is_symlink():
        raise RecordFormatError(f"the tensor file named in {sidecar_path} is missing")
    resolved = inside(root, TENSOR_FILE)
    if _sha256(resolved) != meta.get("tensor_sha256"):
        raise RecordFormatError(
            f"{tensor_path} does not match the sha256 in {SIDECAR_FILE}: "
            "one of the two files was changed or replaced"
        )
    tensors = _load_tensors(tensor_path, resolved)
    shapes = meta.get("tensor_shapes")
    if not isinstance(shapes, dict) or {k: list(v.shape) for k, v in tensors.items()} != shapes:
        raise RecordFormatError(f"tensor shapes in {sidecar_path} do not match {tensor_path}")
    return tensors, meta


def require(
    meta: dict, key: str, kinds: type | tuple[type, ...], path: str | os.PathLike | None = None
) -> Any:
    """meta[key], checked to be present and of the given type(s) (a bool is no int);
    errors name `path` (the sidecar)."""
    where = path if path is not None else SIDECAR_FILE
    if key not in meta:
        raise RecordFormatError(f"{where} is missing the field {key!r}")
    value = meta[key]
    accepted = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in accepted):
        names = " or ".join(k.__name__ for k in accepted)
        raise RecordFormatError(
            f"{where}: the field {key!r} must be {names}, got {type(value).__name__}"
        )
    return value
