"""A bounded, thread-safe LRU cache of per-prompt results on the dashboard server."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class LRUCache(Generic[Value]):
    """Keeps at most `max_entries` values and at most `max_bytes` of them (as
    measured by `size_of`), evicting the least recently used. Safe to share
    between server threads; `get_or_create` computes a missing value once even
    when several threads ask for it at the same time."""

    def __init__(
        self,
        max_entries: int = 32,
        *,
        max_bytes: int | None = None,
        size_of: Callable[[Value], int] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size_of = size_of or (lambda value: 0)
        self._items: OrderedDict[object, tuple[Value, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[object, threading.Lock] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def get(self, key: object) -> Value | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: object, value: Value) -> None:
        size = int(self._size_of(value))
        with self._lock:
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            self._evict()

    def get_or_create(self, key: object, create: Callable[[], Value]) -> Value:
        value = self.get(key)
        if value is not None:
            return value
        with self._lock:
            gate = self._pending.setdefault(key, threading.Lock())
        with gate:
            value = self.get(key)
            if value is None:
                value = create()
                self.put(key, value)
        with self._lock:
            self._pending.pop(key, None)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _evict(self) -> None:
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        if self.max_bytes is not None:
            # Always keep the newest entry, even when it alone is over the budget.
            while len(self._items) > 1 and self.total_bytes > self.max_bytes:
                self._items.popitem(last=False)
