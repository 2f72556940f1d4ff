"""Training checkpoints: a series of models of one architecture at several training steps.

    series = hs.load_checkpoints("toy-induction")      # the shipped series
    series.steps                                        # (0, 200, ..., 3000)
    model = series.load(600)                            # a HeadscopeModel
    for step, model in series: ...                      # one model at a time

Sources (docs/methods.md §2.13):

- a built-in name with a shipped series (`toy-induction`: `builtin/toy-induction-checkpoints`);
- a compact series directory: `checkpoints.json` plus `step{N}.safetensors` files holding
  only the weights (any float dtype, cast to the load dtype), sharing the config and
  tokenizer of a built-in or of a `save_pretrained` directory named by `base`
  (`models.toy_training.pack_checkpoints` writes one);
- a directory of `save_pretrained` directories whose names carry the step (`step3000`,
  `checkpoint-3000`, `revision-step3000`: the last number in the name), e.g. Pythia
  revisions pulled for offline use with `headscope pull NAME DIR --revision stepN`;
- a list of `save_pretrained` directories (steps from their names, or `steps=`).

A series is a list of sources, not of loaded models: each `load` boots one model
(memory: one model's weights at a time when iterated).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from headscope.errors import InputError, ModelFileError, ModelNotFoundError
from headscope.models.loading import HeadscopeModel, load_model
from headscope.models.zoo import BUILTIN_DIR, BUILTINS

#: Built-in models with a shipped checkpoint series, and where it lies.
BUILTIN_SERIES: dict[str, Path] = {"toy-induction": BUILTIN_DIR / "toy-induction-checkpoints"}
MANIFEST = "checkpoints.json"
_SHARED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
)


@dataclass(frozen=True)
class CheckpointSource:
    """Where one checkpoint's weights are: a `save_pretrained` directory
    (`weights` None), or a weights-only safetensors file read over the
    config and tokenizer of `directory` (the base)."""

    step: int
    directory: Path
    weights: Path | None = None


@dataclass(frozen=True)
class CheckpointSeries:
    """Checkpoints of one model at increasing training `steps`; `name` says
    which model (`spec.name` of a loaded checkpoint is `name@step{N}`)."""

    name: str
    sources: tuple[CheckpointSource, ...]
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(source.step for source in self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self) -> Iterator[tuple[int, HeadscopeModel]]:
        """(step, model) pairs, loaded one at a time."""
        for source in self.sources:
            yield source.step, self._load(source)

    def load(self, step: int) -> HeadscopeModel:
        """The checkpoint at `step` (InputError naming the steps there are)."""
        for source in self.sources:
            if source.step == step:
                return self._load(source)
        raise InputError(f"{self.name} has no checkpoint at step {step}; steps: {self.steps}")

    def _load(self, source: CheckpointSource) -> HeadscopeModel:
        if source.weights is None:
            model = load_model(source.directory, device=self.device, dtype=self.dtype)
        else:
            model = _load_weights(source, device=self.device, dtype=self.dtype)
        model.spec = replace(model.spec, name=f"{self.name}@step{source.step}")
        return model


def _load_weights(source: CheckpointSource, *, device: str, dtype: str) -> HeadscopeModel:
    """Boot a weights-only checkpoint: the base's config and tokenizer with these
    weights (cast to float32 on disk; `load_model` casts to `dtype`), through a
    temporary `save_pretrained` directory so it loads like any other model."""
    from safetensors.torch import load_file, save_file

    assert source.weights is not None
    try:
        weights = load_file(source.weights)
    except Exception as error:
        raise ModelFileError(f"cannot read {source.weights}: {error}") from None
    full = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    with tempfile.TemporaryDirectory(prefix="headscope-checkpoint-") as scratch:
        folder = Path(scratch)
        for name in _SHARED_FILES:
            if (source.directory / name).is_file():
                (folder / name).write_bytes((source.directory / name).read_bytes())
        save_file(full, folder / "model.safetensors", metadata={"format": "pt"})
        model = load_model(folder, device=device, dtype=dtype)
    model.source = str(source.weights)
    return model


def _step_of(path: Path) -> int | None:
    numbers = re.findall(r"\d+", path.name)
    return int(numbers[-1]) if numbers else None


def _compact(directory: Path) -> tuple[str, tuple[CheckpointSource, ...]]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        base_name = str(manifest["base"])
        entries = [(int(e["step"]), str(e["weights"])) for e in manifest["checkpoints"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelFileError(
            f"{directory / MANIFEST} is not a checkpoint manifest: {error}"
        ) from None
    if base_name in BUILTINS:
        base = BUILTINS[base_name].path()
    else:
        base = (directory / base_name).resolve()
        if not (base / "config.json").is_file():
            raise ModelFileError(f"{directory / MANIFEST} names base {base_name!r}, not found")
    sources = []
    for step, weights in entries:
        if weights == "base":
            sources.append(CheckpointSource(step, base))
        else:
            file = directory / weights
            if not file.is_file():
                raise ModelFileError(f"{directory / MANIFEST} lists {weights}, missing")
            sources.append(CheckpointSource(step, base, file))
    return base_name, tuple(sources)


def load_checkpoints(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    steps: Sequence[int] | None = None,
    name: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> CheckpointSeries:
    """A `CheckpointSeries` (module docstring for the sources). Nothing is
    loaded until `series.load(step)` or iteration. `steps` labels a list of
    directories (default: the last number in each directory's name); the
    series is sorted by step, and steps must be distinct. `name` overrides the
    series' name. Raises InputError for an empty or ambiguous series,
    ModelNotFoundError for a source that is no series."""
    if isinstance(source, (str, os.PathLike)) and str(source) in BUILTIN_SERIES:
        label, sources = _compact(BUILTIN_SERIES[str(source)])
    elif isinstance(source, (str, os.PathLike)):
        directory = Path(source).expanduser()
        if (directory / MANIFEST).is_file():
            label, sources = _compact(directory)
        elif directory.is_dir():
            children = sorted(
                child
                for child in directory.iterdir()
                if child.is_dir() and (child / "config.json").is_file()
            )
            if not children:
                raise ModelNotFoundError(
                    f"{directory} holds no {MANIFEST} and no save_pretrained subdirectories"
                )
            label, sources = directory.name, _directories(children, steps)
        elif str(source) in BUILTINS:
            raise ModelNotFoundError(
                f"the built-in {source!r} ships no checkpoint series; built-in series: "
                f"{', '.join(BUILTIN_SERIES)}"
            )
        else:
            raise ModelNotFoundError(f"no checkpoint series at {source}")
    else:
        paths = [Path(item).expanduser() for item in source]
        for path in paths:
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(f"{path} is not a save_pretrained directory")
        label, sources = (paths[0].parent.name if paths else ""), _directories(paths, steps)
    if not sources:
        raise InputError("the checkpoint series is empty")
    ordered = tuple(sorted(sources, key=lambda s: s.step))
    found = [s.step for s in ordered]
    if len(set(found)) != len(found):
        raise InputError(f"checkpoint steps must be distinct, got {found}")
    return CheckpointSeries(name or label, ordered, device=device, dtype=dtype)


def _directories(
    paths: Sequence[Path], steps: Sequence[int] | None
) -> tuple[CheckpointSource, ...]:
    if steps is not None:
        if len(steps) != len(paths):
            raise InputError(f"{len(steps)} steps given for {len(paths)} directories")
        return tuple(CheckpointSource(int(s), p) for s, p in zip(steps, paths, strict=True))
    found = [_step_of(path) for path in paths]
    if any(step is None for step in found):
        unnamed = [str(p) for p, s in zip(paths, found, strict=True) if s is None]
        raise InputError(
            f"no step in the name of {', '.join(unnamed[:3])}; name the directories by step "
            "(step3000) or pass steps="
        )
    return tuple(CheckpointSource(int(s), p) for s, p in zip(found, paths, strict=True))
