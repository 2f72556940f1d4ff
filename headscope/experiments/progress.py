"""Progress and cancellation for long experiments: a tqdm bar plus the
dashboard's `callback(step, total)`; a callback that returns False cancels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from headscope.errors import HeadscopeError

ProgressCallback = Callable[[int, int], bool | None]


class AnalysisCancelledError(HeadscopeError):
    """A progress callback asked a long analysis to stop (returned False)."""


class Tracker:
    """Counts steps towards `total`, shows a tqdm bar when `progress`, and calls
    `callback(done, total)` after each step (False from it cancels)."""

    def __init__(
        self, total: int, progress: bool, callback: ProgressCallback | None, desc: str
    ) -> None:
        from tqdm.auto import tqdm

        self.total, self.done, self.callback = total, 0, callback
        self.bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)

    def step(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.callback is not None and self.callback(self.done, self.total) is False:
            raise AnalysisCancelledError(f"cancelled after {self.done} of {self.total} steps")

    def close(self) -> None:
        self.bar.close()


@contextmanager
def tracking(
    total: int, progress: bool, callback: ProgressCallback | None, desc: str
) -> Iterator[Tracker]:
    """A `Tracker`, closed on exit (also after a cancel or an error)."""
    tracker = Tracker(total, progress, callback, desc)
    try:
        yield tracker
    finally:
        tracker.close()
