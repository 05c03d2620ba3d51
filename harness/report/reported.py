"""The published numbers (reported.csv: GLSCL Tables I-II and baseline papers) and how a harness result
row finds its published counterpart: same method, benchmark, backbone, direction and post-processing."""

from __future__ import annotations

from functools import cache
from importlib import resources
from io import StringIO
from pathlib import Path

import pandas as pd

METRICS = ("R1", "R5", "R10", "MdR", "MnR")

# (benchmark, test split, training split or None for any) -> the dataset name reported.csv uses
DATASETS = {
    ("msrvtt", "test-1kA", "train-7k"): "msrvtt-7k",
    ("msrvtt", "test-1kA", None): "msrvtt-1kA",
    ("msvd", "test", None): "msvd",
    ("didemo", "test", None): "didemo",
    ("lsmdc", "test", None): "lsmdc",
    ("activitynet", "val_1", None): "activitynet",
    ("vatex", "test", None): "vatex",
}
POST_NAMES = {"none": "", "qbnorm": "QB-Norm", "dsl": "DSL"}


def read_reported(path: str | Path | None = None) -> pd.DataFrame:
    """reported.csv as a table (the packaged copy unless a path is given)."""
    return _packaged().copy() if path is None else pd.read_csv(path)


@cache
def _packaged() -> pd.DataFrame:
    return pd.read_csv(StringIO(resources.files("harness.report").joinpath("reported.csv").read_text()))


def dataset_name(benchmark: str, split: str, train_split: str | None) -> str | None:
    return DATASETS.get((benchmark, split, train_split)) or DATASETS.get((benchmark, split, None))


def backbone_name(arch: str) -> str:
    """open_clip's ViT-B-32 -> the papers' ViT-B/32."""
    head, _, size = arch.rpartition("-")
    return f"{head}/{size}" if head.startswith("ViT") else arch


def counterpart(reported: pd.DataFrame, reported_as: str | None, row: dict, arch: str,
                train_split: str | None) -> dict | None:
    """The published row matching a harness row, or None."""
    dataset = dataset_name(row["benchmark"], row["split"], train_split)
    if reported_as is None or dataset is None:
        return None
    match = reported[(reported["method"] == reported_as) & (reported["dataset"] == dataset)
                     & (reported["backbone"] == backbone_name(arch)) & (reported["direction"] == row["direction"])
                     & (reported["post"] == row.get("post", "none"))]
    return match.iloc[0].to_dict() if len(match) else None


def head_flops() -> dict[str, float]:
    """{reported method name: GLSCL Table I's head FLOPs in G} (MSR-VTT 1k-A rows)."""
    table = read_reported()
    rows = table[table["head_flops_g"].notna() & (table["dataset"] == "msrvtt-1kA")]
    return dict(zip(rows["method"], rows["head_flops_g"].astype(float)))
