"""The cache folder by kind: what `harness cache info` counts and `harness cache clear` removes.

Kinds, and what writes them:
- frames: decoded frames, one .npz per video and protocol, under frames/ (harness/data/frames.py);
- features: encoded videos and queries, under features/ (harness/retrieval/feature_cache.py);
- backbones: the synthetic suite's pre-trained small CLIP, under backbones/ (harness/data/synthetic_backbone.py);
- timings: each suite's method seconds of its last run, one .json per suite under timings/, which orders the next
  run's methods longest first (harness/pipeline/jobs.py; rewritten by every run in worker processes);
- synthetic: generated synthetic benchmarks, one synthetic-v*-seed*/ folder each (harness/data/synthetic.py);
- other: anything else at the top of the cache folder.
An entry of frames, features, backbones or timings is one file (at any depth under its folder); an entry of
synthetic or other is one item at the top of the cache folder. An entry's age is its newest modification
time (cache entries but timings are written once and never modified).

Clearing removes entries found by walking the cache folder only: symbolic links are removed as links and
never followed, so nothing outside the folder is touched. `other` is removed only when named
(`--kind other`): a mistaken cache folder must not lose what the harness did not write.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

STORES = ("frames", "features", "backbones", "timings")  # folders whose files are the entries
KINDS = (*STORES, "synthetic", "other")
CLEARED_BY_DEFAULT = KINDS[:-1]
SYNTHETIC = re.compile(r"synthetic-v\d+-seed\d+(\.partial-\d+)?")  # .partial-PID: a generation in progress or killed
DAY = 86400.0
CACHE_TAG = "CACHEDIR.TAG"
CACHE_TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"  # fixed by the convention


@dataclass
class Entry:
    kind: str
    path: Path
    size: int  # bytes (apparent size)
    modified: float  # newest modification time of the entry and anything in it (seconds since the epoch)


def default_cache_dir() -> Path:
    """The suites' default cache folder: $HARNESS_CACHE, else ~/.cache/tvr-harness."""
    from harness.suite import Suite, interpolate  # here: the command line's parser imports this module, not torch

    return Path(interpolate(Suite.cache_dir, "the default cache_dir")).expanduser()


def _walk(folder: Path) -> Iterator[os.DirEntry]:
    """Every item under `folder` except folders, depth first, without following symbolic links."""
    with os.scandir(folder) as items:
        for item in items:
            if item.is_dir(follow_symlinks=False):
                yield from _walk(Path(item.path))
            else:
                yield item


def _tree(path: Path) -> tuple[int, float]:
    """Total size and newest modification time of `path` and everything under it (links not followed)."""
    top = path.lstat()
    if not stat.S_ISDIR(top.st_mode):
        return top.st_size, top.st_mtime
    inner = [item.stat(follow_symlinks=False) for item in _walk(path)]
    return sum(s.st_size for s in inner), max([top.st_mtime] + [s.st_mtime for s in inner])


def entries(cache_dir: Path) -> list[Entry]:
    """Every entry of the cache folder, by kind (see the module's docstring); none when it does not exist."""
    if not cache_dir.exists():
        return []
    if not cache_dir.is_dir():
        raise HarnessError(f"cache folder {cache_dir} is not a folder.")
    found = []
    for top in sorted(cache_dir.iterdir()):
        if top.name == CACHE_TAG:
            continue
        if top.name in STORES and top.is_dir() and not top.is_symlink():
            for item in _walk(top):
                status = item.stat(follow_symlinks=False)
                found.append(Entry(top.name, Path(item.path), status.st_size, status.st_mtime))
        else:
            found.append(Entry("synthetic" if SYNTHETIC.fullmatch(top.name) else "other", top, *_tree(top)))
    if found and not (cache_dir / CACHE_TAG).is_file() and all(e.kind == "other" for e in found):
        raise HarnessError(f"{cache_dir} is not a harness cache folder: it holds none of frames/, features/, "
                           f"backbones/, a generated synthetic benchmark or {CACHE_TAG}, only what the harness did not "
                           "write. Give the cache folder with --cache-dir (a suite's cache_dir, or $HARNESS_CACHE).")
    return found


