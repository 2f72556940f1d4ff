"""jaxtyping's shape checks really run on headscope.analyses under pytest (pyproject addopts:
``--jaxtyping-packages=headscope.analyses,beartype.beartype``), and `unchecked` (conftest)
turns them off for one block only."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import jaxtyping
import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

import headscope.analyses
from headscope.analyses import flow, position, spectral, taxonomy
from headscope.analyses.summary import HeadSummary
from headscope.errors import InputError


@pytest.fixture(autouse=True)
def _checker_requested(request) -> None:
    packages = request.config.getoption("jaxtyping_packages") or ""
    if "headscope.analyses" not in packages.split(","):
        pytest.skip("run without --jaxtyping-packages=headscope.analyses (addopts overridden)")


def uniform(n_layers: int, n_heads: int, n: int) -> torch.Tensor:
    return torch.full((n_layers, n_heads, n, n), 1.0 / n, dtype=torch.float64)


def analyses_modules() -> list[str]:
    names = [info.name for info in pkgutil.iter_modules(headscope.analyses.__path__)]
    return ["headscope.analyses", *(f"headscope.analyses.{name}" for name in names)]


@pytest.mark.parametrize("name", analyses_modules())
def test_every_analyses_module_is_loaded_through_the_import_hook(name: str) -> None:
    # The loader is jaxtyping's only if its finder was on sys.meta_path when the module was
    # first imported, i.e. before tests/conftest.py or anything else could import it.
    module = importlib.import_module(name)
    assert type(module.__spec__.loader).__module__ == "jaxtyping._import_hook"
    functions = [
        value
        for _, value in inspect.getmembers(module, inspect.isfunction)
        if value.__module__ == name
    ]
    for function in functions:
        assert hasattr(function, "__wrapped__"), f"{name}.{function.__name__} is not checked"


def test_dataclasses_check_their_fields() -> None:
    grid = torch.zeros(2, 3)  # [layer head]
    with pytest.raises(TypeCheckError, match="entropy"):
        HeadSummary(entropy=torch.zeros(2), max_weight=grid, first_token=grid, previous_token=grid)


def test_checks_are_on_outside_unchecked(unchecked) -> None:
    assert not jaxtyping.config.jaxtyping_disable
    with unchecked():
        assert jaxtyping.config.jaxtyping_disable
    assert not jaxtyping.config.jaxtyping_disable


def test_a_wrongly_shaped_argument_is_a_type_check_error_naming_it(unchecked) -> None:
    pattern = uniform(2, 3, 4)
    bad = torch.ones(2, 4)  # [layer head] with 4 heads for a 3-head pattern
    with pytest.raises(TypeCheckError, match="parameter 'head_weights'"):
        flow.rollout(pattern, head_weights=bad)
    # without the checker (as users run it) headscope's own message comes through
    with pytest.raises(InputError, match="head_weights must have shape"), unchecked():
        flow.rollout(pattern, head_weights=bad)


def test_a_wrongly_typed_argument_is_a_type_check_error() -> None:
    with pytest.raises(TypeCheckError, match="parameter 'pattern'"):
        flow.rollout(uniform(2, 3, 4).numpy())


def test_a_mismatched_return_is_a_type_check_error(monkeypatch) -> None:
    # augment promises [layer query key] with the input's sizes; make the head mean lie
    monkeypatch.setattr(flow, "_head_mean", lambda *args: uniform(2, 1, 5)[:, 0])
    with pytest.raises(TypeCheckError, match="return value of headscope.analyses.flow.augment"):
        flow.augment(uniform(2, 3, 4))


def test_loose_inputs_the_functions_convert_pass_the_checker() -> None:
    pattern = uniform(2, 3, 4)
    expected = flow.augment(pattern, head_weights=torch.tensor([1.0, 0.0, 0.0]))
    for weights in ([1.0, 0.0, 0.0], [[1.0, 0.0, 0.0]] * 2, np.array([1.0, 0.0, 0.0])):
        assert torch.equal(flow.augment(pattern, head_weights=weights), expected)
    batch = torch.stack([pattern, pattern])
    assert position.sink_scores(batch, causal=True, lengths=[4, 3]).shape == (2, 2, 3, 4)
    causal = torch.tril(torch.ones(4, 4, dtype=torch.float64))
    causal = (causal / causal.sum(-1, keepdim=True)).expand(2, 3, 4, 4)
    scores = taxonomy.head_scores_from_pattern(causal, [5, 6, 5, 6])
    assert scores["induction"].shape == (2, 3)
    values = np.linspace(1.0, 10.0, 50)
    assert spectral.heavy_tail_alpha(values) == spectral.heavy_tail_alpha(torch.tensor(values))
