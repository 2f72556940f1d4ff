"""Ray backend for report jobs: every model-running task on Ray actors, one model per actor.

Shard tasks (scores and prompt summaries) are spread over `workers` actors; the
final pruning task runs on one of them. The driver keeps checkpointing: each
finished result is saved atomically as soon as its actor returns it, so a
killed job resumes exactly like the local backend. Ray (and the actors' models)
start only when there is work. Ray is an optional extra:
`pip install 'headscope[ray]'`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from headscope.errors import MissingExtraError
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

    def __init__(self, config: ReportConfig, *, workers: int, address: str | None) -> None:
        self.config = config
        self.workers = max(1, workers)
        self.address = address
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
                    ray.init(address=self.address, log_to_driver=False)
                else:
                    ray.init(num_cpus=self.workers, log_to_driver=False, include_dashboard=False)
                self._started_here = True
            self._ray = ray
            self._worker_class = ray.remote(num_cpus=1)(ShardWorker)
        while len(self._actors) < count:
            self._actors.append(self._worker_class.remote(self.config))
        return ray


class ShardWorker:
    """A Ray actor holding one loaded model; runs the job's executor tasks."""

    def __init__(self, config: ReportConfig) -> None:
        import torch

        from headscope.models.loading import load_model

        # Same intra-op thread count as a local run, so float reductions (and
        # hence scores) come out in the same order.
        torch.set_num_threads(1)
        self.config = config
        self.model = load_model(config.model)

    def shard(self, index: int, items: tuple[PromptItem, ...]) -> tuple[int, ShardResult]:
        from headscope.reports.job import shard_task

        return index, shard_task(self.model, items, self.config, index)

    def prune(self, items: list[PromptItem], orders: dict[str, np.ndarray]) -> PruningCurves:
        from headscope.reports.job import pruning_task

        return pruning_task(self.model, items, self.config, orders)
