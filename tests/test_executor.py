"""Suites fanned out as jobs through submitit (`--executor local` runs the same path as Slurm on this
machine): one job per method, rows merged into one run directory, the same rows as a sequential run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_suite
from harness.commands.cli import main

METHODS = [{"name": "zeroshot"}, {"name": "clip4clip-meanp"}]
KEY = ["method", "split", "direction", "stage"]


def rows(run_dir: Path) -> pd.DataFrame:
    table = pd.DataFrame(json.loads((run_dir / "results.json").read_text())["rows"])
    return table.drop(columns=["ranks_file"]).sort_values(KEY).reset_index(drop=True)


@pytest.mark.slow
def test_local_executor_runs_one_job_per_method_and_merges_the_same_rows(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, METHODS, epochs=2)
    sequential, fanned = tmp_path / "sequential", tmp_path / "fanned"
    assert main(["run", str(suite), "--output", str(sequential), "--quiet"]) == 0
    assert main(["run", str(suite), "--output", str(fanned), "--executor", "local", "--quiet"]) == 0
    out = capsys.readouterr().out
    results = json.loads((fanned / "results.json").read_text())
    jobs = results["executor"]["jobs"]
    assert set(jobs) == {"zeroshot", "clip4clip-meanp"} and results["executor"]["kind"] == "local"
    assert all(job["state"] == "merged" and job["job_id"] and f"job {job['job_id']}" in out for job in jobs.values())
    assert all(job["world_size"] == 1 and job["environment"]["device"] == "cpu" for job in jobs.values())
    pd.testing.assert_frame_equal(rows(fanned), rows(sequential))
    for row in results["rows"]:  # every merged row's per-query ranks are where the row says
        assert (fanned / row["ranks_file"]).is_file() and row["ranks_file"].startswith(f"jobs/{row['method']}/")
    assert (fanned / results["methods"]["clip4clip-meanp"]["checkpoint"]).is_file()
    # a report and the regression gate read the merged run like any other
    assert main(["check", str(sequential), "--write-baseline", str(tmp_path / "baseline.json")]) == 0
    assert main(["check", str(fanned), "--against", str(tmp_path / "baseline.json")]) == 0
    # resuming a finished fanned-out run submits nothing and keeps every row
    assert main(["run", str(suite), "--resume", str(fanned), "--executor", "local", "--quiet"]) == 0
    assert "job " not in capsys.readouterr().out.replace("kept", "")
    pd.testing.assert_frame_equal(rows(fanned), rows(sequential))


def test_slurm_needs_a_partition(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, METHODS)
    assert main(["run", str(suite), "--executor", "slurm", "--output", str(tmp_path / "run"), "--quiet"]) == 2
    assert "--executor slurm needs --slurm-partition P" in capsys.readouterr().err
