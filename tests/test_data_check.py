"""`harness data check` and the gallery-coverage rule of `harness run`: a missing and a corrupt video are
reported by id; the run refuses, or evaluates a partial gallery with the coverage in every row."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.commands.cli import main
from harness.data.synthetic import write_mp4
from harness.errors import HarnessError
from harness.pipeline.preflight import PreflightError
from harness.pipeline.run import run_suite
from harness.suite import load_suite

IDS = ["vid_a", "vid_b", "vid_c", "vid_d"]
MISSING, TRUNCATED = "vid_b", "vid_d"


@pytest.fixture
def vatex_root(tmp_path) -> Path:
    """VATEX files for four test videos: one never written, one truncated to half its bytes."""
    root = tmp_path / "vatex"
    (root / "videos").mkdir(parents=True)
    (root / "test_list.txt").write_text("\n".join(IDS) + "\n")
    (root / "ref_captions.json").write_text(json.dumps({v: [f"a clip called {v}", f"another caption of {v}"]
                                                        for v in IDS}))
    rng = np.random.default_rng(0)
    for vid in IDS:
        if vid != MISSING:
            write_mp4(root / "videos" / f"{vid}.mp4", rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8), fps=5)
    whole = (root / "videos" / f"{TRUNCATED}.mp4").read_bytes()
    (root / "videos" / f"{TRUNCATED}.mp4").write_bytes(whole[: len(whole) // 2])
    return root


def write_suite(tmp_path: Path, root: Path, clip: Path, allow_partial: bool) -> Path:
    suite = {"name": "vatex-check", "cache_dir": str(tmp_path / "cache"),
             "benchmark": {"name": "vatex", "root": str(root), "test_splits": ["test"],
                           "allow_partial_gallery": allow_partial},
             "backbone": {"arch": "auto", "checkpoint": str(clip)},
             "protocol": {"frames": 2}, "methods": [{"name": "zeroshot"}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_data_check_reports_missing_and_corrupt_videos_by_id(tmp_path, vatex_root, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex_root, tiny_clip, allow_partial=False)
    output = tmp_path / "check"
    assert main(["data", "check", str(suite), "--output", str(output), "--quiet", "--workers", "2"]) == 1
    printed = capsys.readouterr().out
    assert "2 video(s) missing or unreadable" in printed and "test" in printed
    report = json.loads((output / "data-check.json").read_text())
    (split,) = report["splits"]
    assert (split["expected"], split["found"], split["unreadable"], split["queries"]) == (4, 3, 1, 8)
    assert list(split["missing_ids"]) == [MISSING] and list(split["unreadable_ids"]) == [TRUNCATED]
    assert "cannot decode" in split["unreadable_ids"][TRUNCATED]
    digest = hashlib.sha256((vatex_root / "ref_captions.json").read_bytes()).hexdigest()
    assert report["annotations"]["ref_captions.json"] == f"sha256:{digest}"
    with (output / "offending.tsv").open() as handle:
        offending = list(csv.DictReader(handle, delimiter="\t"))
    assert [(r["split"], r["video_id"], r["problem"]) for r in offending] == [
        ("test", MISSING, "missing"), ("test", TRUNCATED, "unreadable")]
    # the readable videos were decoded into the frame cache the run reuses
    assert len(list((tmp_path / "cache" / "frames").rglob("*.npz"))) == 2


def test_run_refuses_a_split_with_missing_or_unreadable_videos(tmp_path, vatex_root, tiny_clip):
    suite = load_suite(write_suite(tmp_path, vatex_root, tiny_clip, allow_partial=False))
    with pytest.raises(PreflightError, match=rf"1 of 4 video files are missing: {MISSING}"):
        run_suite(suite, tmp_path / "run", quiet=True)
    write_mp4(vatex_root / "videos" / f"{MISSING}.mp4", np.zeros((10, 32, 32, 3), dtype=np.uint8), fps=5)
    with pytest.raises(HarnessError, match=rf"1 of 4 videos cannot be decoded: {TRUNCATED}"):
        run_suite(suite, tmp_path / "run", quiet=True)


def test_run_on_a_partial_gallery_records_the_coverage_in_every_row(tmp_path, vatex_root, tiny_clip):
    suite = load_suite(write_suite(tmp_path, vatex_root, tiny_clip, allow_partial=True))
    results = run_suite(suite, tmp_path / "run", quiet=True, log=lambda *_: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["benchmark"]["splits"]["test"]["missing"] == [MISSING]
    assert saved["benchmark"]["splits"]["test"]["unreadable"] == [TRUNCATED]
    assert saved["benchmark"]["annotations"]["ref_captions.json"].startswith("sha256:")
    assert {row["direction"] for row in results["rows"]} == {"t2v", "v2t"}
    for row in results["rows"]:
        assert row["coverage"] == "2/4" and row["gallery"] == 2
        assert row["queries"] == (4 if row["direction"] == "t2v" else 2)  # captions of the 2 readable videos
