"""From nothing to a leaderboard row: `harness new-method` writes a package, pip installs it (with its
entry point) into a folder put on the path, its own conformance test passes, its suite runs to
results.json and `harness report` shows its row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def test_new_method_package_runs_to_a_report_row(tmp_path: Path, synthetic_cache: Path):
    package, site = tmp_path / "pkg", tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")])}

    def harness(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path)

    created = harness("new-method", "frame-proj", "--dir", str(package))
    assert created.returncode == 0, created.stderr
    assert {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} == {
        "pyproject.toml", "README.md", "suite.yaml", "frame_proj/__init__.py", "frame_proj/method.py",
        "tests/test_conformance.py"}
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(package)], check=True, capture_output=True)

    listed = harness("list")
    assert "frame-proj" in listed.stdout and "frame_proj.method.FrameProj" in listed.stdout
    again = harness("new-method", "frame-proj", "--dir", str(tmp_path / "other"))
    assert again.returncode == 2 and "already registered" in again.stderr and "'frame-proj'" in again.stderr

    own_test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                              capture_output=True, text=True, env=env, cwd=package)
    assert own_test.returncode == 0, own_test.stdout + own_test.stderr

    # The package's suite, trimmed to its own method, one epoch (the reference row would double the time).
    suite = yaml.safe_load((package / "suite.yaml").read_text())
    assert [m["name"] for m in suite["methods"]] == ["clip4clip-meanp", "frame-proj"]
    suite["methods"] = [m for m in suite["methods"] if m["name"] == "frame-proj"]
    suite["training"]["epochs"] = 1
    (package / "suite.yaml").write_text(yaml.safe_dump(suite))
    run = harness("run", str(package / "suite.yaml"), "--output", str(tmp_path / "run"), "--cache-dir",
                  str(synthetic_cache), "--quiet")
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = [r for r in results["rows"] if r["method"] == "frame-proj"]
    assert {(r["split"], r["direction"]) for r in rows} == {("test-1kA", "t2v"), ("test-1kA", "v2t")}
    assert all(0 <= r["R1"] <= 100 and r["queries"] > 0 for r in rows)
    assert results["methods"]["frame-proj"]["protocol"]["pooling"].startswith("masked mean")

    report = harness("report", str(tmp_path / "run"), "--format", "md", "--output", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    table = (tmp_path / "report" / "report.md").read_text()
    assert [line for line in table.splitlines() if line.startswith("|") and "frame-proj" in line]
