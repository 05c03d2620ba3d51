"""Run directory, result schema, atomic writes.

runs/<suite>/<run-id>/: suite.yaml (resolved), results.json, ranks/*.csv (per-query ranks),
checkpoints/<method>.pt, log.txt.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import harness

SCHEMA_VERSION = 1
ROW_FIELDS = ("method", "benchmark", "split", "direction", "stage", "post", "R1", "R5", "R10", "MdR", "MnR", "ties",
              "coverage", "queries", "gallery")
PACKAGES = ("torch", "torchvision", "open_clip_torch", "decord", "av", "numpy", "pandas")


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes the file private; results and reports are shared
    os.replace(temporary, path)


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
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "packages": packages,
    }


def write_ranks(run_dir: Path, method: str, split: str, direction: str, ranks: np.ndarray, tied: np.ndarray,
                query_text: list[str], query_video: list[str]) -> str:
    """One line a query: its rank, whether its ground truth tied, the caption (or video id for v2t) and
    the ground-truth video (what a bootstrap resamples on multi-caption benchmarks)."""
    name = f"{method}__{split}__{direction}.csv"
    frame = pd.DataFrame({"query": np.arange(len(ranks)), "rank": ranks, "tied": tied, "query_text": query_text,
                          "video": query_video})
    atomic_write(run_dir / "ranks" / name, frame.to_csv(index=False))
    return f"ranks/{name}"


def write_results(run_dir: Path, results: dict) -> None:
    atomic_write(run_dir / "results.json", json.dumps(results, indent=2, default=str) + "\n")


def table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    frame = pd.DataFrame(rows)[list(ROW_FIELDS)]
    return frame.to_string(index=False, float_format=lambda v: f"{v:.1f}")


def started_at() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
