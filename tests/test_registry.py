"""The registries: `harness list` shows built-ins and plugins registered by separate packages (entry points);
a broken plugin is listed with its error and fails only where it is named; a name two distributions register
is an error naming both, and `distribution:name` picks one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.registry import METHOD_GROUP, Plugin, Registry

PLUGIN = '''
from dataclasses import dataclass
from baselines.clip4clip import MeanP


@dataclass
class Params:
    """No hyper-parameters."""


class MyMethod(MeanP):
    """A third-party test method."""

    name = "my-test-method"
    Params = Params
'''


def test_list_shows_builtins_and_an_entry_point_plugin(tmp_path: Path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    info = tmp_path / "my_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [harness.methods]
        my-test-method = my_plugin:MyMethod
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "harness", "list"], capture_output=True, text=True, env=env,
                            check=True)
    out = result.stdout
    methods, benchmarks = out.split("benchmarks:")
    for name in ("zeroshot", "clip4clip-meanp", "my-test-method"):
        assert name in methods
    assert "my_plugin.MyMethod" in methods and "A third-party test method." in methods
    for name in ("msrvtt", "synthetic"):
        assert name in benchmarks


def dist_info(site: Path, distribution: str, entry_points: str) -> None:
    info = site / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def harness(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    """A broken plugin, and two distributions that register one name."""
    site = tmp_path_factory.mktemp("site")
    (site / "broken_plugin.py").write_text("raise ImportError('needs a package that is not installed')\n")
    (site / "twin_a.py").write_text(PLUGIN.replace("A third-party test method.", "Twin A."))
    (site / "twin_b.py").write_text(PLUGIN.replace("A third-party test method.", "Twin B."))
    dist_info(site, "broken-plugin", "[harness.methods]\nbroken-method = broken_plugin:Method\n")
    dist_info(site, "twin-a", "[harness.methods]\ntwin = twin_a:MyMethod\n")
    dist_info(site, "twin-b", "[harness.methods]\ntwin = twin_b:MyMethod\n")
    return site


def suite_file(folder: Path, method: str) -> Path:
    path = folder / f"{method.replace(':', '_')}.yaml"
    path.write_text(f"name: s\nbenchmark: {{name: synthetic, test_splits: [test-1kA]}}\nmethods: [{{name: '{method}'}}]\n")
    return path


def test_broken_and_duplicate_plugins_are_listed_and_the_others_still_list(plugins: Path):
    result = harness(plugins, "list")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "broken-method" in line]
    assert "BROKEN: ImportError: needs a package that is not installed" in line
    assert "broken_plugin:Method" in line and "'broken-plugin'" in line
    for name in ("zeroshot", "glscl", "synthetic"):
        assert name in result.stdout
    out = result.stdout
    assert "twin-a:twin" in out and "twin-b:twin" in out and "Twin A." in out and "Twin B." in out


def test_suites_naming_broken_duplicate_or_qualified_plugins(plugins: Path, tmp_path: Path):
    script = textwrap.dedent(f"""
        import sys
        from harness.errors import SuiteError
        from harness.suite import load_suite
        for name in ("broken-method", "twin", "twin-b:twin", "twin_A:twin", "zeroshot"):
            try:
                suite = load_suite({str(tmp_path)!r} + "/" + name.replace(":", "_") + ".yaml")
                from harness import registry
                print(name, "OK", registry.methods()[suite.methods[0].name].__module__)
            except SuiteError as error:
                print(name, "ERROR", error)
    """)
    for name in ("broken-method", "twin", "twin-b:twin", "twin_A:twin", "zeroshot"):
        suite_file(tmp_path, name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                           check=True).stdout.splitlines()
    result = dict(line.split(" ", 1) for line in lines)
    assert result["broken-method"].startswith("ERROR")
    assert "methods[0].name" in result["broken-method"] and "broken_plugin:Method" in result["broken-method"]
    assert "needs a package that is not installed" in result["broken-method"]
    assert "registered by 2 distributions" in result["twin"]
    assert "'twin-a'" in result["twin"] and "'twin-b'" in result["twin"] and "'twin-a:twin' or 'twin-b:twin'" in result["twin"]
    assert result["twin-b:twin"] == "OK twin_b"
    assert result["twin_A:twin"] == "OK twin_a"  # distribution names compare as packaging normalises them
    assert result["zeroshot"] == "OK baselines.zeroshot"


def test_registry_lookups():
    broken = Plugin("bad", "pkg.mod:Bad", "pkg", error="ImportError: no module named x")
    good = Plugin("good", "pkg.mod:Good", "pkg", loaded=int)
    twins = [Plugin("twin", f"{d}.m:T", d, loaded=d) for d in ("dist-a", "dist-b")]
    methods = Registry(METHOD_GROUP, [broken, good, *twins])
    assert sorted(methods) == ["bad", "good", "twin"]
    assert "bad" in methods and "twin" in methods and "dist_b:twin" in methods and "nope" not in methods
    assert methods["good"] is int and methods["Dist.B:twin"] == "dist-b"
    with pytest.raises(HarnessError, match="'bad' cannot be used: .*pkg.mod:Bad.*ImportError: no module named x"):
        methods["bad"]
    with pytest.raises(HarnessError, match="'dist-a:twin' or 'dist-b:twin'"):
        methods["twin"]
    with pytest.raises(KeyError):
        methods["dist-c:twin"]
