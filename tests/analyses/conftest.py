"""The analyses tests run under jaxtyping's runtime shape checks; `unchecked` turns them off
for one block.

pyproject's addopts install jaxtyping's import hook on `headscope.analyses` (beartype as the
checker) before anything imports it, so every annotated argument and return value is
checked (test_typechecks.py shows that it is). A deliberately mis-shaped or mis-typed
argument then raises jaxtyping's TypeCheckError before the function's own validation runs.
Users do not run the checker: they get headscope's one-line InputError, so the tests of
those messages make the bad call inside `unchecked()`. jaxtyping 0.3.11 reads
`jaxtyping.config.jaxtyping_disable` on every call of an instrumented function, so the
switch takes effect for the block only and is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import jaxtyping
import pytest


@contextmanager
def _unchecked() -> Iterator[None]:
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


@pytest.fixture
def unchecked() -> Callable[[], AbstractContextManager[None]]:
    """`with unchecked(): f(bad)` calls `f` without jaxtyping's checks, as users do."""
    return _unchecked
