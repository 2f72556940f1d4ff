"""Exceptions headscope raises for problems a user can fix.

Every layer may import this module; it imports nothing from headscope.
The CLI and the dashboard turn these into one-line messages, so each message
must say what is wrong and what to do about it.
"""

from __future__ import annotations


class HeadscopeError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ModelNotFoundError(HeadscopeError):
    """The model name is neither built in, a local directory, nor loadable from the hub."""


class HubUnreachableError(ModelNotFoundError):
    """The model would come from the Hugging Face hub, which cannot be reached."""


class MissingExtraError(HeadscopeError):
    """An optional dependency is needed (the message names the pip extra)."""


class InputError(HeadscopeError, ValueError):
    """Bad prompt or token input: empty, too long for the context, wrong shape."""


class RecordFormatError(HeadscopeError):
    """A saved record is malformed, tampered with, or of an unknown schema version."""


class OutputError(HeadscopeError):
    """A file or folder cannot be written: no space left, a folder where a file
    goes (or a file where a folder goes), no permission (the message names the path)."""


class CheckpointError(RecordFormatError):
    """A checkpoint does not verify: tampered, truncated, not safetensors, or
    computed under another configuration."""


class BackendError(HeadscopeError):
    """An execution backend cannot be used, e.g. the Ray cluster at the given
    address does not answer."""


class RecordExistsError(HeadscopeError):
    """A record would be written over an existing one (the message names the
    directory; pass `overwrite=True`, or `--overwrite` on the command line)."""


class ModelFileError(ModelNotFoundError):
    """A model directory's files cannot be used: truncated or corrupt weights, a
    pickle where safetensors belong, a config.json without a model_type, weights
    whose shapes do not fit the config (the message names the file)."""


class DeviceError(InputError):
    """A device or dtype that is unknown or not available here (CUDA or MPS
    asked for on a machine without it)."""


class MemoryLimitError(HeadscopeError):
    """A load or capture would need more memory than is available; the message
    names the estimate, the available memory and the options that fit."""


#: The model families headscope checks end to end with tiny random checkpoints
#: (maps, statistics, head gates and logits against Hugging Face; docs/models.md).
SUPPORTED_FAMILIES: tuple[str, ...] = (
    "GPT-2",
    "GPT-NeoX",
    "GPT-Neo",
    "GPT-J",
    "OPT",
    "Llama",
    "Mistral",
    "Qwen 2",
    "Qwen 3",
    "Gemma",
    "Gemma 2",
    "Gemma 3",
    "Phi-3",
    "OLMo 2",
    "BLOOM",
    "Falcon",
    "BERT",
    "RoBERTa",
)


class UnsupportedModelError(ModelNotFoundError):
    """The checkpoint exists but its architecture is not one transformer-lens can load."""

    @classmethod
    def for_architecture(cls, architecture: str) -> UnsupportedModelError:
        """The one-line refusal for a checkpoint of `architecture` (a class name)."""
        return cls(
            f"{architecture} is not an architecture transformer-lens can load, so headscope cannot "
            f"inspect it; supported families: {', '.join(SUPPORTED_FAMILIES)} "
            "(see docs/models.md)"
        )


class ServeError(HeadscopeError):
    """The dashboard cannot serve: the port is in use, the host does not
    resolve or is not an address of this machine (the message says which)."""
