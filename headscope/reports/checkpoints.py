"""Checkpoints for resumable report jobs, verified before they are reused.

Everything an executor task computes is written atomically (temporary file,
then rename) under `DIR/.shards/<config hash>/`, so a killed job leaves either
a whole file or none, and a rerun of the same command (same config hash)
reuses it. A different config (model weights, prompts, methods, metric,
checkpoint layout...) gets its own folder. Layout (LAYOUT = 5), safetensors
only (arrays plus a small JSON header, never pickles):

- `config.json`: the job identity the folder's name hashes.
- `shard-NNNNN.safetensors`, one per shard, from one executor task:
  `score/<method>` float64 `[unit, layer, head]`; `clean` float64 `[prompt]`
  (the metric with every head on, per prompt); for the shard's i-th prompt
  `prompt/<i>/taxonomy/<category>` `[layer, head]`, `prompt/<i>/support/<category>`
  int64 `[layer, head]` (the queries defining each score), `prompt/<i>/sinks`
  `[layer, head, key]`, `prompt/<i>/influence` and
  `prompt/<i>/influence_baseline` `[layer, distance]`; metadata `methods`
  (JSON list, score order), `prompts` (JSON: per prompt its tokens, whether
  BOS was prepended, its taxonomy and support categories in order, and whether
  the model is causal) and `scoring`
  (JSON: per method its unit labels, its warning and the prompts it applies
  to; per prompt the target rule it resolved to and its number of scored
  tokens).
- `pruning.safetensors`, from the final task: `fractions`, `curve/<method>`
  and `clean` (float64); metadata `methods`, `n_prompts` and
  `orders_sha256`, the digest of the mean scores that ranked the heads.

Every file's metadata also holds `layout`, `checkpoint` (`shard-N` or
`pruning`: which slot it fills), `config_sha256` (the full sha256 of the job
identity it was computed under) and `content_sha256` (`content_digest`: every
tensor's name, dtype, shape and bytes, and every other metadata entry). A
checkpoint is reused only when it verifies (`ShardStore.load`,
`ShardStore.load_pruning`): readable safetensors, this layout, this slot, this
configuration, contents matching their digest, and the shapes the job expects
(`Expected`: its prompts, methods and the model's layer × head grid).
Anything else (tampered tensors, a truncated, empty or foreign file, another
layout or configuration) raises `CheckpointError` with the reason, and the
job recomputes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from headscope.errors import CheckpointError
from headscope.experiments.scoring import PER_PROMPT
from headscope.experiments.summaries import PromptSummary
from headscope.reports.files import Staging, atomic_write_bytes, clean_stale, make_dir
from headscope.reports.scoring import ShardScores
from headscope.reports.summaries import PruningCurves

#: Version of the checkpoint layout; part of the job identity (and so of the
#: folder's hash), and checked in every file's metadata. 4: verified
#: checkpoints (slot, configuration and content digests in the metadata).
LAYOUT = 5


def config_hash(config: dict) -> str:
    """A short stable hash of a JSON-able config."""
    return config_sha256(config)[:16]


def config_sha256(config: dict) -> str:
    """The sha256 of a JSON-able config (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def orders_digest(orders: Mapping[str, np.ndarray]) -> str:
    """sha256 of the method names and importances (float64 bytes) that rank heads for pruning."""
    digest = hashlib.sha256()
    for method, mean in orders.items():
        digest.update(method.encode() + b"\0")
        digest.update(np.ascontiguousarray(mean, dtype=np.float64).tobytes())
    return digest.hexdigest()


def content_digest(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 of a checkpoint's contents: every tensor's name, dtype, shape and
    bytes (by name), then every metadata entry but `content_sha256` itself."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode() + b"\0")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    for key in sorted(metadata):
        if key != "content_sha256":
            digest.update(json.dumps([key, metadata[key]]).encode() + b"\0")
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


@dataclass(frozen=True)
class Expected:
    """What a shard checkpoint of this job must hold: its prompts' line numbers
    (in order), the methods (in order) and the model's `(layers, heads)` grid."""

    lines: tuple[int, ...]
    methods: tuple[str, ...]
    grid: tuple[int, int]


class ShardStore:
    """Where the checkpoints of one report job live. Creating it makes the
    folder (an `OutputError` naming the path when it cannot)."""

    def __init__(self, out_dir: str | Path, config: dict) -> None:
        self.config_sha256 = config_sha256(config)
        self.root = Path(out_dir) / ".shards" / self.config_sha256[:16]
        make_dir(self.root, "create the checkpoint folder")
        config_file = self.root / "config.json"
        if not config_file.is_file():
            atomic_write_bytes(config_file, json.dumps(config, sort_keys=True, indent=1).encode())

    def path(self, index: int) -> Path:
        return self.root / f"shard-{index:05d}.safetensors"

    @property
    def pruning_path(self) -> Path:
        return self.root / "pruning.safetensors"

    def exists(self, index: int) -> bool:
        """Whether anything sits where shard `index`'s checkpoint goes."""
        path = self.path(index)
        return path.exists() or path.is_symlink()

    def done(self, index: int, expected: Expected | None = None) -> bool:
        """Whether shard `index` is checkpointed and verifies (see `load`)."""
        try:
            self.load(index, expected)
        except CheckpointError:
            return False
        return True

    def save(self, index: int, result: ShardResult) -> None:
        scoring = result.scoring
        tensors = {f"score/{method}": _float64(t) for method, t in scoring.scores.items()}
        tensors["clean"] = _float64(scoring.clean)
        prompts = []
        for i, summary in enumerate(result.summaries):
            for name, value in summary.taxonomy.items():
                tensors[f"prompt/{i}/taxonomy/{name}"] = _array(value)
            for name, value in summary.support.items():
                tensors[f"prompt/{i}/support/{name}"] = torch.tensor(
                    np.asarray(value, dtype=np.int64)
                )
            tensors[f"prompt/{i}/sinks"] = _array(summary.sinks)
            tensors[f"prompt/{i}/influence"] = _array(summary.influence)
            tensors[f"prompt/{i}/influence_baseline"] = _array(summary.influence_baseline)
            prompts.append(
                {
                    "tokens": list(summary.tokens),
                    "bos_prepended": bool(summary.bos_prepended),
                    "taxonomy": list(summary.taxonomy),
                    "support": list(summary.support),
                    "causal": summary.causal,
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
        self._write(self.path(index), f"shard-{index}", tensors, metadata)

    def load(self, index: int, expected: Expected | None = None) -> ShardResult:
        """Shard `index`'s result; `CheckpointError` (with the reason) when it is
        missing or does not verify: unreadable or not safetensors, another
        layout, slot or configuration, contents not matching their digest, or
        (given `expected`) not the prompts, methods and shapes of this job."""
        tensors, metadata = self._read(self.path(index), f"shard-{index}")
        try:
            result = _shard_result(tensors, metadata)
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            raise CheckpointError(f"malformed shard: {_brief(error)}") from None
        if expected is not None:
            _check_shard(result, expected)
        return result

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
        self._write(self.pruning_path, "pruning", tensors, metadata)

    def load_pruning(
        self, digest: str, methods: tuple[str, ...] | None = None
    ) -> PruningCurves | None:
        """The checkpointed curves, or None when there are none; `CheckpointError`
        when the file does not verify (as `load`) or the curves were ranked by
        other mean scores than `digest` (or, given `methods`, other methods)."""
        path = self.pruning_path
        if not (path.exists() or path.is_symlink()):
            return None
        tensors, metadata = self._read(path, "pruning")
        if metadata.get("orders_sha256") != digest:
            raise CheckpointError("its curves were ranked by other mean scores")
        try:
            names = json.loads(metadata["methods"])
            curves = {m: tuple(tensors[f"curve/{m}"].tolist()) for m in names}
            fractions = tuple(tensors["fractions"].tolist())
            pruning = PruningCurves(
                fractions=fractions,
                curves=curves,
                clean=float(tensors["clean"].reshape(-1)[0]),
                n_prompts=int(metadata["n_prompts"]),
            )
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as error:
            raise CheckpointError(f"malformed pruning curves: {_brief(error)}") from None
        if methods is not None and list(names) != list(methods):
            raise CheckpointError(f"curves for methods {names}, expected {list(methods)}")
        if any(
            tensors[f"curve/{m}"].dim() != 1 or len(c) != len(fractions) for m, c in curves.items()
        ):
            raise CheckpointError("curve lengths differ from the pruned fractions")
        return pruning

    def clean_temporaries(self) -> None:
        """Remove the temporaries killed runs left (never a live run's: `files.clean_stale`)."""
        clean_stale(self.root, (".*.tmp", ".tmp-*"))

    def _write(
        self, path: Path, slot: str, tensors: dict[str, Tensor], metadata: dict[str, str]
    ) -> None:
        metadata = {
            **metadata,
            "layout": str(LAYOUT),
            "checkpoint": slot,
            "config_sha256": self.config_sha256,
        }
        metadata["content_sha256"] = content_digest(tensors, metadata)
        data = save(tensors, metadata=metadata)
        with Staging() as staging, staging.writing(path) as tmp:
            tmp.write_bytes(data)

    def _read(self, path: Path, slot: str) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The tensors and metadata of the checkpoint for `slot`, verified:
        this layout, slot and configuration, and contents matching their digest."""
        if not path.is_file():
            raise CheckpointError("not a file" if path.exists() else "no checkpoint")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except Exception as error:  # any failure to parse means: not a usable checkpoint
            if path.stat().st_size == 0:
                raise CheckpointError("an empty file") from None
            raise CheckpointError(f"not a readable safetensors file: {_brief(error)}") from None
        layout = metadata.get("layout")
        if layout != str(LAYOUT):
            raise CheckpointError(
                f"checkpoint layout {layout}, expected {LAYOUT}"
                if layout
                else "no checkpoint layout in its header"
            )
        if metadata.get("checkpoint") != slot:
            raise CheckpointError(f"it holds {metadata.get('checkpoint')}, not {slot}")
        if metadata.get("config_sha256") != self.config_sha256:
            raise CheckpointError("computed under another configuration")
        if metadata.get("content_sha256") != content_digest(tensors, metadata):
            raise CheckpointError("contents do not match their sha256: tampered with or corrupted")
        return tensors, metadata


def _shard_result(tensors: dict[str, Tensor], metadata: dict[str, str]) -> ShardResult:
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
                support={
                    name: tensors[f"prompt/{i}/support/{name}"].numpy()
                    for name in prompt["support"]
                },
                causal=prompt["causal"],
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


def _check_shard(result: ShardResult, expected: Expected) -> None:
    """CheckpointError unless `result` holds the expected prompts, methods and shapes."""
    scoring = result.scoring
    n = len(expected.lines)
    layers, heads = expected.grid
    if list(scoring.scores) != list(expected.methods):
        raise CheckpointError(
            f"scores for methods {list(scoring.scores)}, expected {list(expected.methods)}"
        )
    counts = {
        "prompt summaries": len(result.summaries),
        "clean metrics": scoring.clean.numel() if scoring.clean.dim() == 1 else -1,
        "prompt targets": len(scoring.prompt_targets),
        "target token counts": len(scoring.target_tokens),
    }
    for what, count in counts.items():
        if count != n:
            raise CheckpointError(f"{count} {what} for {n} prompts")
    lines = tuple(f"line-{line}" for line in expected.lines)
    for method, scores in scoring.scores.items():
        units = scoring.units[method]
        if scores.dtype != torch.float64 or tuple(scores.shape) != (len(units), layers, heads):
            raise CheckpointError(
                f"score/{method} has shape {list(scores.shape)} ({scores.dtype}), expected "
                f"[{len(units)}, {layers}, {heads}] float64"
            )
        if method in PER_PROMPT and units != lines:
            raise CheckpointError(f"{method} scores other prompts than this shard's")
    for i, summary in enumerate(result.summaries):
        shapes = {
            **{f"taxonomy/{name}": value.shape for name, value in summary.taxonomy.items()},
            **{f"support/{name}": value.shape for name, value in summary.support.items()},
            "sinks": summary.sinks.shape,
            "influence": summary.influence.shape,
            "influence_baseline": summary.influence_baseline.shape,
        }
        for name, shape in shapes.items():
            if name.startswith(("taxonomy/", "support/")):
                fits = shape == (layers, heads)
            elif name == "sinks":
                fits = len(shape) == 3 and shape[:2] == (layers, heads)
            else:
                fits = len(shape) == 2 and shape[0] == layers
            if not fits:
                raise CheckpointError(f"prompt/{i}/{name} has shape {list(shape)}")


def _brief(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _float64(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu", torch.float64).contiguous()


def _array(value: np.ndarray) -> Tensor:
    # A contiguous copy in the array's own dtype: the reload gives back the same bits.
    return torch.from_numpy(np.array(value, order="C", copy=True))
