"""Background callbacks: long computations (CHG, importance over a prompt set,
attention flow on long prompts, composition scores) run in a forked process
managed by dash's DiskcacheManager, with progress and a cancel button.

The result cache lives in a temporary folder, removed by `shutdown()` (which
`run_dashboard` calls on every exit) and, failing that, at interpreter exit.

A job process that ends without a result (killed, out of memory, `os._exit`)
is reported on its page: each background callback names its outputs for that
case with `on_death`, and the manager answers the page's next poll with them
instead of leaving the page idle. A job the page cancelled or replaced is not
reported. Job processes ignore Ctrl+C (the server stops them) and end
themselves when the server process disappears.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dash import Input, Output
from dash.background_callback import DiskcacheManager

from headscope.dashboard.session import ModelSession

#: How often (ms) the page polls a running job for progress and its result.
POLL_INTERVAL_MS = 300

#: Seconds between a job process's checks that the server is still there.
PARENT_CHECK_S = 1.0

_ON_DEATH = "_headscope_on_death"


def job_options(
    prefix: str,
    manager: Any,
    *,
    run_button: bool = True,
    prevent_initial_call: bool | str = True,
) -> dict[str, Any]:
    """The keyword arguments of a background callback whose progress block is
    `components.progress_block(prefix)`: progress into `<prefix>-progress` and its
    label, the block shown and `<prefix>-cancel` enabled while it runs (and
    `<prefix>-run` disabled, with `run_button`), cancelled by `<prefix>-cancel`."""
    running: list[tuple[Output, Any, Any]] = [
        (Output(f"{prefix}-progress-block", "style"), {"display": "flex"}, {"display": "none"})
    ]
    if run_button:
        running.append((Output(f"{prefix}-run", "disabled"), True, False))
    running.append((Output(f"{prefix}-cancel", "disabled"), False, True))
    return {
        "background": True,
        "manager": manager,
        "interval": POLL_INTERVAL_MS,
        "progress": [
            Output(f"{prefix}-progress", "value"),
            Output(f"{prefix}-progress", "max"),
            Output(f"{prefix}-progress-label", "children"),
        ],
        "running": running,
        "cancel": [Input(f"{prefix}-cancel", "n_clicks")],
        "prevent_initial_call": prevent_initial_call,
    }


def on_death(fallback: Callable[[str], Sequence[Any]], what: str):
    """Mark a background callback: when its job process ends without a result,
    the page gets `fallback(message)` (its outputs with the message in place).
    Returns the function itself, so dash's cache key (its source) is unchanged."""

    def mark(function: Callable[..., Any]) -> Callable[..., Any]:
        setattr(function, _ON_DEATH, (fallback, what))
        return function

    return mark


def death_message(what: str, exitcode: int | None) -> str:
    """One line for a job that ended without a result."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how = f"its process was killed ({name}"
        how += ", e.g. out of memory)" if -exitcode == signal.SIGKILL else ")"
    elif exitcode is not None:
        how = f"its process exited with status {exitcode}"
    else:
        how = "its process ended"
    return f"{what} stopped without a result: {how}. Run it again, or try a shorter input."


def _prepare_job_process(server_pid: int) -> None:
    """In a freshly forked job process: Ctrl+C belongs to the server (which stops
    its jobs), SIGTERM ends the job, and a daemon thread ends it when the server
    process goes away (killed without a chance to stop it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="headscope-job-watchdog", daemon=True).start()


