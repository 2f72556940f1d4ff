"""load_model(): a TransformerBridge over a Hugging Face model, plus its ModelSpec.

Sources, tried in this order: a built-in name (`toy-induction`, `minilm`), a
local directory written by `save_pretrained` (fully offline), a hub name
(when the Hugging Face hub is reachable).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import HubUnreachableError, InputError, ModelNotFoundError
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

    Probes and analyses go through this object; records never hold it.
    """

    def __init__(self, bridge: Any, spec: ModelSpec, tokenizer: Any, source: str) -> None:
        self.bridge = bridge
        self.spec = spec
        self.tokenizer = tokenizer
        self.source = source

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
        """
        limit = max_length or self.spec.n_ctx
        if isinstance(inputs, Tensor):
            return self._check_ids(inputs, limit)
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts:
            raise InputError("no prompts given")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"prompt {i} is a {type(text).__name__}, expected a string")
            if not text.strip():
                raise InputError("the prompt is empty" if single else f"prompt {i} is empty")
        rows = [self._encode(text) for text in texts]
        for i, row in enumerate(rows):
            if len(row) > limit:
                where = "the prompt" if single else f"prompt {i}"
                raise InputError(
                    f"{where} has {len(row)} tokens; the model's context is {limit} tokens"
                )
        return self.batch_from_ids(rows, single=single, texts=tuple(texts))

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
        if ids.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.bool):
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
        """Run the bridge on a TokenBatch and return its logits.

        `embedding=True` adds the sentence embedding: the final residual stream
        (after the final norm where the model has one), mean-pooled over real
        tokens, as sentence-transformers does for minilm (not L2-normalized).
        `hooks` are transformer-lens hook functions `(point, fn)`, built by
        `headscope.probes.run` (the only module that names hook points); they
        are removed on exit, also after an exception.
        """
        device = self.device
        ids = batch.ids.to(device)
        mask = batch.attention_mask.to(device)
        kwargs = {} if not batch.padded and self.spec.causal else {"attention_mask": mask.long()}
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
        "save it with save_pretrained() on a machine with network and load the directory: "
        "headscope.load_model('/path/to/dir')."
    )


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
) -> HeadscopeModel:
    """Load a model for inspection: a built-in name, a local `save_pretrained`
    directory, or a hub name (needs the hub). Returns a `HeadscopeModel` with
    `.bridge` (transformer-lens TransformerBridge, eval mode), `.spec`, `.tokenizer`.

    Raises ModelNotFoundError / HubUnreachableError with a one-line explanation.
    """
    name, path = _resolve(name_or_path)
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
    spec = _spec(name if builtin is None else builtin.name, bridge, tokenizer, hf_config, builtin)
    return HeadscopeModel(bridge, spec, tokenizer, source)


def _boot(source: str, *, device: Any, dtype: torch.dtype):
    import logging

    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would clutter CLI output

    hf_config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # TL logs alias deprecations at WARNING
    try:
        bridge = TransformerBridge.boot_transformers(source, device=device, dtype=dtype)
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
