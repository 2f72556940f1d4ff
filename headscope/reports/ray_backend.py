"""Ray backend for report jobs: shards run on a Ray cluster, one model per actor.

The driver keeps checkpointing: each finished shard is saved atomically as soon
as its actor returns it, so a killed job resumes exactly like the local backend.
Ray is an optional extra: `pip install 'headscope[ray]'`.
"""

from __future__ import annotations

import sys

from headscope.errors import MissingExtraError


def _ray():
    try:
        import ray
    except ImportError as error:
        raise MissingExtraError(
            "the ray backend needs the 'ray' extra: pip install 'headscope[ray]'"
        ) from error
    return ray


def run_ray(config, shards, pending, store, *, workers: int, address: str | None, progress: bool):
    """Score `pending` shards on Ray actors (`workers` of them, 1 CPU each)."""
    from tqdm import tqdm

    ray = _ray()
    started_here = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), log_to_driver=False, include_dashboard=False)
        started_here = True
    try:
        worker_class = ray.remote(num_cpus=1)(ShardWorker)
        actors = [worker_class.remote(config) for _ in range(max(1, min(workers, len(pending))))]
        queue = list(pending)
        running = {}
        for actor in actors:
            if queue:
                index = queue.pop(0)
                running[actor.score.remote(index, shards[index])] = (actor, index)
        bar = tqdm(
            total=len(shards),
            initial=len(shards) - len(pending),
            desc="shards (ray)",
            unit="shard",
            file=sys.stderr,
            disable=not progress,
        )
        with bar:
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                actor, index = running.pop(done[0])
                store.save(index, ray.get(done[0]))
                bar.update(1)
                if queue:
                    nxt = queue.pop(0)
                    running[actor.score.remote(nxt, shards[nxt])] = (actor, nxt)
    finally:
        if started_here:
            ray.shutdown()


class ShardWorker:
    """A Ray actor holding one loaded model."""

    def __init__(self, config) -> None:
        import torch

        from headscope.models.loading import load_model

        # Same intra-op thread count as a local run, so float reductions (and
        # hence scores) come out in the same order.
        torch.set_num_threads(1)
        self.config = config
        self.model = load_model(config.model)

    def score(self, index, items):
        from headscope.reports.scoring import score_shard

        return score_shard(self.model, items, self.config, shard_index=index)
