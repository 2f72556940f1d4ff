"""load_model(): a TransformerBridge over a Hugging Face model, plus its ModelSpec.

Sources, tried in this order: a built-in name (`toy-induction`, `minilm`,
`toy-vit`), a local directory written by `save_pretrained` (fully offline), a hub name
(when the Hugging Face hub is reachable).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import (
    DeviceError,
    HubUnreachableError,
    InputError,
    ModelFileError,
    ModelNotFoundError,
    OutputError,
)
from headscope.models.images import (
    VISION_MODEL_TYPES,
    ImageBatch,
    ImageProcessing,
    image_batch,
)
from headscope.models.memory import (
    SafetensorsFormatError,
    check_fits,
    checkpoint_size,
    format_bytes,
    parse_size,
    safetensors_header,
    weights_estimate,
)
from headscope.models.spec import ModelSpec
from headscope.models.tokens import (
    AddedTokens,
    TokenBatch,
    UnknownWord,
    added_tokens,
    unknown_words,
    word_vocabulary,
)
from headscope.models.zoo import BUILTINS

Inputs = str | list[str] | tuple[str, ...] | Tensor

_LM_HEAD_SUFFIXES = ("LMHeadModel", "ForCausalLM", "ForMaskedLM", "ForPreTraining")
_POSITIONAL = {
    "standard": "learned",
    "rotary": "rotary",
    "alibi": "alibi",
    "relative_positional_bias": "relative",
    "shortformer": "learned",
}


@dataclass(frozen=True)
class ModelOutput:
    """What one forward returns: logits `[batch, position, d_vocab]` and, when
    asked, the mean-pooled sentence embedding `[batch, d_model]`."""

    logits: Float[Tensor, "batch position vocab"]
    embedding: Float[Tensor, "batch d_model"] | None = None


class HeadscopeModel:
    """A loaded model: the transformer-lens `bridge`, its `spec` and `tokenizer`.

    Probes and analyses go through this object; records never hold it. A
    vision transformer (`spec.is_vision`) has no tokenizer (None): it has
    `image_processing` (how images become pixel values, `models.images`) and
    `class_names` (its classifier's labels, in class order) instead.
    """

    def __init__(
        self,
        bridge: Any,
        spec: ModelSpec,
        tokenizer: Any,
        source: str,
        *,
        image_processing: ImageProcessing | None = None,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        self.bridge = bridge
        self.spec = spec
        self.tokenizer = tokenizer
        self.source = source
        self.image_processing = image_processing
        self.class_names = class_names

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"HeadscopeModel({s.name!r}, {s.architecture}, layers={s.n_layers}, "
            f"heads={s.n_heads}, kv_heads={s.n_kv_heads}, "
            f"{'causal' if s.causal else 'bidirectional'})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.bridge.original_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point weights."""
        for parameter in self.bridge.original_model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return torch.float32

    @cached_property
    def weights_hash(self) -> str:
        """sha256 over the model's parameters and buffers (names, dtypes, shapes, bytes)."""
        digest = hashlib.sha256()
        state = self.bridge.original_model.state_dict()
        for name in sorted(state):
            tensor = state[name].detach().to("cpu").contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()

    # -- tokenization -------------------------------------------------------------------------

    def tokenize(self, inputs: Inputs, *, max_length: int | None = None) -> TokenBatch:
        """Tokenize a prompt, a list of prompts (right-padded) or check a token-id
        tensor (`[position]` or `[batch, position]`; it is used as given, no BOS added).

        Raises InputError for empty prompts, prompts longer than the model's
        context (`max_length`, default `spec.n_ctx`), or ids outside the vocabulary.

        A vision model takes images instead (`images`): an image, a path, an
        array, or a batch of them; `max_length` does not apply.
        """
        if self.spec.is_vision:
            return self.images(inputs)
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise InputError(f"max_length must be a whole number >= 1, got {max_length!r}")
        limit = max_length or self.spec.n_ctx
        if isinstance(inputs, Tensor):
            return self._check_ids(inputs, limit)
        if not isinstance(inputs, (str, list, tuple)):
            raise InputError(
                "inputs must be a prompt string, a list of prompts or a token-id tensor, "
                f"got {type(inputs).__name__}"
            )
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts:
            raise InputError("no prompts given")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"prompt {i} is a {type(text).__name__}, expected a string")
            if not text.strip():
                raise InputError("the prompt is empty" if single else f"prompt {i} is empty")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                # A lone surrogate: what Python makes of bytes that are not UTF-8
                # (e.g. a command-line argument), which no tokenizer can take.
                where = "the prompt" if single else f"prompt {i}"
                raise InputError(
                    f"{where} is not valid text at character {error.start} (bytes that are "
                    "not UTF-8, or a lone surrogate); pass UTF-8 text"
                ) from None
        rows = [self._encode(text) for text in texts]
        for i, row in enumerate(rows):
            if len(row) > limit:
                where = "the prompt" if single else f"prompt {i}"
                raise InputError(
                    f"{where} has {len(row)} tokens; the model's context is {limit} tokens"
                )
        return self.batch_from_ids(rows, single=single, texts=tuple(texts))

    def images(self, images: Any) -> ImageBatch:
        """An ImageBatch of one image or a batch (PIL images, paths, uint8 or [0, 1]
        float arrays `[height, width(, channel)]`; see `models.images`): pixel
        values converted, resized and normalised as the model's processor says;
        tokens [CLS] then "(row,column)" per patch. InputError for a text model
        or an image it cannot read."""
        if self.image_processing is None:
            raise InputError(f"{self.spec.name} is a text model: it takes prompts, not images")
        return image_batch(images, self.image_processing, self.spec)

    def _encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        bos = self.spec.bos_token_id
        if self.spec.prepends_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def unknown_words(self, text: str) -> tuple[UnknownWord, ...]:
        """The words of `text` the tokenizer turned into its unk token (with
        their character offsets); none for a tokenizer without an unk token."""
        return unknown_words(self.tokenizer, text)

    def added_tokens(self, text: str = "a") -> AddedTokens:
        """The special tokens `tokenize` puts around `text` (`.described`:
        '<bos> prepended', '[CLS] and [SEP] added'), read off the ids with and
        without them."""
        plain = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return added_tokens(self.tokenizer, self._encode(text), plain)

    def word_vocabulary(self) -> tuple[str, ...] | None:
        """The known words of a small word-level vocabulary (toy-induction's),
        sorted; None for subword or large vocabularies."""
        return word_vocabulary(self.tokenizer)

    def _check_ids(self, ids: Tensor, limit: int) -> TokenBatch:
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise InputError(f"token ids must be an integer tensor, got {ids.dtype}")
        single = ids.dim() == 1
        if ids.dim() not in (1, 2):
            raise InputError(
                f"token ids must be [position] or [batch, position], got {tuple(ids.shape)}"
            )
        batch = ids[None] if single else ids
        if batch.shape[0] == 0 or batch.shape[1] == 0:
            raise InputError("the token tensor is empty")
        if batch.shape[1] > limit:
            raise InputError(
                f"the input has {batch.shape[1]} tokens; the model's context is {limit} tokens"
            )
        if int(batch.min()) < 0 or int(batch.max()) >= self.spec.d_vocab:
            raise InputError(f"token ids must lie in [0, {self.spec.d_vocab})")
        return self.batch_from_ids([row.tolist() for row in batch], single=single)

    def batch_from_ids(
        self,
        rows: list[list[int]],
        *,
        single: bool = False,
        texts: tuple[str, ...] | None = None,
    ) -> TokenBatch:
        """A right-padded TokenBatch of token-id rows, used as given (no BOS added,
        no length check): the same batch `tokenize` builds for text."""
        lengths = tuple(len(row) for row in rows)
        width = max(lengths)
        pad = self.spec.pad_token_id if self.spec.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        tokens = tuple(tuple(self.tokenizer.decode([t]) for t in row) for row in rows)
        bos = self.spec.bos_token_id
        prepended = bool(rows) and bos is not None and all(row[0] == bos for row in rows)
        return TokenBatch(ids, mask, lengths, tokens, single, texts, prepended)

    # -- running ------------------------------------------------------------------------------

    def forward(
        self,
        batch: TokenBatch,
        *,
        embedding: bool = False,
        hooks: list[tuple[str, Any]] | tuple = (),
    ) -> ModelOutput:
        """Run the bridge on a TokenBatch and return its logits (for an
        ImageBatch, the classifier's logits `[batch, class]`).

        `embedding=True` adds the sentence embedding: the final residual stream
        (after the final norm where the model has one), mean-pooled over real
        tokens, as sentence-transformers does for minilm (not L2-normalized).
        `hooks` are transformer-lens hook functions `(point, fn)`, built by
        `headscope.probes.run` (the only module that names hook points); they
        are removed on exit, also after an exception.
        """
        device = self.device
        mask = batch.attention_mask.to(device)
        if isinstance(batch, ImageBatch):
            ids = batch.pixel_values.to(device=device, dtype=self.dtype)
            kwargs = {}
        else:
            ids = batch.ids.to(device)
            plain = not batch.padded and self.spec.causal
            kwargs = {} if plain else {"attention_mask": mask.long()}
        final: list[Tensor] = []
        handle = None
        if embedding:

            def keep_final(module: Any, args: Any, output: Any) -> None:
                final.append(output[0] if isinstance(output, tuple) else output)

            handle = self._final_module.register_forward_hook(keep_final)
        try:
            with self.bridge.hooks(fwd_hooks=list(hooks)):
                logits = self.bridge(ids, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        pooled = None
        if embedding:
            hidden = final[-1]
            weights = mask.to(hidden.dtype)[..., None]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
        return ModelOutput(logits=logits, embedding=pooled)

    @property
    def _final_module(self) -> Any:
        """The module whose output is the final hidden state: the final norm of
        a causal LM; the last block of a BERT-style encoder (its final norm
        belongs to the MLM head, not to the sentence embedding)."""
        final_norm = getattr(self.bridge, "ln_final", None)
        if final_norm is not None and self.spec.causal:
            return final_norm
        return self.bridge.blocks[self.spec.n_layers - 1]

    @contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, Any]]):
        """Scoped transformer-lens hooks (built by `headscope.probes.run`),
        removed on exit, even after errors."""
        with self.bridge.hooks(fwd_hooks=fwd_hooks):
            yield self


