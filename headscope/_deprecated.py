"""Old import paths that keep working for one release, with a DeprecationWarning.

headscope 0.2 moved every method that runs a model from `headscope.analyses`
(pure functions of tensors) to `headscope.experiments`. A module that lost
names calls `moved(...)` to get a module-level `__getattr__` that forwards
them. The target is imported by name when first used, so the pure layer never
imports the experiment layer (the import-linter contracts hold).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

#: The release in which the forwarded names go away.
REMOVED_IN = "0.3"


def moved(old_module: str, targets: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `old_module` that forwards each old name to
    `targets[name]`, written "package.module:attribute"."""

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module-level hook PEP 562 names)
        target = targets.get(name)
        if target is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module_name, attribute = target.split(":")
        warnings.warn(
            f"{old_module}.{name} moved to {module_name}.{attribute}; the old path is "
            f"removed in headscope {REMOVED_IN}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module_name), attribute)

    return __getattr__
