"""Shard checkpoints for resumable report jobs.

Each shard's scores are written atomically (temporary file, then rename) under
`DIR/.shards/<config hash>/`, so a killed job leaves either a whole shard file
or none, and a rerun of the same command (same config hash) skips done shards.
A different config (model weights, prompts, methods, metric...) gets its own folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


def config_hash(config: dict) -> str:
    """A short stable hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class ShardStore:
    """Where the shards of one report job live."""

    def __init__(self, out_dir: str | Path, config: dict) -> None:
        self.root = Path(out_dir) / ".shards" / config_hash(config)
        self.root.mkdir(parents=True, exist_ok=True)
        config_file = self.root / "config.json"
        if not config_file.exists():
            _atomic_write_bytes(config_file, json.dumps(config, sort_keys=True, indent=1).encode())

    def path(self, index: int) -> Path:
        return self.root / f"shard-{index:05d}.safetensors"

    def done(self, index: int) -> bool:
        return self.path(index).is_file()

    def save(self, index: int, scores: dict[str, Tensor]) -> None:
        tensors = {
            name: t.detach().to("cpu", torch.float64).contiguous() for name, t in scores.items()
        }
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp)
            _publish(Path(tmp), self.path(index))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, index: int) -> dict[str, Tensor]:
        return load_file(str(self.path(index)))

    def clean_temporaries(self) -> None:
        """Remove temporary files a killed run may have left."""
        for leftover in self.root.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)


def _publish(tmp: Path, path: Path) -> None:
    """Give a finished temporary file the usual permissions (mkstemp makes it
    owner-only) and rename it onto `path` in one step."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the
    block succeeds, removed when it fails. Readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clean_output_temporaries(out_dir: str | Path) -> None:
    """Remove the temporary report files a killed run may have left in `out_dir`."""
    for leftover in Path(out_dir).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