# -- loading ---------------------------------------------------------------------------------


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _resolve(name_or_path: str | os.PathLike) -> tuple[str, Path | None]:
    text = str(name_or_path)
    if text in BUILTINS:
        return text, BUILTINS[text].path()
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a directory but has no config.json; expected a directory "
                "written by save_pretrained()"
            )
        return path.name, path
    if text.startswith((".", "/", "~")) or path.exists():
        # Looks like a filesystem path, not a hub name ("org/name").
        raise ModelNotFoundError(f"no model directory at {path}")
    return text, None


def _not_found_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(BUILTINS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"model {name!r} is not a built-in model ({', '.join(BUILTINS)}) or a local directory, "
        f"and the Hugging Face hub cannot be reached from here.{hint} To use a hub model offline, "
        "save it on a machine with network (`headscope pull NAME DIR`, or save_pretrained() "
        "of the model and its tokenizer) and load the directory: headscope.load_model('DIR')."
    )


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype | str = torch.float32,
    max_memory: int | str | None = None,
) -> HeadscopeModel:
    """Load a model for inspection: a built-in name, a local `save_pretrained`
    directory, or a hub name (needs the hub). Returns a `HeadscopeModel` with
    `.bridge` (transformer-lens TransformerBridge, eval mode), `.spec`, `.tokenizer`.

    `device`: "cpu", "cuda", "cuda:N" or "mps" (or a torch.device); `dtype`:
    float32, bfloat16 or float16 (a torch.dtype or its name). Capture statistics
    are accumulated in float32 whatever the model's dtype.

    A local directory is checked before anything is loaded: config.json (a JSON
    object with a model_type), safetensors headers against the file sizes
    (truncated, corrupt, or a pickle under a safetensors name), a tokenizer.
    Weights are read from safetensors, or from a `.bin` only through torch's
    `weights_only` loader (a pickle it refuses is reported, never run). The
    weights' size in `dtype` (from the safetensors headers) must fit in the
    memory available on `device`, or in `max_memory` (bytes or e.g. "8GB");
    hub names are not estimated before their download (pull them first).

    Raises ModelNotFoundError / HubUnreachableError / ModelFileError (a corrupt
    directory, naming the file), DeviceError (an unknown dtype or device, or CUDA
    or MPS not available here), MemoryLimitError, each with a one-line message.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise InputError(
            "name_or_path must name a model: a built-in name, a directory or a hub name, "
            f"got {name_or_path!r}"
        )
    device = parse_device(device)
    dtype = parse_dtype(dtype)
    limit = None if max_memory is None else parse_size(max_memory)
    name, path = _resolve(name_or_path)
    if path is not None:
        check_model_dir(path)
        _check_weights_fit(path, device, dtype, limit)
    if path is None and _hub_offline():
        raise HubUnreachableError(_not_found_message(name))
    source = str(path) if path is not None else name
    try:
        bridge, tokenizer, hf_config = _boot(source, device=device, dtype=dtype)
    except OSError as error:
        if path is not None:
            raise ModelNotFoundError(f"could not load the model in {path}: {error}") from None
        text = str(error).lower()
        if "connect" in text or "offline" in text or "cached files" in text:
            raise HubUnreachableError(_not_found_message(name)) from None
        raise ModelNotFoundError(f"could not load {name!r} from the hub: {error}") from None
    builtin = BUILTINS.get(str(name_or_path))
    label = name if builtin is None else builtin.name
    if _is_vision(hf_config):
        spec = _vision_spec(label, bridge, hf_config)
        return HeadscopeModel(
            bridge,
            spec,
            None,
            source,
            image_processing=ImageProcessing.from_directory(
                path if path is not None else _hub_processor_dir(source), hf_config
            ),
            class_names=_class_names(hf_config) if spec.has_lm_head else None,
        )
    spec = _spec(label, bridge, tokenizer, hf_config, builtin)
    return HeadscopeModel(bridge, spec, tokenizer, source)


def _is_vision(hf_config: Any) -> bool:
    return getattr(hf_config, "model_type", None) in VISION_MODEL_TYPES


def _hub_processor_dir(source: str) -> Path | None:
    """The cached hub snapshot holding `source`'s preprocessor_config.json, if any."""
    from transformers.utils import cached_file

    try:
        found = cached_file(
            source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
    except OSError:
        return None
    return Path(found).parent if found else None


def _class_names(hf_config: Any) -> tuple[str, ...]:
    labels = getattr(hf_config, "id2label", None) or {}
    return tuple(str(labels.get(i, labels.get(str(i), i))) for i in range(hf_config.num_labels))


def _vision_spec(name: str, bridge: Any, hf_config: Any) -> ModelSpec:
    """A ViT / DeiT spec: bidirectional, learned positions, [CLS] (and DeiT's
    distillation token) before the patches; `d_vocab` is the number of classes
    of an image classifier (the hidden size for a bare encoder, which has no
    classifier: `has_lm_head` False)."""
    cfg = bridge.cfg
    architectures = list(getattr(hf_config, "architectures", None) or [])
    architecture = architectures[0] if architectures else type(bridge.original_model).__name__
    classifier = hasattr(bridge.original_model, "classifier")
    image_size = hf_config.image_size
    if isinstance(image_size, (list, tuple)):
        if len(image_size) != 2 or image_size[0] != image_size[1]:
            raise ModelFileError(f"only square images are supported, the config gives {image_size}")
        image_size = image_size[0]
    patch_size = hf_config.patch_size
    if isinstance(patch_size, (list, tuple)):
        if len(patch_size) != 2 or patch_size[0] != patch_size[1]:
            raise ModelFileError(
                f"only square patches are supported, the config gives {patch_size}"
            )
        patch_size = patch_size[0]
    n_prefix = 2 if hf_config.model_type == "deit" else 1
    n_heads = int(cfg.n_heads)
    return ModelSpec(
        name=name,
        architecture=architecture,
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=n_heads,
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(hf_config.num_labels) if classifier else int(cfg.d_model),
        n_ctx=n_prefix + (int(image_size) // int(patch_size)) ** 2,
        causal=False,
        positional="learned",
        has_lm_head=classifier,
        prepends_bos=False,
        image_size=int(image_size),
        patch_size=int(patch_size),
        num_channels=int(hf_config.num_channels),
        n_prefix_tokens=n_prefix,
    )


def _boot(source: str, *, device: Any, dtype: torch.dtype):
    import logging

    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would clutter CLI output

    hf_config = AutoConfig.from_pretrained(source)
    # Vision transformers have no tokenizer: images go through `models.images`.
    tokenizer = None if _is_vision(hf_config) else AutoTokenizer.from_pretrained(source)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # TL logs alias deprecations at WARNING
    try:
        bridge = TransformerBridge.boot_transformers(source, device=device, dtype=dtype)
    except Exception as error:
        if isinstance(error, ValueError) and "supported architecture" in str(error):
            from headscope.errors import UnsupportedModelError  # transformer-lens lacks it

            names = getattr(hf_config, "architectures", None) or [hf_config.model_type]
            raise UnsupportedModelError.for_architecture(names[0]) from None
        if isinstance(error, NotImplementedError):  # e.g. DeiT with a distillation head
            from headscope.errors import UnsupportedModelError

            raise UnsupportedModelError(_one_line(error)) from None
        problem = _weights_problem(source, error)
        if problem is None:
            raise
        raise ModelFileError(problem) from None
    finally:
        logging.getLogger().setLevel(previous)
    bridge.eval()
    return bridge, tokenizer, hf_config


def _spec(name: str, bridge: Any, tokenizer: Any, hf_config: Any, builtin: Any) -> ModelSpec:
    cfg = bridge.cfg
    causal = getattr(cfg, "attention_dir", "causal") == "causal"
    architectures = list(getattr(hf_config, "architectures", None) or [])
    architecture = architectures[0] if architectures else type(bridge.original_model).__name__
    if builtin is not None:
        has_lm_head = builtin.has_lm_head
    else:
        has_lm_head = any(a.endswith(_LM_HEAD_SUFFIXES) for a in architectures) or not architectures
    bos = tokenizer.bos_token_id if tokenizer.bos_token is not None else None
    if bos is None and not causal:
        bos = tokenizer.cls_token_id
    probe = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    adds_bos = bool(probe) and bos is not None and probe[0] == bos
    # Causal LMs get a BOS prepended (as transformer-lens does) when the
    # tokenizer has one; encoders keep their own [CLS] ... [SEP] framing.
    prepends_bos = adds_bos or (causal and bos is not None)
    pad = tokenizer.pad_token_id
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    return ModelSpec(
        name=name,
        architecture=architecture,
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        causal=causal,
        positional=_POSITIONAL.get(str(getattr(cfg, "positional_embedding_type", "")), "none"),
        has_lm_head=has_lm_head,
        prepends_bos=prepends_bos,
        bos_token_id=bos,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad if pad is not None else tokenizer.eos_token_id,
    )


# -- devices and dtypes ----------------------------------------------------------------------

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    # For checks that need it (finite differences); slow and never the default.
    "float64": torch.float64,
    "fp64": torch.float64,
}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """float32, bfloat16, float16 (or float64, for numerical checks), from a
    torch.dtype or its name (`bf16`, `fp16`, `torch.bfloat16` also work);
    DeviceError for anything else."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        shown = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
        shown = dtype
    else:
        shown = repr(dtype)
    raise DeviceError(f"unknown dtype {shown!r}; choose float32, bfloat16, float16 or float64")


def parse_device(device: str | torch.device) -> torch.device:
    """cpu, cuda, cuda:N or mps, checked against this machine: DeviceError for
    an unknown device, CUDA without a CUDA GPU (or a cuda:N beyond the last
    one), MPS without MPS."""
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip().lower()
    else:
        raise DeviceError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise DeviceError(f"unknown device {text[:40]!r}; choose cpu, cuda, cuda:N or mps")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {text!r} needs CUDA, which is not available here (torch "
                f"{torch.__version__} finds no CUDA GPU); use --device cpu"
            )
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise DeviceError(
                f"device {text!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(
            "device 'mps' needs Apple's Metal (MPS), which is not available here; use --device cpu"
        )
    return torch.device(text)


# -- model directories -----------------------------------------------------------------------

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_RESAVE = "save the model again with save_pretrained() or `headscope pull`"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def check_model_dir(path: Path) -> None:
    """Check a model directory's files before anything is loaded (see
    `load_model`); ModelFileError naming the file and what to do."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelFileError(f"{config_file} is not text (not a JSON file); {_RESAVE}") from None
    except json.JSONDecodeError as error:
        raise ModelFileError(
            f"{config_file} is not valid JSON ({error.msg} at line {error.lineno}); {_RESAVE}"
        ) from None
    except OSError as error:
        raise ModelFileError(f"cannot read {config_file}: {error.strerror or error}") from None
    if not isinstance(config, dict):
        raise ModelFileError(
            f"{config_file} holds a JSON {type(config).__name__}, not an object of model "
            f"settings; {_RESAVE}"
        )
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ModelFileError(
            f"{config_file} has no model_type, so the architecture is unknown; add the "
            'model\'s "model_type" (e.g. "gpt2", "llama", "gpt_neox") or ' + _RESAVE
        )
    for file in sorted(path.glob("*.safetensors")):
        try:
            safetensors_header(file)
        except SafetensorsFormatError as problem:
            if problem.pickle:
                action = (
                    "headscope never loads pickles under a safetensors name; convert it with "
                    "safetensors.torch.save_file, or " + _RESAVE
                )
            else:
                action = "download or copy it again, or " + _RESAVE
            raise ModelFileError(f"{file} {problem}; {action}") from None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelFileError(f"{index} is not a valid weight index; {_RESAVE}") from None
        missing = sorted(shard for shard in shards if not (path / str(shard)).is_file())
        if missing:
            raise ModelFileError(
                f"{index} lists {', '.join(missing[:3])}, missing from {path}; copy every "
                f"shard the index names, or {_RESAVE}"
            )
    vision = config["model_type"] in VISION_MODEL_TYPES
    if not vision and not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelFileError(
            f"{path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES[:4])}, ...); save "
            "it beside the weights with tokenizer.save_pretrained(dir), or use `headscope pull`"
        )


