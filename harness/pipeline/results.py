"""Run directory contents and the results schema.

runs/<suite>/<run-id>/: suite.yaml (resolved), results.json (its schema: harness/pipeline/results.schema.json),
ranks/*.csv (per-query ranks), checkpoints/<method>.pt.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from datetime import datetime, timezone
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import harness
from harness import numerics
from harness.errors import HarnessError
from harness.storage.files import atomic_write

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")
ROW_FIELDS = ("method", "benchmark", "split", "direction", "stage", "post", "R1", "R5", "R10", "MdR", "MnR", "ties",
              "coverage", "queries", "gallery")
PACKAGES = ("torch", "torchvision", "open_clip_torch", "decord", "av", "numpy", "pandas")


def new_run_dir(base: Path, suite_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / suite_name / stamp
    suffix = 1
    while path.exists():
        path = base / suite_name / f"{stamp}-{suffix}"
        suffix += 1
    return path


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout ("-dirty" with uncommitted changes
    to tracked files: the commit alone would not say which code ran)."""
    root = Path(harness.__file__).resolve().parent.parent
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if commit and subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, timeout=5).stdout.strip():
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{harness.__version__}+{commit}" if commit else harness.__version__


def environment(device: torch.device) -> dict:
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        **numerics.description(),  # the CPU kernels torch and MKL chose (harness/numerics.py)
        "packages": packages,
    }


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def write_ranks(run_dir: Path, method: str, split: str, direction: str, ranks: np.ndarray, tied: np.ndarray,
                query_text: list[str], query_video: list[str], top: list[list[str]] | None = None,
                top_scores: np.ndarray | None = None) -> str:
    """One line a query: its rank, whether its ground truth tied, the caption (or video id for v2t) and
    the ground-truth video (what a bootstrap resamples on multi-caption benchmarks); where given, the ids of
    the highest-scored gallery items, best first, and their scores (space-separated)."""
    name = f"{method}__{split}__{direction}.csv"
    columns = {"query": np.arange(len(ranks)), "rank": ranks, "tied": tied, "query_text": query_text,
               "video": query_video}
    if top is not None:
        columns["top"] = [" ".join(ids) for ids in top]
        columns["top_scores"] = [" ".join(f"{value:.6g}" for value in row) for row in top_scores]
    frame = pd.DataFrame(columns)
    atomic_write(run_dir / "ranks" / name, frame.to_csv(index=False), "per-query ranks")
    return f"ranks/{name}"


def non_finite(data, path: str = "$") -> str | None:
    """The JSON path of the first NaN or infinite number in `data` (Python's json reads and writes them, JSON
    has none), or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return path
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = non_finite(value, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


def refuse_non_finite(data, file: Path, what: str) -> None:
    where = non_finite(data)
    if where is not None:
        raise HarnessError(f"{file}: {what} holds a value that is not a finite number at {where}; no metric or cost "
                           "may be NaN or infinite (a broken score or an edited file).")


def write_results(run_dir: Path, results: dict) -> None:
    refuse_non_finite(results, run_dir / "results.json", "the results to write")
    atomic_write(run_dir / "results.json", json.dumps(results, indent=2, default=str, allow_nan=False) + "\n",
                 "results")


@cache
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


def read_results(file: Path) -> dict:
    """results.json, parsed and checked against the schema: a wrong shape is one error naming the file and
    the JSON path (e.g. $.rows[3].R1), never a TypeError later."""
    try:
        results = json.loads(Path(file).read_text())
    except OSError as error:
        raise HarnessError(f"{file}: cannot be read ({error.strerror or error}).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HarnessError(f"{file}: not valid JSON ({error}).") from None
    refuse_non_finite(results, file, "the results file")
    problem = next(iter(sorted(_validator().iter_errors(results), key=lambda e: list(e.absolute_path))), None)
    if problem is not None:
        raise HarnessError(f"{file}: not a harness results file: at {problem.json_path}: {problem.message} "
                           "(the format: harness/pipeline/results.schema.json).")
    return results


def table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    frame = pd.DataFrame(rows)[list(ROW_FIELDS)]
    return frame.to_string(index=False, float_format=lambda v: f"{v:.1f}")


def started_at() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
