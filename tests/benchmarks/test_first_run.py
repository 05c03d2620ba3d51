"""The README's first command, timed (pytest-benchmark): `harness run suites/synthetic.yaml` cold (an empty cache:
the benchmark generated, the small CLIP pre-trained, every video decoded, every method trained, evaluated and
costed) and warm (a second run into a new directory, the frame and backbone caches filled), end to end and per
stage (results.json `seconds`: benchmark, backbone, decoding; each method's train, evaluate, cost).

With `--benchmark-enable` the shipped suite runs, twice (about eight minutes); otherwise a tiny suite checks the same
profile on the VATEX fixture. Timings are recorded (extra_info), never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import write_suite

REPO = Path(__file__).parent.parent.parent


def timed_run(suite: Path, output: Path, cache: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--output", str(output), "--cache-dir",
                    str(cache), "--quiet"], check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"},
                   capture_output=True)
    return time.perf_counter() - start, json.loads((output / "results.json").read_text())


def test_first_run_cold_and_warm(benchmark, tmp_path, vatex, tiny_clip):
    suite = REPO / "suites" / "synthetic.yaml" if not benchmark.disabled else \
        write_suite(tmp_path, vatex, tiny_clip, [{"name": "zeroshot"}, {"name": "clip4clip-meanp"}])
    cache = tmp_path / "cache"
    runs = {}
    for name in ("cold", "warm"):
        if name == "cold":
            runs[name] = benchmark.pedantic(lambda: timed_run(suite, tmp_path / name, cache), rounds=1, iterations=1)
        else:
            runs[name] = timed_run(suite, tmp_path / name, cache)
    for name, (seconds, results) in runs.items():
        assert set(results["seconds"]) == {"benchmark", "backbone", "decoding"}
        assert all(set(entry["seconds"]) <= {"train", "evaluate", "cost"} and entry["seconds"]
                   for entry in results["methods"].values())
        benchmark.extra_info[f"{name}_seconds"] = round(seconds, 1)
        benchmark.extra_info[f"{name}_stages"] = results["seconds"]
        benchmark.extra_info[f"{name}_methods"] = {m: e["seconds"] for m, e in results["methods"].items()}
        benchmark.extra_info["load_average"] = os.getloadavg()
    assert runs["warm"][1]["rows"] == runs["cold"][1]["rows"]  # the caches change no number