def _check_weights_fit(
    path: Path, device: torch.device, dtype: torch.dtype, max_memory: int | None
) -> None:
    """MemoryLimitError when the weights, in `dtype`, do not fit on `device`."""
    size = checkpoint_size(path)
    if size is None:
        return
    floats, other = size
    estimate = weights_estimate(floats, dtype, other)

    def options(fits) -> list[str]:
        found = []
        for name, smaller in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            if smaller.itemsize < dtype.itemsize:
                alternative = weights_estimate(floats, smaller, other)
                if fits(alternative):
                    found.append(f"dtype {name} (about {format_bytes(alternative.total)})")
        return found

    check_fits(
        estimate, device=device, what=f"loading {path}", max_memory=max_memory, options=options
    )


def _weights_problem(source: str, error: Exception) -> str | None:
    """A one-line description of a weights file the loader could not use, or
    None when `error` is not about the files."""
    import pickle

    text = _one_line(error)
    path = Path(source)
    if isinstance(error, pickle.UnpicklingError) or "weights only load failed" in text.lower():
        files = ", ".join(f.name for f in sorted(path.glob("*.bin")) + sorted(path.glob("*.pt")))
        where = f"{path}/{files}" if files and path.is_dir() else source
        found = re.search(r"unsupported GLOBAL ([\w.]+)", text)
        detail = f" (it would call {found.group(1)})" if found else ""
        return (
            f"{where} is a pickle that torch's safe loader (weights_only) refuses{detail}; "
            "headscope does not run pickles: get the weights as safetensors, or save the "
            "model with save_pretrained() where you trust it"
        )
    if type(error).__name__ == "SafetensorError":
        return f"the safetensors weights in {source} cannot be read ({text}); {_RESAVE}"
    if isinstance(error, RuntimeError) and (
        "ignore_mismatched_sizes" in text or "size mismatch" in text
    ):
        mismatch = _shape_mismatch(path) if path.is_dir() else None
        detail = f": {mismatch}" if mismatch else ""
        return (
            f"the weights in {source} do not fit its config.json{detail}; the directory mixes "
            f"files of different models: {_RESAVE}"
        )
    if isinstance(error, RuntimeError) and (
        "PytorchStreamReader" in text or "zip archive" in text or "unexpected EOF" in text
    ):
        return f"a weights file in {source} is truncated or corrupt ({text[:120]}); {_RESAVE}"
    return None