def mark_cache(cache_dir: Path) -> None:
    """Tag `cache_dir` as a cache folder (the Cache Directory Tagging convention, which backup tools honour too):
    it stays recognisable as the harness's once every entry is cleared."""
    tag = Path(cache_dir) / CACHE_TAG
    if not tag.is_file():
        tag.parent.mkdir(parents=True, exist_ok=True)
        tag.write_text(f"{CACHE_TAG_SIGNATURE}\n# A cache folder of tvr-harness (harness cache info / clear).\n")


def human_size(size: float) -> str:
    units, power = ("B", "kB", "MB", "GB", "TB"), 0
    while size >= 1000 and power < len(units) - 1:
        size, power = size / 1000, power + 1
    return f"{size:.0f} B" if power == 0 else f"{size:.1f} {units[power]}"


def how_many(found: list[Entry]) -> str:
    return f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}"


def info_table(cache_dir: Path, found: list[Entry]) -> str:
    """Entries and size per kind (the harness's kinds always, other when present) and in total."""
    kinds = [k for k in KINDS if k != "other" or any(e.kind == "other" for e in found)]
    lines = [f"cache folder: {cache_dir}{'' if cache_dir.exists() else ' (does not exist)'}",
             f"{'kind':<10} {'entries':>8} {'size':>10}"]
    for kind in kinds:
        mine = [e for e in found if e.kind == kind]
        lines.append(f"{kind:<10} {len(mine):>8} {human_size(sum(e.size for e in mine)):>10}")
    lines.append(f"{'total':<10} {len(found):>8} {human_size(sum(e.size for e in found)):>10}")
    return "\n".join(lines)


def select(found: list[Entry], kind: str | None, older_than_days: float | None) -> list[Entry]:
    """The entries of `kind` (default: every kind but other) last modified more than `older_than_days` ago
    (default: any age)."""
    if older_than_days is not None and older_than_days < 0:
        raise HarnessError(f"--older-than {older_than_days:g}: give a number of days, 0 or more.")
    kinds = (kind,) if kind is not None else CLEARED_BY_DEFAULT
    cutoff = time.time() - (older_than_days or 0.0) * DAY
    return [e for e in found if e.kind in kinds and (older_than_days is None or e.modified < cutoff)]


def _prune_empty_folders(folder: Path) -> None:
    """Remove the folders under `folder` (and itself) left empty; they are made again on use."""
    for parent, _, _ in os.walk(folder, topdown=False):  # bottom-up: a folder after its subfolders
        try:
            os.rmdir(parent)
        except OSError:  # not empty
            pass


def remove(cache_dir: Path, chosen: list[Entry]) -> tuple[list[Entry], list[str]]:
    """Remove the chosen entries: (those removed, a line per entry that could not be)."""
    removed, failed = [], []
    for entry in chosen:
        try:
            if entry.path.is_dir() and not entry.path.is_symlink():
                shutil.rmtree(entry.path)
            else:
                entry.path.unlink(missing_ok=True)
            removed.append(entry)
        except OSError as error:
            failed.append(f"{entry.path}: {error.strerror or error}")
    for store in {e.kind for e in removed} & set(STORES):
        _prune_empty_folders(cache_dir / store)
    return removed, failed


def removal_report(cache_dir: Path, removed: list[Entry]) -> str:
    """One line per kind removed (with the top-level names of synthetic and other entries) and the total."""
    lines = []
    for kind in KINDS:
        mine = [e for e in removed if e.kind == kind]
        if mine:
            names = f" ({', '.join(e.path.name for e in mine)})" if kind not in STORES else ""
            lines.append(f"removed {kind}: {how_many(mine)}, {human_size(sum(e.size for e in mine))}{names}")
    total = human_size(sum(e.size for e in removed))
    lines.append(f"removed {how_many(removed)}, {total} from {cache_dir}" if removed else
                 f"nothing removed from {cache_dir}")
    return "\n".join(lines)
