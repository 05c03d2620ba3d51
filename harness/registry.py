"""Method and benchmark registries, filled from entry points.

Built-in methods and benchmarks are registered through the same entry-point groups a third-party
plugin package uses (`harness.methods`, `harness.benchmarks`), so the engine never imports a method.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from harness.errors import HarnessError

METHOD_GROUP = "harness.methods"
BENCHMARK_GROUP = "harness.benchmarks"


def _load(group: str) -> dict[str, Any]:
    loaded: dict[str, Any] = {}
    for point in entry_points(group=group):
        if point.name in loaded:
            continue  # the same distribution seen twice on sys.path
        try:
            loaded[point.name] = point.load()
        except Exception as error:  # a broken plugin must not hide the others
            raise HarnessError(
                f"plugin {point.name!r} (entry point {point.value!r} in group {group!r}) failed to load: {error}"
            ) from error
    return loaded


@cache
def methods() -> dict[str, Any]:
    """Method name -> Method subclass."""
    return _load(METHOD_GROUP)


@cache
def benchmarks() -> dict[str, Any]:
    """Benchmark name -> Benchmark subclass."""
    return _load(BENCHMARK_GROUP)


def describe(cls: Any) -> tuple[str, str]:
    """(module path, first docstring line) of a registered class."""
    doc = (cls.__doc__ or "").strip().splitlines()
    return f"{cls.__module__}.{cls.__qualname__}", (doc[0] if doc else "")