def _shape_mismatch(path: Path) -> str | None:
    """`'h.0.attn.c_attn.weight' is [32, 96] in model.safetensors but the config
    gives [64, 192]` for the first such tensor, found by building the model on
    the meta device (no memory); None when it cannot be told."""
    try:
        import transformers
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        names = list(getattr(config, "architectures", None) or [])
        model_class = getattr(transformers, names[0], None) if names else None
        if model_class is None:
            return None
        with torch.device("meta"):
            model = model_class(config)
        expected = {k: list(v.shape) for k, v in model.state_dict().items()}
        for file in sorted(path.glob("*.safetensors")):
            for key, entry in safetensors_header(file).items():
                if key == "__metadata__":
                    continue
                want = expected.get(key)
                if want is None:
                    prefix = getattr(model, "base_model_prefix", "")
                    want = expected.get(f"{prefix}.{key}") or expected.get(
                        key.removeprefix(f"{prefix}.")
                    )
                if want is not None and list(entry["shape"]) != want:
                    return (
                        f"{key!r} is {list(entry['shape'])} in {file.name} but the config "
                        f"gives {want}"
                    )
    except Exception:
        return None
    return None


# -- offline preparation ---------------------------------------------------------------------


def pull_model(name: str, directory: str | os.PathLike, *, revision: str | None = None) -> Path:
    """Save a hub model (or a built-in or local one) and its tokenizer as a
    directory that `load_model` reads offline: safetensors weights in the
    checkpoint's own dtype, config.json, the tokenizer files.

    `revision`: a hub branch, tag or commit (a Pythia training step such as
    `step3000`). The files are written to a temporary sibling and renamed into
    place, so an interrupted pull leaves no half directory. Pickled `.bin`
    checkpoints are read with torch's `weights_only` loader only.

    Raises HubUnreachableError (one line) when the model would come from the
    hub and the hub cannot be reached (HF_HUB_OFFLINE set, no network),
    ModelNotFoundError when the hub has no such model or revision, OutputError
    when `directory` exists and is not empty.
    """
    import shutil

    if not isinstance(name, str) or not name.strip():
        raise InputError(f"name a model to pull, got {name!r}")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise InputError(f"revision must name a branch, tag or commit, got {revision!r}")
    target = Path(directory).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputError(f"{target} already exists and is not an empty directory; choose another")
    local = BUILTINS[name].path() if name in BUILTINS else Path(name).expanduser()
    if local.is_dir():
        if revision is not None:
            raise InputError(f"--revision applies to hub names; {name} is a local model")
        _resolve(local)
        check_model_dir(local)
        source = str(local)
    elif name.startswith((".", "/", "~")) or local.exists():
        raise ModelNotFoundError(f"no model directory at {local}")
    elif _hub_offline():
        raise HubUnreachableError(
            f"cannot pull {name!r}: the Hugging Face hub cannot be reached from here "
            "(HF_HUB_OFFLINE is set); run `headscope pull` on a machine with network and "
            f"copy {target} here"
        )
    else:
        source = name
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _download(source, staging, revision)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise _pull_error(name, revision, error) from None
    except ValueError as error:  # transformers: an unknown model type, a bad config
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelNotFoundError(f"could not pull {name!r}: {_one_line(error)[:200]}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _download(source: str, staging: Path, revision: str | None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # config checks on save would clutter the CLI's output
    try:
        _save_copy(source, staging, revision)
    finally:
        hf_logging.set_verbosity(verbosity)


def _save_copy(source: str, staging: Path, revision: str | None) -> None:
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source, revision=revision)
    names = list(getattr(config, "architectures", None) or [])
    model_class = getattr(transformers, names[0], None) if names else None
    if model_class is None:
        model_class = AutoModelForCausalLM if getattr(config, "is_decoder", True) else AutoModel
    try:
        model = model_class.from_pretrained(source, revision=revision, dtype="auto")
    except Exception as error:
        problem = _weights_problem(source, error)
        if problem is None:
            raise
        raise ModelFileError(problem) from None
    if _is_vision(config):  # no tokenizer: keep the image processor's config
        from transformers.utils import cached_file

        processor = cached_file(
            source,
            "preprocessor_config.json",
            revision=revision,
            _raise_exceptions_for_missing_entries=False,
        )
        staging.mkdir(parents=True)
        model.save_pretrained(staging)
        if processor is not None:
            (staging / "preprocessor_config.json").write_bytes(Path(processor).read_bytes())
        return
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)  # safetensors
    tokenizer.save_pretrained(staging)


def _pull_error(name: str, revision: str | None, error: OSError) -> Exception:
    text = _one_line(error)
    lower = text.lower()
    if "no space left" in lower or isinstance(error, PermissionError):
        return OutputError(f"cannot write the model: {error.strerror or text}")
    if "revision" in lower or "git identifier" in lower:
        return ModelNotFoundError(
            f"{name!r} has no revision {revision!r} on the hub; check the branch, tag or commit"
        )
    if "gated" in lower or "401" in lower or "403" in lower:
        return ModelNotFoundError(
            f"{name!r} is gated on the hub: accept its license on huggingface.co, then log in "
            "(`hf auth login` or HF_TOKEN) and pull again"
        )
    if "connect" in lower or "offline" in lower or "cached files" in lower or "resolve" in lower:
        return HubUnreachableError(
            f"cannot pull {name!r}: the Hugging Face hub cannot be reached from here ({text[:120]})"
        )
    return ModelNotFoundError(f"could not pull {name!r}: {text[:200]}")
