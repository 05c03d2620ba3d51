"""Method and benchmark registries, filled from entry points.

Built-in methods and benchmarks are registered through the same entry-point groups a third-party
plugin package uses (`harness.methods`, `harness.benchmarks`), so the engine never imports a method.
A plugin that fails to import is kept as a broken entry: it is listed with its error and fails only
where it is named. One name registered by two distributions is ambiguous: naming it is an error that
names both, and `distribution:name` picks one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from harness.errors import HarnessError

METHOD_GROUP = "harness.methods"
BENCHMARK_GROUP = "harness.benchmarks"


def normalise(distribution: str) -> str:
    """A distribution name as packaging compares them: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


@dataclass(frozen=True)
class Plugin:
    """One registered entry point: the class it loads, or the error it raised while loading."""

    name: str
    value: str  # module:attribute
    distribution: str
    loaded: Any = None
    error: str | None = None

    @property
    def qualified(self) -> str:
        return f"{normalise(self.distribution)}:{self.name}"

    def where(self) -> str:
        return f"entry point {self.name} = {self.value} of distribution {self.distribution!r}"


class Registry(Mapping[str, Any]):
    """Name (or distribution:name) -> registered class. Iterating gives every registered name, broken and
    ambiguous ones included; looking one of those up raises a HarnessError that says why."""

    def __init__(self, group: str, plugins: list[Plugin]):
        self.group = group
        self.by_name: dict[str, list[Plugin]] = {}
        for plugin in plugins:
            self.by_name.setdefault(plugin.name, []).append(plugin)

    def plugin(self, key: str) -> Plugin:
        """The one plugin `key` names; KeyError when none does."""
        if ":" in key:
            distribution, name = key.split(":", 1)
            for plugin in self.by_name.get(name, []):
                if normalise(plugin.distribution) == normalise(distribution):
                    return plugin
            raise KeyError(key)
        found = self.by_name[key]
        if len(found) > 1:
            raise HarnessError(
                f"{self.group} name {key!r} is registered by {len(found)} distributions: "
                + "; ".join(plugin.where() for plugin in found)
                + ". Name one explicitly: " + " or ".join(repr(plugin.qualified) for plugin in found) + "."
            )
        return found[0]

    def __getitem__(self, key: str) -> Any:
        plugin = self.plugin(key)
        if plugin.error is not None:
            raise HarnessError(f"{self.group} {key!r} cannot be used: its {plugin.where()} failed to import: "
                               f"{plugin.error}")
        return plugin.loaded

    def __contains__(self, key: object) -> bool:
        try:
            self.plugin(key)  # type: ignore[arg-type]
        except KeyError:
            return False
        except HarnessError:  # ambiguous: registered, but must be qualified
            return True
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)

    def plugins(self) -> list[Plugin]:
        return [plugin for found in self.by_name.values() for plugin in found]


def _distribution(point: EntryPoint) -> str:
    return point.dist.name if point.dist is not None else "<unknown distribution>"


def _load(group: str) -> Registry:
    plugins, seen = [], set()
    for point in entry_points(group=group):
        key = (normalise(_distribution(point)), point.name)
        if key in seen:
            continue  # the same distribution seen twice on sys.path
        seen.add(key)
        try:
            plugins.append(Plugin(point.name, point.value, _distribution(point), loaded=point.load()))
        except Exception as error:  # a broken plugin must not hide the others
            plugins.append(Plugin(point.name, point.value, _distribution(point),
                                  error=f"{type(error).__name__}: {error}"))
    return Registry(group, plugins)


@cache
def methods() -> Registry:
    """Method name -> Method subclass."""
    return _load(METHOD_GROUP)


@cache
def benchmarks() -> Registry:
    """Benchmark name -> Benchmark subclass."""
    return _load(BENCHMARK_GROUP)


def describe(cls: Any) -> tuple[str, str]:
    """(module path, first docstring line) of a registered class."""
    doc = (cls.__doc__ or "").strip().splitlines()
    return f"{cls.__module__}.{cls.__qualname__}", (doc[0] if doc else "")


def listing(registry: Registry) -> list[str]:
    """One line per registered entry for `harness list`: broken and ambiguous ones marked, with where
    they come from and why they cannot be used."""
    lines = []
    for name, found in registry.by_name.items():
        for plugin in found:
            label = plugin.qualified if len(found) > 1 else name
            if plugin.error is not None:
                lines.append(f"  {label:<22} BROKEN: {plugin.error}  [{plugin.where()}]")
                continue
            where, summary = describe(plugin.loaded)
            note = f" (ambiguous: {len(found)} distributions register {name!r})" if len(found) > 1 else ""
            lines.append(f"  {label:<22} {summary}{note}  [{where}]")
    return sorted(lines, key=lambda line: line.split()[0])
