"""`harness list` shows built-ins and a method registered by a separate plugin package (entry points)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
    result = subprocess.run([sys.executable, "-m", "harness.cli", "list"], capture_output=True, text=True, env=env,
                            check=True)
    out = result.stdout
    methods, benchmarks = out.split("benchmarks:")
    for name in ("zeroshot", "clip4clip-meanp", "my-test-method"):
        assert name in methods
    assert "my_plugin.MyMethod" in methods and "A third-party test method." in methods
    for name in ("msrvtt", "synthetic"):
        assert name in benchmarks
