"""Background callbacks: long computations (CHG, importance over a prompt set,
attention flow on long prompts, composition scores) run in a forked process
managed by dash's DiskcacheManager, with progress and a cancel button.

The result cache lives in a temporary folder that is removed at exit.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from dash.background_callback import DiskcacheManager

from headscope.dashboard.session import ModelSession

#: How often (ms) the page polls a running job for progress and its result.
POLL_INTERVAL_MS = 300


class ForkSafeDiskcacheManager(DiskcacheManager):
    """DiskcacheManager that forks its job processes while holding the
    session's model lock, so a child never inherits a model with another
    request's hooks half-installed (see `ModelSession.lock`)."""

    def __init__(self, session: ModelSession, cache, **options) -> None:
        super().__init__(cache, **options)
        self._session = session

    def call_job_fn(self, key, job_fn, args, context):
        with self._session.lock:
            return super().call_job_fn(key, job_fn, args, context)


def background_manager(session: ModelSession, cache_dir: str | Path | None = None):
    """A fork-safe DiskcacheManager whose cache sits in `cache_dir` (default: a
    fresh temporary folder, removed when the process exits). Results are
    memoized per model and inputs, so re-running a finished job is instant."""
    import diskcache

    if cache_dir is None:
        folder = tempfile.mkdtemp(prefix="headscope-dashboard-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    else:
        folder = str(cache_dir)
        Path(folder).mkdir(parents=True, exist_ok=True)
    cache = diskcache.Cache(folder)
    model_key = session.name
    return ForkSafeDiskcacheManager(session, cache, cache_by=[lambda: model_key], expire=3600)
