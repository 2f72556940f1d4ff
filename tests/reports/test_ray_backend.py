"""The Ray backend on a local 2-CPU cluster: one model per actor, scores and
files byte-identical to the local backend."""

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
    ray_cluster, toy_model, fast_config, local_report, tmp_path
):
    result = run_report(
        fast_config, tmp_path / "ray", backend="ray", workers=2, model=toy_model, progress=False
    )
    assert (result.computed_shards, result.reused_shards) == (3, 0)
    assert ray_cluster.is_initialized()  # a cluster it did not start is left running
    assert result.units == local_report.units
    for method, reference in local_report.scores.items():
        assert result.scores[method].tobytes() == reference.tobytes(), method
    for name in ("csv", "parquet", "json"):
        assert result.files[name].read_bytes() == local_report.files[name].read_bytes(), name
    assert result.top_heads == local_report.top_heads
