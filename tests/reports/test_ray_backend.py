"""The Ray backend on a local 2-CPU cluster: one model per actor, every
model-running task (shard scores, prompt summaries, pruning curves) on the
actors, scores and files byte-identical to the local backend."""

from __future__ import annotations

import pytest

from headscope.reports.job import run_report


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
    except ImportError:  # the suite installs the extra (make test): never skip silently
        pytest.fail("the Ray backend tests need the 'ray' extra: pip install 'headscope[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_backend_equals_the_local_backend(
    ray_cluster, toy_model, fast_config, local_report, tmp_path, monkeypatch
):
    import headscope.reports.job as job
    import headscope.reports.scoring as scoring
    import headscope.reports.summaries as summaries

    def on_the_driver(*args, **kwargs):
        raise AssertionError("a model-running task ran on the driver")

    # The actors import their own (unpatched) modules: only the driver's tasks fail.
    for module, name in (
        (job, "shard_task"),
        (job, "pruning_task"),
        (scoring, "score_shard"),
        (summaries, "summarize_shard"),
        (summaries, "prune"),
    ):
        monkeypatch.setattr(module, name, on_the_driver)
    result = run_report(
        fast_config, tmp_path / "ray", backend="ray", workers=2, model=toy_model, progress=False
    )
    assert (result.computed_shards, result.reused_shards, result.pruning_computed) == (3, 0, True)
    assert ray_cluster.is_initialized()  # a cluster it did not start is left running
    assert result.units == local_report.units
    for method, reference in local_report.scores.items():
        assert result.scores[method].tobytes() == reference.tobytes(), method
    for name in ("csv", "parquet", "json", "html"):
        assert result.files[name].read_bytes() == local_report.files[name].read_bytes(), name
    assert result.top_heads == local_report.top_heads


def test_ray_actors_load_the_model_with_the_jobs_device_and_dtype(monkeypatch, fast_config):
    import dataclasses

    from headscope.models import loading
    from headscope.reports import ray_backend

    seen = {}

    def fake_load(name, device="cpu", *, dtype="float32", max_memory=None):
        seen["args"] = (name, str(device), str(dtype))
        return object()

    import torch

    monkeypatch.setattr(loading, "load_model", fake_load)
    config = dataclasses.replace(fast_config, dtype="bfloat16")
    threads = torch.get_num_threads()
    try:
        ray_backend.ShardWorker(config)  # the class itself, not a Ray actor
    finally:
        torch.set_num_threads(threads)
    assert seen["args"] == ("toy-induction", "cpu", "bfloat16")