def _kill(process: Any) -> None:
    """SIGKILL a job process and its children (e.g. max-flow workers), then reap
    it through its Process object, which keeps its exit code (dash's own
    terminate_job reaps with psutil, and the Process would never learn it)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    with contextlib.suppress(OSError, ValueError):
        process.kill()
    process.join(timeout=1)


class ForkSafeDiskcacheManager(DiskcacheManager):
    """DiskcacheManager that forks its job processes while holding the
    session's model lock, so a child never inherits a model with another
    request's hooks half-installed (see `ModelSession.lock`), keeps its job
    processes to report the ones that die, and stops them all in `shutdown`."""

    def __init__(
        self, session: ModelSession, cache, *, folder: str | None = None, **options
    ) -> None:
        self._session = session
        self._guard = threading.Lock()
        self._processes: dict[str, Any] = {}  # pid -> multiprocess.Process
        self._reports: dict[str, tuple[Callable[[str], Sequence[Any]], str]] = {}
        self._stopped: set[str] = set()  # pids the pages cancelled or replaced
        self._folder = folder  # removed by shutdown() when set (a temporary folder)
        self._closed = False
        super().__init__(cache, **options)

    # -- jobs ---------------------------------------------------------------------------------

    def make_job_fn(self, fn, progress, key=None):
        job_fn = super().make_job_fn(fn, progress, key)

        def run_job(*args):
            _prepare_job_process(server_pid)
            return job_fn(*args)

        server_pid = os.getpid()
        report = getattr(fn, _ON_DEATH, None)
        if report is not None:
            setattr(run_job, _ON_DEATH, report)
        return run_job

    def call_job_fn(self, key, job_fn, args, context):
        from multiprocess import Process  # dash's DiskcacheManager does the same

        self._prune()
        with self._session.lock:
            process = Process(
                target=job_fn, args=(key, self._make_progress_key(key), args, context)
            )
            process.start()
        pid = str(process.pid)
        with self._guard:
            self._processes[pid] = process
            report = getattr(job_fn, _ON_DEATH, None)
            if report is not None:
                self._reports[pid] = report
        return process.pid

    def terminate_job(self, job):
        if job is None:
            return
        pid = str(job)
        with self._guard:
            self._stopped.add(pid)
            process = self._processes.get(pid)
        # Only a job of ours that is still running: an ended job's pid may be reused.
        if process is not None and process.exitcode is None:
            _kill(process)

    def job_running(self, job):
        # Our own record, not the pid: once a job has ended its pid may be reused.
        with self._guard:
            process = self._processes.get(str(job))
        return process is not None and process.exitcode is None

    def get_result(self, key, job):
        pid = None if job is None else str(job)
        with self._guard:
            process = self._processes.get(pid) if pid is not None else None
        # Whether it had ended is read before the result: a job that ended first and
        # left no result never will.
        exitcode = process.exitcode if process is not None else None
        result = super().get_result(key, job)
        if result is not self.UNDEFINED or process is None:
            if result is not self.UNDEFINED:
                self._forget(pid)
            return result
        if exitcode is None:
            return result  # still running
        with self._guard:
            stopped = pid in self._stopped
            report = self._reports.get(pid)
        self._forget(pid)
        if stopped or report is None:
            return result  # cancelled or replaced: dash shows no update
        fallback, what = report
        return fallback(death_message(what, exitcode))

    def _forget(self, pid: str | None) -> None:
        with self._guard:
            self._processes.pop(pid, None)
            self._reports.pop(pid, None)
            self._stopped.discard(pid)

    def _prune(self) -> None:
        """Forget jobs that ended after the page cancelled or replaced them
        (no poll comes for those)."""
        with self._guard:
            stopped = [(pid, self._processes.get(pid)) for pid in self._stopped]
        for pid, process in stopped:
            if process is None or process.exitcode is not None:
                self._forget(pid)

    def running_jobs(self) -> list[int]:
        """Pids of the job processes still running."""
        with self._guard:
            processes = list(self._processes.values())
        return [p.pid for p in processes if p.exitcode is None]

    # -- shutdown -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every job process (and its children), close the cache and
        remove its temporary folder. Idempotent."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            processes = list(self._processes.values())
            self._processes.clear()
        for process in processes:
            if process.exitcode is None:
                _kill(process)
        with contextlib.suppress(Exception):
            self.handle.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def background_manager(
    session: ModelSession, cache_dir: str | Path | None = None
) -> ForkSafeDiskcacheManager:
    """A fork-safe DiskcacheManager whose cache sits in `cache_dir` (default: a
    fresh temporary folder, removed by `shutdown()` or at interpreter exit).
    Results are memoized per model and inputs, so re-running a finished job is
    instant."""
    import diskcache

    owned = None
    if cache_dir is None:
        folder = owned = tempfile.mkdtemp(prefix="headscope-dashboard-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    else:
        folder = str(cache_dir)
        Path(folder).mkdir(parents=True, exist_ok=True)
    cache = diskcache.Cache(folder)
    model_key = session.name
    return ForkSafeDiskcacheManager(
        session, cache, folder=owned, cache_by=[lambda: model_key], expire=3600
    )
