"""Ray backend for report jobs: every model-running task on Ray actors, one model per actor.

Shard tasks (scores and prompt summaries) are spread over `workers` actors; the
final pruning task runs on one of them. The driver keeps checkpointing: each
finished result is saved atomically as soon as its actor returns it, so a
killed job resumes exactly like the local backend. Ray (and the actors' models)
start only when there is work. A cluster given by address must answer within
`connect_timeout` seconds (a TCP probe, then `ray.init` bounded by the same
deadline), else a one-line `BackendError`. Ray is an optional extra:
`pip install 'headscope[ray]'`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from headscope.errors import BackendError, InputError, MissingExtraError
from headscope.reports.checkpoints import ShardResult, ShardStore
from headscope.reports.config import ReportConfig
from headscope.reports.prompts import PromptItem
from headscope.reports.summaries import PruningCurves


def _ray():
    try:
        import ray
    except ImportError as error:
        raise MissingExtraError(
            "the ray backend needs the 'ray' extra: pip install 'headscope[ray]'"
        ) from error
    return ray


class RayExecutor:
    """The job's executor on Ray (see `job.Executor`): `workers` actors of 1 CPU,
    on the cluster at `address`, or on a local one started (and shut down) here.
    A cluster it did not start is left running; its actors are released."""

    def __init__(
        self,
        config: ReportConfig,
        *,
        workers: int,
        address: str | None,
        connect_timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.workers = max(1, workers)
        self.address = address
        self.connect_timeout = connect_timeout
        self._ray: Any = None
        self._started_here = False
        self._worker_class: Any = None
        self._actors: list[Any] = []

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def run_shards(
        self,
        shards: Sequence[tuple[PromptItem, ...]],
        pending: Sequence[int],
        store: ShardStore,
        *,
        progress: bool,
    ) -> None:
        from headscope.reports.job import _bar

        if not pending:
            return
        ray = self._start(min(self.workers, len(pending)))
        queue = list(pending)
        running = {}
        for actor in self._actors:
            if queue:
                index = queue.pop(0)
                running[actor.shard.remote(index, shards[index])] = actor
        with _bar(len(shards), len(shards) - len(pending), "shards (ray)", progress) as bar:
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                actor = running.pop(done[0])
                store.save(*ray.get(done[0]))
                bar.update(1)
                if queue:
                    index = queue.pop(0)
                    running[actor.shard.remote(index, shards[index])] = actor

    def prune(self, items: Sequence[PromptItem], orders: Mapping[str, np.ndarray]) -> PruningCurves:
        ray = self._start(1)
        return ray.get(self._actors[0].prune.remote(list(items), dict(orders)))

    def close(self) -> None:
        if self._ray is None:
            return
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._started_here:
            self._ray.shutdown()
        self._ray, self._started_here = None, False

    def _start(self, count: int):
        """Ray, with at least `count` actors (each loads the model once)."""
        ray = self._ray
        if ray is None:
            ray = _ray()
            if not ray.is_initialized():
                if self.address:
                    connect(ray, self.address, self.connect_timeout)
                else:
                    ray.init(num_cpus=self.workers, log_to_driver=False, include_dashboard=False)
                self._started_here = True
            self._ray = ray
            self._worker_class = ray.remote(num_cpus=1)(ShardWorker)
        while len(self._actors) < count:
            self._actors.append(self._worker_class.remote(self.config))
        return ray


def connect(ray: Any, address: str, timeout: float) -> None:
    """`ray.init(address=...)`, or a `BackendError` within `timeout` seconds when
    the cluster cannot be reached (a closed port, an unknown or silent host,
    something else than a Ray cluster listening)."""
    deadline = time.monotonic() + timeout
    endpoint = _endpoint(address)
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=timeout).close()
        except OSError as error:
            reason = "timed out" if isinstance(error, TimeoutError) else error.strerror or error
            raise BackendError(
                f"cannot reach the Ray cluster at {address} ({reason}); start one with "
                "`ray start --head` and pass the address it prints, or drop --address"
            ) from None
    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except BaseException as error:  # reported by the caller
            failure.append(error)

    # Ray retries an unanswering cluster for minutes: wait at most until the deadline.
    quiet = _Quiet()
    logging.getLogger("ray._private.worker").addFilter(quiet)
    try:
        thread = threading.Thread(target=init, name="headscope-ray-init", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
    if thread.is_alive():
        raise BackendError(
            f"the Ray cluster at {address} did not answer within {timeout:g} s; check the "
            "address (`ray status` prints it) or raise --connect-timeout"
        )
    if failure:
        message = str(failure[0]).strip().splitlines()
        raise BackendError(
            f"cannot connect to the Ray cluster at {address}: "
            f"{message[0] if message else type(failure[0]).__name__}"
        ) from None


class _Quiet(logging.Filter):
    """Drops Ray's note that a driver started off the main thread sets no SIGTERM handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler" not in record.getMessage()


def _endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a `host:port` or `ray://host:port` address; None for
    addresses Ray resolves itself (`auto`, `local`)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if rest in ("auto", "local"):
        return None
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(
            f"the Ray address {address!r} is not host:port (e.g. 127.0.0.1:6379 or ray://host:10001)"
        )
    return host, int(port)


class ShardWorker:
    """A Ray actor holding one loaded model; runs the job's executor tasks."""

    def __init__(self, config: ReportConfig) -> None:
        import torch

        from headscope.models.loading import load_model

        # Same intra-op thread count as a local run, so float reductions (and
        # hence scores) come out in the same order.
        torch.set_num_threads(1)
        self.config = config
        self.model = load_model(config.model, config.device, dtype=config.dtype)

    def shard(self, index: int, items: tuple[PromptItem, ...]) -> tuple[int, ShardResult]:
        from headscope.reports.job import shard_task

        return index, shard_task(self.model, items, self.config, index)

    def prune(self, items: list[PromptItem], orders: dict[str, np.ndarray]) -> PruningCurves:
        from headscope.reports.job import pruning_task

        return pruning_task(self.model, items, self.config, orders)
