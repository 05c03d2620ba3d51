"""`harness cache info` and `harness cache clear`: entries and sizes per kind; clearing by kind and by age,
never outside the cache folder, never what the harness did not write unless named."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.storage.cachedir import CACHE_TAG, human_size
from harness.commands.cli import main

OLD = time.time() - 20 * 86400  # 20 days ago


@pytest.fixture
def cache(tmp_path) -> Path:
    """A cache folder with every kind, an item the harness did not write, and links to a folder outside."""
    root = tmp_path / "cache"
    files = {
        "frames/T12-fps1-linspace-224px/video0-0123.npz": 300, "frames/T12-fps1-linspace-224px/video1-4567.npz": 500,
        "frames/T8-uniform-224px/video0-89ab.npz": 70,
        "features/clip4clip-meanp-videos-aa.npz": 40, "features/clip4clip-meanp-queries-bb.npz": 20,
        "backbones/synthetic-small-v1-seed42.pt": 900, "timings/synthetic.json": 30,
        "synthetic-v2-seed42/videos/video0.mp4": 1000, "synthetic-v2-seed42/MSRVTT_data.json": 60,
        "synthetic-v2-seed42/COMPLETE": 3, "synthetic-v2-seed7.partial-4242/videos/video0.mp4": 400,
        "notes.txt": 11,
    }
    for name, size in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * size)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.npz").write_bytes(b"y" * 5000)
    (root / "frames" / "T12-fps1-linspace-224px" / "linked.npz").symlink_to(outside / "keep.npz")
    (root / "frames" / "T12-fps1-linspace-224px" / "linked-folder").symlink_to(outside, target_is_directory=True)
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    return root


def on_disk(folder: Path) -> set[str]:
    """Every file, link and folder under `folder` (links not followed), relative to it; the cache tag, which
    marks the folder and is no entry, left out."""
    found = set()
    for parent, folders, files in os.walk(folder):
        found |= {str((Path(parent) / name).relative_to(folder)) for name in folders + files}
    return found - {CACHE_TAG}


def table(printed: str) -> dict[str, tuple[int, str]]:
    rows = {}
    for line in printed.splitlines()[2:]:
        kind, count, *size = line.split()
        rows[kind] = (int(count), " ".join(size))
    return rows


def set_age(path: Path, when: float) -> None:
    """Last written at `when`: the file, or the folder and everything in it."""
    items = [path] + [Path(parent) / name for parent, folders, files in os.walk(path) for name in folders + files]
    for item in items:
        os.utime(item, (when, when), follow_symlinks=False)


def test_info_counts_entries_and_sizes_per_kind_and_in_total(cache, capsys, monkeypatch):
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    rows = table(capsys.readouterr().out)
    links = sum((cache / "frames" / "T12-fps1-linspace-224px" / name).lstat().st_size  # the links, not their targets
                for name in ("linked.npz", "linked-folder"))
    elsewhere = (cache / "elsewhere").lstat().st_size
    assert rows == {"frames": (5, human_size(870 + links)), "features": (2, "60 B"), "backbones": (1, "900 B"),
                    "timings": (1, "30 B"), "synthetic": (2, human_size(1463)), "other": (2, human_size(11 + elsewhere)),
                    "total": (13, human_size(870 + links + 60 + 900 + 30 + 1463 + 11 + elsewhere))}
    monkeypatch.setenv("HARNESS_CACHE", str(cache))  # the suites' default folder
    assert main(["cache", "info"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == f"cache folder: {cache}" and table(printed) == rows


def test_clear_by_kind_removes_only_that_kind(cache, capsys):
    before = on_disk(cache)
    assert main(["cache", "clear", "--cache-dir", str(cache), "--kind", "features"]) == 0
    assert "removed features: 2 entries, 60 B" in capsys.readouterr().out
    assert on_disk(cache) == {p for p in before if not p.startswith("features")}
    assert main(["cache", "clear", "--cache-dir", str(cache), "--kind", "synthetic"]) == 0
    assert "synthetic-v2-seed42, synthetic-v2-seed7.partial-4242" in capsys.readouterr().out
    assert on_disk(cache) == {p for p in before if not p.startswith(("features", "synthetic"))}


def test_clear_older_than_removes_entries_last_written_before_then(cache, capsys):
    for old in ("frames/T12-fps1-linspace-224px/video1-4567.npz", "frames/T8-uniform-224px/video0-89ab.npz",
                "backbones", "synthetic-v2-seed42", "notes.txt"):
        set_age(cache / old, OLD)
    (cache / "synthetic-v2-seed42" / "COMPLETE").touch()  # one fresh file: the folder counts as fresh
    before = on_disk(cache)
    assert main(["cache", "clear", "--cache-dir", str(cache), "--older-than", "10"]) == 0
    printed = capsys.readouterr().out
    assert "removed frames: 2 entries, 570 B" in printed and "removed backbones: 1 entry, 900 B" in printed
    gone = {"frames/T12-fps1-linspace-224px/video1-4567.npz", "frames/T8-uniform-224px/video0-89ab.npz",
            "frames/T8-uniform-224px", "backbones/synthetic-small-v1-seed42.pt", "backbones"}  # emptied folders too
    assert on_disk(cache) == before - gone  # notes.txt (other) is old but kept: not named
    assert main(["cache", "clear", "--cache-dir", str(cache), "--older-than", "10", "--kind", "other"]) == 0
    assert "removed other: 1 entry, 11 B (notes.txt)" in capsys.readouterr().out
    assert on_disk(cache) == before - gone - {"notes.txt"}
    assert main(["cache", "clear", "--cache-dir", str(cache), "--older-than", "-1"]) == 2
    assert "--older-than -1" in capsys.readouterr().err


def test_clearing_everything_needs_all_and_never_touches_anything_outside(cache, tmp_path, capsys):
    before, outside = on_disk(cache), on_disk(tmp_path / "outside")
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 2
    assert "--all" in capsys.readouterr().err and on_disk(cache) == before
    assert main(["cache", "clear", "--cache-dir", str(cache), "--all"]) == 0
    assert "removed 11 entries" in capsys.readouterr().out  # every kind but other (2 of the 13)
    assert on_disk(cache) == {"notes.txt", "elsewhere"}
    assert main(["cache", "clear", "--cache-dir", str(cache), "--kind", "other"]) == 0
    assert on_disk(cache) == set()
    assert on_disk(tmp_path / "outside") == outside and (tmp_path / "outside" / "keep.npz").stat().st_size == 5000


def test_a_folder_that_is_not_a_cache_is_refused_and_left_as_it_was(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "a.jpg").write_bytes(b"x" * 10)
    (home / "notes.txt").write_text("mine")
    before = on_disk(home)
    for command in (["cache", "info"], ["cache", "clear", "--all"], ["cache", "clear", "--kind", "other"]):
        assert main([*command, "--cache-dir", str(home)]) == 2
        error = capsys.readouterr().err
        assert f"{home} is not a harness cache folder" in error and "--cache-dir" in error
    assert on_disk(home) == before and not (home / CACHE_TAG).exists()


def test_an_emptied_cache_is_still_recognised_by_its_tag(cache, capsys):
    assert main(["cache", "clear", "--cache-dir", str(cache), "--all"]) == 0
    assert (cache / CACHE_TAG).read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    capsys.readouterr()
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0  # only what the harness did not write is left
    assert table(capsys.readouterr().out)["other"][0] == 2
