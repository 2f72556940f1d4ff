"""Checkpoints for resumable report jobs.

Everything an executor task computes is written atomically (temporary file,
then rename) under `DIR/.shards/<config hash>/`, so a killed job leaves either
a whole file or none, and a rerun of the same command (same config hash)
reuses it. A different config (model weights, prompts, methods, metric,
checkpoint layout...) gets its own folder. Layout (LAYOUT = 3), safetensors
only (arrays plus a small JSON header, never pickles):

- `config.json`: the job identity the folder's name hashes.
- `shard-NNNNN.safetensors`, one per shard, from one executor task:
  `score/<method>` float64 `[unit, layer, head]`; `clean` float64 `[prompt]`
  (the metric with every head on, per prompt); for the shard's i-th prompt
  `prompt/<i>/taxonomy/<category>` `[layer, head]`, `prompt/<i>/sinks`
  `[layer, head, key]`, `prompt/<i>/influence` and
  `prompt/<i>/influence_baseline` `[layer, distance]`; metadata `layout`,
  `methods` (JSON list, score order), `prompts` (JSON: per prompt its
  tokens, whether BOS was prepended, and its taxonomy categories in order)
  and `scoring` (JSON: per method its unit labels, its warning and the
  prompts it applies to; per prompt the target rule it resolved to and its
  number of scored tokens).
- `pruning.safetensors`, from the final task: `fractions`, `curve/<method>`
  and `clean` (float64); metadata `layout`, `methods`, `n_prompts` and
  `orders_sha256`, the digest of the mean scores that ranked the heads.

A file of another layout (e.g. a layout-2 shard, without units, warnings,
targets or clean metric) counts as missing and is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from headscope.experiments.summaries import PromptSummary
from headscope.reports.scoring import ShardScores
from headscope.reports.summaries import PruningCurves

#: Version of the checkpoint layout; part of the job identity (and so of the
#: folder's hash), and checked in every file's metadata.
LAYOUT = 3


def config_hash(config: dict) -> str:
    """A short stable hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def orders_digest(orders: Mapping[str, np.ndarray]) -> str:
    """sha256 of the method names and importances (float64 bytes) that rank heads for pruning."""
    digest = hashlib.sha256()
    for method, mean in orders.items():
        digest.update(method.encode() + b"\0")
        digest.update(np.ascontiguousarray(mean, dtype=np.float64).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardResult:
    """One shard's executor task: its `scoring` (scores method → float64
    `[unit, layer, head]` and what they measured, see `ShardScores`) and the
    `summaries` of its prompts, in prompt order."""

    scoring: ShardScores
    summaries: tuple[PromptSummary, ...]

    @property
    def scores(self) -> dict[str, Tensor]:
        return self.scoring.scores


class ShardStore:
    """Where the checkpoints of one report job live."""

    def __init__(self, out_dir: str | Path, config: dict) -> None:
        self.root = Path(out_dir) / ".shards" / config_hash(config)
        self.root.mkdir(parents=True, exist_ok=True)
        config_file = self.root / "config.json"
        if not config_file.exists():
            _atomic_write_bytes(config_file, json.dumps(config, sort_keys=True, indent=1).encode())

    def path(self, index: int) -> Path:
        return self.root / f"shard-{index:05d}.safetensors"

    @property
    def pruning_path(self) -> Path:
        return self.root / "pruning.safetensors"

    def done(self, index: int) -> bool:
        """Whether shard `index` is checkpointed in the current layout (reads its header only)."""
        return _layout(self.path(index)) == str(LAYOUT)

    def save(self, index: int, result: ShardResult) -> None:
        scoring = result.scoring
        tensors = {f"score/{method}": _float64(t) for method, t in scoring.scores.items()}
        tensors["clean"] = _float64(scoring.clean)
        prompts = []
        for i, summary in enumerate(result.summaries):
            for name, value in summary.taxonomy.items():
                tensors[f"prompt/{i}/taxonomy/{name}"] = _array(value)
            tensors[f"prompt/{i}/sinks"] = _array(summary.sinks)
            tensors[f"prompt/{i}/influence"] = _array(summary.influence)
            tensors[f"prompt/{i}/influence_baseline"] = _array(summary.influence_baseline)
            prompts.append(
                {
                    "tokens": list(summary.tokens),
                    "bos_prepended": bool(summary.bos_prepended),
                    "taxonomy": list(summary.taxonomy),
                }
            )
        metadata = {
            "methods": json.dumps(list(scoring.scores)),
            "prompts": json.dumps(prompts),
            "scoring": json.dumps(
                {
                    "units": {m: list(u) for m, u in scoring.units.items()},
                    "warnings": dict(scoring.warnings),
                    "warned": {m: list(p) for m, p in scoring.warned.items()},
                    "prompt_targets": list(scoring.prompt_targets),
                    "target_tokens": list(scoring.target_tokens),
                }
            ),
        }
        self._write(self.path(index), tensors, metadata)

    def load(self, index: int) -> ShardResult:
        tensors, metadata = _read(self.path(index))
        methods = json.loads(metadata["methods"])
        summaries = []
        for i, prompt in enumerate(json.loads(metadata["prompts"])):
            summaries.append(
                PromptSummary(
                    taxonomy={
                        name: tensors[f"prompt/{i}/taxonomy/{name}"].numpy()
                        for name in prompt["taxonomy"]
                    },
                    sinks=tensors[f"prompt/{i}/sinks"].numpy(),
                    influence=tensors[f"prompt/{i}/influence"].numpy(),
                    influence_baseline=tensors[f"prompt/{i}/influence_baseline"].numpy(),
                    tokens=tuple(prompt["tokens"]),
                    bos_prepended=prompt["bos_prepended"],
                )
            )
        extra = json.loads(metadata["scoring"])
        scoring = ShardScores(
            scores={m: tensors[f"score/{m}"] for m in methods},
            units={m: tuple(extra["units"][m]) for m in methods},
            warnings=dict(extra["warnings"]),
            warned={m: tuple(p) for m, p in extra["warned"].items()},
            prompt_targets=tuple(extra["prompt_targets"]),
            target_tokens=tuple(extra["target_tokens"]),
            clean=tensors["clean"],
        )
        return ShardResult(scoring, tuple(summaries))

    def save_pruning(self, pruning: PruningCurves, digest: str) -> None:
        """Checkpoint the pruning curves computed from the mean scores hashed as `digest`."""
        tensors = {
            "fractions": torch.tensor(pruning.fractions, dtype=torch.float64),
            "clean": torch.tensor([pruning.clean], dtype=torch.float64),
        }
        for method, values in pruning.curves.items():
            tensors[f"curve/{method}"] = torch.tensor(values, dtype=torch.float64)
        metadata = {
            "methods": json.dumps(list(pruning.curves)),
            "n_prompts": str(pruning.n_prompts),
            "orders_sha256": digest,
        }
        self._write(self.pruning_path, tensors, metadata)

    def load_pruning(self, digest: str) -> PruningCurves | None:
        """The checkpointed curves, or None when there are none in this layout
        or they were ranked by other mean scores than `digest`."""
        if _layout(self.pruning_path) != str(LAYOUT):
            return None
        tensors, metadata = _read(self.pruning_path)
        if metadata.get("orders_sha256") != digest:
            return None
        return PruningCurves(
            fractions=tuple(tensors["fractions"].tolist()),
            curves={
                m: tuple(tensors[f"curve/{m}"].tolist()) for m in json.loads(metadata["methods"])
            },
            clean=float(tensors["clean"][0]),
            n_prompts=int(metadata["n_prompts"]),
        )

    def clean_temporaries(self) -> None:
        """Remove temporary files a killed run may have left."""
        for leftover in self.root.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)

    def _write(self, path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={**metadata, "layout": str(LAYOUT)})
            _publish(Path(tmp), path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _float64(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu", torch.float64).contiguous()


def _array(value: np.ndarray) -> Tensor:
    # A contiguous copy in the array's own dtype: the reload gives back the same bits.
    return torch.from_numpy(np.array(value, order="C", copy=True))


def _layout(path: Path) -> str | None:
    """The `layout` in a checkpoint's header; None when missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("layout")
    except (SafetensorError, OSError):
        return None


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118


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
