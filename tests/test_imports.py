"""No import circle anywhere in the project: checked on the import graph
(every import statement, those inside functions too), and by importing each official key-map module first in
a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
PACKAGES = ("harness", "baselines", "methods")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for file in (REPO / package).rglob("*.py"):
            name = ".".join(file.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = file
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports. `from package import submodule` is an edge to the
    submodule (the package's __init__ importing its own submodules is no circle)."""
    modules = project_modules()
    graph = {}
    for name, file in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                targets |= submodules or {node.module}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while not component or node not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                found.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle_through_a_lazy_import():
    graph = {"a.head": {"a.official"}, "a.official": {"a.head", "h.checkpoints"}, "h.checkpoints": set()}
    assert circles(graph) == [{"a.head", "a.official"}]
    graph["a.official"] = {"h.checkpoints"}
    assert circles(graph) == []


def test_no_import_circle_anywhere_in_the_project():
    graph = import_graph()
    assert {"baselines.clip4clip.official", "methods.glccl.official", "harness.retrieval.feature_cache"} <= graph.keys()
    assert "baselines.clip4clip.official" in graph["baselines.clip4clip.meanp"]  # the edge the head needs
    assert "harness.data.synthetic_backbone" in graph["harness.pipeline.checkpoints"]  # the suite's backbone, loaded there
    assert [sorted(c) for c in circles(graph)] == []


@pytest.mark.parametrize("official, head", [("baselines.clip4clip.official", "baselines.clip4clip"),
                                            ("methods.glccl.official", "methods.glccl")])
def test_each_official_module_imports_first_in_a_fresh_interpreter(official, head):
    code = f"import {official}; import {head}"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every project module `start` imports, directly or through others (imports inside functions too)."""
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_the_plugin_api_imports_nothing_of_the_pipeline_or_the_commands():
    graph = import_graph()
    api = [name for name in graph if name == "harness.api" or name.startswith("harness.api.")]
    assert {"harness.api.method", "harness.api.backbone", "harness.api.blocks", "harness.api.conformance"} <= set(api)
    for module in api:
        leaked = sorted(m for m in reachable(graph, module)
                        if m.startswith(("harness.pipeline", "harness.commands", "harness.report")))
        assert not leaked, f"{module} reaches {leaked}"


def test_built_in_methods_import_the_harness_only_through_its_api():
    """As a plugin does; and no method borrows another method's modules (zero-shot CLIP is CLIP4Clip's meanP
    without training: the one subclass of another package)."""
    graph = import_graph()
    methods = [name for name in graph if name.startswith(("baselines.", "methods."))]
    assert len(methods) > 20
    allowed = {"baselines.zeroshot": {"baselines.clip4clip.meanp"}}
    for module in methods:
        outside = sorted(m for m in graph[module] if m.startswith("harness") and not m.startswith("harness.api"))
        assert not outside, f"{module} imports {outside}"
        package = ".".join(module.split(".")[:2])
        borrowed = {m for m in graph[module] if m.startswith(("baselines.", "methods.")) and not m.startswith(package)}
        assert borrowed <= allowed.get(package, set()), f"{module} imports another method's modules {sorted(borrowed)}"
