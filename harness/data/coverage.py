"""`harness data check`: read a suite's annotations, find and decode every referenced video, and report
coverage per split (expected, found, unreadable) with the offending ids and the annotation fingerprints.

Decoding goes through the frame store under the suite's protocol, so a clean check also fills the
frame cache that `harness run` then reuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness import registry
from harness.data.frames import FrameStore
from harness.errors import DataError
from harness.storage.files import atomic_write
from harness.suite import Suite
from harness.data.synthetic_backbone import IMAGE_SIZE, SYNTHETIC_ARCH


def frame_size(suite: Suite) -> int:
    """The decoded frame size: the protocol's, else the backbone architecture's input size."""
    if suite.protocol.image_size:
        return suite.protocol.image_size
    if suite.backbone.arch == SYNTHETIC_ARCH:
        return IMAGE_SIZE
    if suite.backbone.arch == "auto" and suite.backbone.checkpoint:  # the sizes are in the weights
        from harness.api.backbone import read_state_dict, shape_from_state_dict

        return shape_from_state_dict(read_state_dict(suite.backbone.checkpoint)).image_size
    import open_clip

    config = open_clip.get_model_config(suite.backbone.arch)
    if config is None:
        raise DataError(f"{suite.source}: backbone.arch: unknown open_clip architecture {suite.backbone.arch!r}; "
                        "set protocol.image_size to check the data without it.")
    size = config["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def check_data(suite: Suite, workers: int | None = None, quiet: bool = False) -> dict:
    """Every split the suite names (training, validation and test): ids, captions, video files, decodes."""
    cache_dir = Path(suite.cache_dir).expanduser()
    cls = registry.benchmarks()[suite.benchmark.name]
    protocol = suite.protocol
    store = FrameStore(cache_dir, protocol.frames, protocol.sampling, frame_size(suite), quiet, workers,
                       suite.benchmark.decode_timeout)
    named = [("train", suite.benchmark.train_split), ("validation", suite.benchmark.validation_split)] + [
        ("test", s) for s in suite.benchmark.test_splits]
    try:
        benchmark = cls(suite.benchmark.root, suite.benchmark.videos, cache_dir, suite.seed, quiet)
        splits = []
        for role, name in named:
            if name is None:
                continue
            split = benchmark.load_split(name)
            failed = store.prepare(split.videos, f"checking {name} videos")
            missing = {v.id: str(v.path) for v in split.videos if v.id in failed and not v.path.is_file()}
            unreadable = {i: reason for i, reason in failed.items() if i not in missing}
            splits.append({"split": name, "role": role, "shape": split.shape, "expected": len(split.videos),
                           "found": len(split.videos) - len(missing), "unreadable": len(unreadable),
                           "queries": len(split.captions), "missing_ids": missing, "unreadable_ids": unreadable})
    except DataError as error:
        raise DataError(f"{suite.source}: benchmark ({suite.benchmark.name}): {error}") from None
    return {
        "suite": suite.source, "benchmark": suite.benchmark.name, "root": str(benchmark.root),
        "videos": str(benchmark.video_dir), "annotations": benchmark.fingerprints(),
        "protocol": {"frames": protocol.frames, "sampling": protocol.sampling, "image_size": store.size},
        "splits": splits,
    }


def problems(report: dict) -> int:
    return sum(len(s["missing_ids"]) + len(s["unreadable_ids"]) for s in report["splits"])


def coverage_table(report: dict) -> str:
    table = pd.DataFrame(report["splits"], columns=["split", "role", "shape", "expected", "found", "unreadable",
                                                    "queries"])
    table["usable"] = table["found"] - table["unreadable"]
    return table.to_string(index=False)


def write_report(report: dict, folder: Path) -> tuple[Path, Path]:
    """data-check.json (everything) and offending.tsv (split, id, problem, detail: one line a video)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary, offending = folder / "data-check.json", folder / "offending.tsv"
    atomic_write(summary, json.dumps(report, indent=2) + "\n")
    lines = ["split\tvideo_id\tproblem\tdetail"]
    for split in report["splits"]:
        for problem in ("missing", "unreadable"):
            for video_id, detail in split[f"{problem}_ids"].items():
                lines.append(f"{split['split']}\t{video_id}\t{problem}\t{' '.join(detail.split())}")
    atomic_write(offending, "\n".join(lines) + "\n")
    return summary, offending
