"""The dashboard's server side: one model, a lock around it, and an LRU cache of
per-prompt results.

Nothing here knows about browsers: prompts arrive as strings from callbacks,
and results are cached per prompt text only, so two browser sessions share
work but never state (each session keeps its own prompt in a dcc.Store).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from headscope.dashboard.cache import LRUCache
from headscope.errors import HeadscopeError, InputError
from headscope.models.loading import HeadscopeModel
from headscope.models.spec import ModelSpec
from headscope.records.attention import AttentionRecord

T = TypeVar("T")

MAX_PROMPT_CHARS = 20_000
DEFAULT_MAX_TOKENS = 512
#: Longest prompt (tokens) the Flow page solves attention flow for exactly, for models
#: with three or more layers (one or two layers have a closed form, any length). Exact
#: flow costs N² push-relabel max-flows of O(L·N²) edges each, so it grows like N⁴.
#: Measured on minilm (6 layers, real maps, this project's 2-core machine, idle):
#: 1.1 / 2.0 / 3.3 / 5.5-7.3 s at 64 / 80 / 96 / 128 tokens (docs/benchmarks.md); the
#: page also solves the content-free baseline's flow, so 80 tokens stays near 4 s.
DEFAULT_MAX_FLOW_TOKENS = 80


class _ModelResults:
    """Results that depend on the weights only (spectra, composition), shared by
    every app in the process that serves the same model object."""

    def __init__(self) -> None:
        self.values: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()
        self.guard = threading.Lock()
        self.locks: dict[tuple[int, object], threading.Lock] = {}

    def get(self, model: Any, key: object, compute: Callable[[], T]) -> T:
        with self.guard:
            values = self.values.setdefault(model, {})
            if key in values:
                return values[key]
            lock = self.locks.setdefault((id(model), key), threading.Lock())
        with lock:
            if key not in values:
                values[key] = compute()
            return values[key]

    def after_fork(self) -> None:
        # A lock held by a parent thread at fork time would never be released here.
        self.guard = threading.Lock()
        self.locks = {}


MODEL_RESULTS = _ModelResults()
os.register_at_fork(after_in_child=MODEL_RESULTS.after_fork)


class ModelUnavailableError(HeadscopeError):
    """The dashboard's model could not be loaded (the message says why)."""


def check_prompt_text(prompt: object) -> str:
    """The prompt as a string; InputError when missing, blank, huge or not valid
    Unicode text (a lone surrogate, which no tokenizer or JSON encoder takes)."""
    if not isinstance(prompt, str):
        raise InputError("no prompt yet: type some text and press Run")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(
            f"the prompt has {len(prompt):,} characters; the dashboard takes at most "
            f"{MAX_PROMPT_CHARS:,}"
        )
    if not prompt.strip():
        raise InputError("the prompt is empty: type some text and press Run")
    bad = _SURROGATE.search(prompt)
    if bad is not None:
        raise InputError(
            f"the prompt is not valid text: character {bad.start()} is a lone surrogate "
            f"(U+{ord(bad.group()):04X}); retype that part of it"
        )
    return prompt


_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(eq=False)
class PromptState:
    """Everything computed for one prompt: the record of all heads, plus
    analyses memoized by name on first use."""

    prompt: str
    record: AttentionRecord
    memo: dict[object, Any] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(self.record.tokens)

    @property
    def nbytes(self) -> int:
        extra = sum(
            value.numel() * value.element_size()
            for value in self.memo.values()
            if isinstance(value, torch.Tensor)
        )
        return self.record.pattern.numel() * 4 + extra

    def cached(self, key: object, compute: Callable[[], T]) -> T:
        """`compute()` once per key (under this prompt's lock), then from memory."""
        if key in self.memo:
            return self.memo[key]
        with self.lock:
            if key not in self.memo:
                self.memo[key] = compute()
            return self.memo[key]


