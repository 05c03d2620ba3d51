"""`harness check`: a regression gate. Compare a run's rows with a stored baseline (or with the published
numbers), print every metric that moved beyond its tolerance, and fail if any did.

A baseline (reports/baselines/<suite>.json, written by --write-baseline) holds, per row key (method,
benchmark, split, direction, stage, post), the five metrics and the method's MACs per video, per query
and per pair. A baseline row absent from the run fails too; a run row absent from the baseline is listed
as new. Against the published numbers, rows without a published counterpart are listed and never count
as passing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.report.leaderboard import Run
from harness.report.reported import METRICS, counterpart, read_reported
from harness.storage.files import atomic_write
from harness.pipeline.results import refuse_non_finite

KEY = ("method", "benchmark", "split", "direction", "stage", "post")
COST_METRICS = ("per_video_macs", "per_query_macs", "per_pair_macs")


@dataclass
class Tolerance:
    value: float
    relative: bool = False

    def allows(self, reference: float, value: float) -> bool:
        limit = self.value * abs(reference) if self.relative else self.value
        return abs(value - reference) <= limit + 1e-9

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


# Against a baseline: about one query of a 250-query split for R@K; MACs must not move.
BASELINE_TOLERANCES = {"R1": Tolerance(0.5), "R5": Tolerance(0.5), "R10": Tolerance(0.5), "MdR": Tolerance(0.5),
                       "MnR": Tolerance(1.0), **{m: Tolerance(1e-3, relative=True) for m in COST_METRICS}}
# Against the papers: a faithful re-implementation lands within about a point (seeds, hardware).
REPORTED_TOLERANCES = {"R1": Tolerance(1.0), "R5": Tolerance(1.0), "R10": Tolerance(1.0), "MdR": Tolerance(0.5),
                       "MnR": Tolerance(1.0)}


def parse_tolerances(items: list[str], defaults: dict[str, Tolerance]) -> dict[str, Tolerance]:
    """`R1=0.3` (absolute) or `per_pair_macs=1%` (relative) over the defaults."""
    tolerances = dict(defaults)
    for item in items:
        name, _, value = item.partition("=")
        if name not in defaults or not value:
            raise HarnessError(f"--tolerance {item!r}: expected METRIC=VALUE with METRIC one of "
                               f"{', '.join(defaults)} (VALUE absolute, or a percentage like 1%).")
        try:
            tolerances[name] = (Tolerance(float(value[:-1]) / 100, relative=True) if value.endswith("%")
                                else Tolerance(float(value)))
        except ValueError:
            raise HarnessError(f"--tolerance {item!r}: {value!r} is not a number.") from None
        if not math.isfinite(tolerances[name].value) or tolerances[name].value < 0:
            raise HarnessError(f"--tolerance {item!r}: a tolerance is a finite number, 0 or more.")
    return tolerances


KEY_DEFAULTS = {"stage": "single", "post": "none"}  # rows written before these fields existed


def row_key(row: dict) -> tuple:
    return tuple(str(row.get(k, KEY_DEFAULTS.get(k, ""))) for k in KEY)


def refuse_limited(run: Run) -> None:
    """A --limit run (each split's first videos) is a smoke test: its numbers are never gated or compared."""
    limited = sorted({row["limit"] for row in run.results["rows"] if "limit" in row})
    if limited:
        raise HarnessError(f"{run.folder}: its rows come from a --limit run (the first {limited[0]} videos of each "
                           "split): a smoke test, never gated against a baseline or compared with published numbers. "
                           "Run the suite without --limit.")


def baseline_rows(run: Run) -> list[dict]:
    """The run's rows reduced to what the gate compares."""
    refuse_limited(run)
    rows = []
    for row in run.results["rows"]:
        cost = run.results.get("methods", {}).get(row["method"], {}).get("cost") or {}
        record = {k: v for k, v in zip(KEY, row_key(row))}
        record.update({m: row[m] for m in METRICS})
        if cost:
            record.update(per_video_macs=cost["per_video"], per_query_macs=cost["per_query"],
                          per_pair_macs=(cost["coarse"] if row.get("stage") == "coarse" else cost["score"])["per_pair"])
        rows.append(record)
    return rows


def numeric_environment(results: dict) -> dict:
    """What a run's numbers depend on beyond the code and the seed: the device (a GPU by its name) and, for
    work on the CPU (the synthetic suite trains there), the torch version, its thread count and the kernels of
    ATen, MKL, oneDNN and NNPACK (harness/numerics.py), which split and round float32 sums differently. Not the
    CPU's model: the pins are there to make it irrelevant (numerics.py says how far that is shown)."""
    environment = results.get("environment", {})
    gpu = str(environment.get("device", "")).startswith("cuda")
    return {"device": environment.get("device"), **({"device_name": environment.get("device_name")} if gpu else {}),
            "torch": environment.get("packages", {}).get("torch"), "torch_threads": environment.get("torch_threads"),
            **{name: environment.get(name) for name in ("cpu_capability", "mkl_branch", "onednn", "nnpack")}}


def write_baseline(run: Run, path: Path) -> Path:
    suite = run.results.get("suite", {})
    atomic_write(path, json.dumps({
        "suite": suite.get("name"), "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "from_run": run.folder.name, "code_version": run.results.get("code_version"),
        "environment": numeric_environment(run.results), "rows": baseline_rows(run)}, indent=2) + "\n")
    return path


def read_baseline(baseline_file: Path) -> dict:
    try:
        baseline = json.loads(Path(baseline_file).read_text())
        if not isinstance(baseline["rows"], list):
            raise TypeError("'rows' is not a list")
    except FileNotFoundError:
        raise HarnessError(f"{baseline_file}: baseline not found; write one with `harness check RESULTS "
                           f"--write-baseline {baseline_file}`.") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise HarnessError(f"{baseline_file}: not a harness baseline ({error}).") from None
    refuse_non_finite(baseline, baseline_file, "the baseline")
    return baseline


def environment_changes(run: Run, baseline: dict) -> list[str]:
    """`name: baseline's -> run's` for each part of `numeric_environment` that differs (none where the
    baseline predates recording it)."""
    then, now = baseline.get("environment", {}), numeric_environment(run.results)
    return [f"{name}: {then[name]} -> {now[name]}" for name in now if name in then and then[name] != now[name]]


def compare_with_baseline(run: Run, baseline: dict, tolerances: dict[str, Tolerance]) -> pd.DataFrame:
    now = {row_key(r): r for r in baseline_rows(run)}
    then = {row_key(r): r for r in baseline["rows"]}
    lines = []
    for key, old in then.items():
        new = now.get(key)
        if new is None:
            lines.append({**dict(zip(KEY, key)), "metric": "(row)", "status": "missing"})
            continue
        for metric, tolerance in tolerances.items():
            if metric not in old or metric not in new:
                continue
            lines.append({**dict(zip(KEY, key)), "metric": metric, "reference": old[metric], "value": new[metric],
                          "delta": new[metric] - old[metric], "tolerance": str(tolerance),
                          "status": "ok" if tolerance.allows(old[metric], new[metric]) else "moved"})
    for key in now.keys() - then.keys():
        lines.append({**dict(zip(KEY, key)), "metric": "(row)", "status": "new"})
    return pd.DataFrame(lines)


def compare_with_reported(run: Run, tolerances: dict[str, Tolerance], reported_csv: Path | None = None) -> pd.DataFrame:
    refuse_limited(run)
    reported = read_reported(reported_csv)
    suite = run.results.get("suite", {})
    arch, train_split = suite.get("backbone", {}).get("arch", ""), suite.get("benchmark", {}).get("train_split")
    lines = []
    for row in run.results["rows"]:
        if row.get("stage", "single") not in ("single", "two-stage"):
            continue  # a first stage alone is not what a paper reports
        reported_as = run.results.get("methods", {}).get(row["method"], {}).get("reported_as")
        match = counterpart(reported, reported_as, row, arch, train_split)
        key = dict(zip(KEY, row_key(row)))
        if match is None:
            lines.append({**key, "metric": "(row)", "status": "no published counterpart"})
            continue
        for metric, tolerance in tolerances.items():
            if pd.isna(match.get(metric)):
                continue
            lines.append({**key, "metric": metric, "reference": float(match[metric]), "value": float(row[metric]),
                          "delta": float(row[metric]) - float(match[metric]), "tolerance": str(tolerance),
                          "status": "ok" if tolerance.allows(float(match[metric]), float(row[metric])) else "moved",
                          "source": f"{match['method']}, {match['source']}"})
    return pd.DataFrame(lines)


def failed(lines: pd.DataFrame) -> bool:
    """Any metric moved or baseline row missing; against the papers, also nothing compared at all."""
    if lines.empty:
        return True
    return bool(lines["status"].isin(["moved", "missing"]).any() or not (lines["status"] == "ok").any())


def summary(lines: pd.DataFrame) -> str:
    if lines.empty:
        return "nothing to compare: the results have no rows."
    shown = lines[lines["status"] != "ok"]
    counts = ", ".join(f"{n} {s}" for s, n in lines["status"].value_counts().items())
    table = (shown.astype(object).fillna("").to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(shown)
             else "every metric within tolerance")
    return f"{table}\n{counts}"
