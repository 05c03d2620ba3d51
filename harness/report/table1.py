"""GLSCL's Table I regenerated (`harness report [RUN ...] --table glscl-table1`): the paper's layout (method,
venue, t2v and v2t R@1/5/10/MdR/MnR, head FLOPs), its published figures beside the reproduced ones, and
three columns of cost per method: the head FLOPs it prints, what the harness counts for the same stage (the
1k-A matrix's score stage, docs/cost.md section 7) and what that stage measures.

The cost part needs no data and no training (a `harness cost` record, or one computed from a suite with
random weights); the reproduced accuracy fills in from runs on the real benchmark, where they have the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.cost.model import MATRIX_1KA
from harness.errors import HarnessError
from harness.report.claims import MethodFigures, find_method, templates
from harness.report.leaderboard import Run
from harness.report.reported import METRICS, POST_NAMES, backbone_name, dataset_name
from harness.storage.files import atomic_write

TABLES = ("glscl-table1",)
SOURCE = "GLSCL Table I"
DATASET = "msrvtt-1kA"
DIRECTIONS = ("t2v", "v2t")
FORMATS = ("tex", "md")
# How the paper marks a post-processed row (its QB-Norm rows are starred).
POST_MARKS = {"qbnorm": "*", "dsl": "‡"}
METRIC_HEADERS = {"R1": "R@1", "R5": "R@5", "R10": "R@10", "MdR": "MdR", "MnR": "MnR"}


@dataclass
class Table1Row:
    method: str  # the paper's name
    venue: str
    backbone: str  # the papers' spelling, ViT-B/32
    post: str  # reported.csv's post column: none, qbnorm, dsl
    reported: dict[str, float | None]  # "t2v R1" -> value
    reproduced: dict[str, float | None]  # the same keys, from a run; empty without one
    harness_method: str | None
    head_flops_g: float | None  # printed
    counted_gmac: float | None  # the 1k-A score stage, counted at the record's backbone
    measured_s: float | None  # the same stage, measured

    @property
    def label(self) -> str:
        return self.method + POST_MARKS.get(self.post, "")


def check_table(name: str) -> str:
    if name not in TABLES:
        raise HarnessError(f"--table {name!r}: no such table; choose from {', '.join(TABLES)}.")
    return name


def metric_keys() -> list[str]:
    return [f"{direction} {metric}" for direction in DIRECTIONS for metric in METRICS]


def table1_rows(reported: pd.DataFrame, figures: dict[str, MethodFigures], counted_backbone: str,
                runs: list[Run] = ()) -> list[Table1Row]:
    """One row per method, backbone and post-processing of reported.csv's Table I rows, in the paper's order.
    `counted_backbone`: the backbone the figures were counted at (other backbones' rows get no counted cost)."""
    table = reported[reported["source"] == SOURCE]
    if table.empty:
        raise HarnessError(f"reported.csv: no rows from {SOURCE!r}; Table I cannot be regenerated.")
    rows = []
    for (backbone, method, post), group in table.groupby(["backbone", "method", "post"], sort=False):
        values = {f"{r['direction']} {m}": None if pd.isna(r[m]) else float(r[m])
                  for r in group.to_dict("records") for m in METRICS}
        head = group["head_flops_g"].dropna()
        venue = group["venue"].dropna()
        found = find_method(method, figures)
        here = found is not None and backbone == counted_backbone
        rows.append(Table1Row(method, venue.iloc[0] if len(venue) else "", backbone, post, values,
                              reproduced(runs, method, backbone, post), found.name if found else None,
                              float(head.iloc[0]) if len(head) else None,
                              found.matrix_macs / 1e9 if here else None,
                              found.score_s * MATRIX_1KA if here and found.score_s is not None else None))
    return rows


def reproduced(runs: list[Run], method: str, backbone: str, post: str) -> dict[str, float | None]:
    """The first run's figures for the harness method reported as `method` on MSR-VTT 1k-A at `backbone`."""
    for run in runs:
        suite, methods = run.results.get("suite", {}), run.results.get("methods", {})
        if backbone_name(suite.get("backbone", {}).get("arch", "")) != backbone:
            continue
        train_split = suite.get("benchmark", {}).get("train_split")
        values = {}
        for row in run.results["rows"]:
            if (methods.get(row["method"], {}).get("reported_as") == method and row.get("post", "none") == post
                    and dataset_name(row["benchmark"], row["split"], train_split) == DATASET
                    and row.get("stage", "single") in ("single", "two-stage") and not row.get("approximate")
                    and "limit" not in row):
                values.update({f"{row['direction']} {m}": float(row[m]) for m in METRICS})
        if values:
            return values
    return {}


def cell(value: float | None, pattern: str = "{:.1f}") -> str:
    return "" if value is None else pattern.format(value)


def table1_context(rows: list[Table1Row], provenance: str, counted_backbone: str, runs: list[Run]) -> dict:
    """Every figure as text, grouped by backbone as the paper groups them."""
    sections: dict[str, list[dict]] = {}
    for row in rows:
        sections.setdefault(row.backbone, []).append({
            "label": row.label, "venue": row.venue, "harness": row.harness_method or "",
            "values": [(cell(row.reported.get(k)), cell(row.reproduced.get(k))) for k in metric_keys()],
            "head": cell(row.head_flops_g, "{:g}"), "counted": cell(row.counted_gmac, "{:.4g}"),
            "measured": cell(row.measured_s, "{:.3g}")})
    marks = sorted({(POST_MARKS[r.post], POST_NAMES.get(r.post, r.post)) for r in rows if r.post in POST_MARKS})
    return {"sections": sections, "metrics": [METRIC_HEADERS[m] for m in METRICS], "directions": DIRECTIONS,
            "provenance": provenance, "counted_backbone": counted_backbone, "marks": marks,
            "runs": [run.name for run in runs], "matrix": f"{MATRIX_1KA:,}"}


def check_formats(formats: list[str]) -> list[str]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise HarnessError(f"--format {','.join(formats)}: Table I is written as {' and '.join(FORMATS)} "
                           f"(not {', '.join(unknown) or 'nothing'}).")
    return formats


def write_table1(context: dict, formats: list[str], output: Path) -> list[Path]:
    check_formats(formats)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = output / f"glscl-table1.{fmt}"
        atomic_write(path, templates().get_template(f"table1.{fmt}.j2").render(**context))
        written.append(path)
    return written