class ModelSession:
    """The model behind one dashboard app and its caches.

    `lock` serializes every forward pass: transformer-lens hooks live on the
    shared modules, so two concurrent forwards with different hooks (a capture
    and a gated playground run) would see each other's hooks.
    """

    def __init__(
        self,
        model: HeadscopeModel | None,
        *,
        name: str | None = None,
        load_error: str | None = None,
        offline: str | None = None,
        max_prompts: int = 32,
        max_bytes: int = 1 << 30,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        max_flow_tokens: int = DEFAULT_MAX_FLOW_TOKENS,
    ) -> None:
        if model is None and load_error is None and offline is None:
            raise ValueError("a session needs a model or the reason it has none")
        self.model = model
        self.name = name or (model.spec.name if model is not None else "unknown")
        self.load_error = load_error
        #: What a session with no model serves instead (a saved capture or report), in words.
        self.offline = offline
        self.max_tokens = max_tokens
        self.max_flow_tokens = max_flow_tokens
        self.lock = threading.RLock()
        self.prompts: LRUCache[PromptState] = LRUCache(
            max_prompts, max_bytes=max_bytes, size_of=lambda state: state.nbytes
        )
        _reset_after_fork(self)

    @classmethod
    def load(cls, name: str, **options: Any) -> ModelSession:
        """Load `name` (built-in, directory or hub name); a failure becomes a
        session whose pages all show why, instead of an exception."""
        from headscope.models.loading import load_model

        try:
            return cls(load_model(name), name=name, **options)
        except HeadscopeError as error:
            return cls(None, name=name, load_error=str(error), **options)

    # -- the model ---------------------------------------------------------------------------

    def require_model(self) -> HeadscopeModel:
        if self.model is None and self.offline is not None:
            raise ModelUnavailableError(
                f"this page needs a model: the dashboard shows {self.offline} with no model "
                f"loaded; start it with --model {self.name} to use this page"
            )
        if self.model is None:
            raise ModelUnavailableError(
                f"model {self.name!r} is not loaded (the message at the top says why)"
            )
        return self.model

    @property
    def spec(self) -> ModelSpec | None:
        return self.model.spec if self.model is not None else None

    @property
    def token_limit(self) -> int:
        spec = self.require_model().spec
        return min(spec.n_ctx, self.max_tokens)

    def tokenize(self, prompt: object):
        """Validated TokenBatch of one prompt (InputError: empty, too long...)."""
        text = check_prompt_text(prompt)
        model = self.require_model()
        if model.spec.is_vision:  # a string would be read as an image path
            raise InputError(
                f"{model.spec.name} is a vision model: it takes images (the Vision page), "
                "not text prompts"
            )
        try:
            return model.tokenize(text, max_length=self.token_limit)
        except InputError as error:
            if self.token_limit < model.spec.n_ctx and "context" in str(error):
                raise InputError(
                    f"{error} (the dashboard shows at most {self.token_limit} tokens)"
                ) from None
            raise

    # -- per-prompt results ------------------------------------------------------------------

    def state(self, prompt: object) -> PromptState:
        """The cached PromptState of `prompt`, capturing every head on first use."""
        text = check_prompt_text(prompt)

        def create() -> PromptState:
            from headscope.experiments.attention import capture

            batch = self.tokenize(text)
            with self.lock:
                record = capture(self.require_model(), batch)
            return PromptState(text, record)

        return self.prompts.get_or_create(text, create)

    def cached_model_result(self, key: object, compute: Callable[[], T]) -> T:
        """A model-level result (weights only, no prompt), computed once per model
        object and shared with other apps serving the same model."""
        return MODEL_RESULTS.get(self.require_model(), key, compute)


def _reset_after_fork(session: ModelSession) -> None:
    """Background jobs run in forked processes: give the child fresh locks (a
    lock held by another parent thread at fork time would never be released)
    and one torch thread (GNU OpenMP hangs when a forked child reuses the
    parent's thread pool)."""
    ref = weakref.ref(session)

    def after_in_child() -> None:
        torch.set_num_threads(1)
        current = ref()
        if current is None:
            return
        current.lock = threading.RLock()
        cache = current.prompts
        cache._lock = threading.Lock()
        cache._pending = {}
        for value, _ in cache._items.values():
            value.lock = threading.RLock()

    os.register_at_fork(after_in_child=after_in_child)
