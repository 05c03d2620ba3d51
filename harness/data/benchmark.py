"""The benchmark abstraction: splits of videos and captions in one of three evaluation shapes.

- square: one query per gallery video, ground truth on the diagonal (MSR-VTT 1k-A, LSMDC);
- multi-caption: many captions per video, every caption a query (MSVD, VATEX);
- paragraph: all sentences of a video joined into one query, then square (DiDeMo, ActivityNet).
A training split uses the same structure: every (video, caption) pair is a sample.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from harness.errors import DataError

Shape = Literal["square", "multi-caption", "paragraph"]


@dataclass
class Video:
    id: str
    path: Path
    # Decode only seconds 0..end_second (inclusive), as the official loader does (DiDeMo: 0-31 s).
    end_second: int | None = None


@dataclass
class Split:
    name: str
    shape: Shape
    videos: list[Video]
    captions: list[str]
    caption_video: list[int]  # for each caption, the index of its video in `videos`
    expected_videos: int = -1  # before any missing or unreadable video was dropped (partial gallery)
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.expected_videos < 0:
            self.expected_videos = len(self.videos)

    @property
    def coverage(self) -> str:
        return f"{len(self.videos)}/{self.expected_videos}"

    def captions_per_video(self) -> np.ndarray:
        return np.bincount(np.asarray(self.caption_video, dtype=np.int64), minlength=len(self.videos))

    def subset(self, name: str, video_indices: list[int], first_caption_only: bool = False) -> Split:
        """The split restricted to some videos (their captions follow), e.g. a validation carve."""
        position = {old: new for new, old in enumerate(video_indices)}
        captions, owners, taken = [], [], set()
        for caption, owner in zip(self.captions, self.caption_video):
            if owner in position and not (first_caption_only and owner in taken):
                captions.append(caption)
                owners.append(position[owner])
                taken.add(owner)
        shape: Shape = "square" if first_caption_only else self.shape
        return Split(name, shape, [self.videos[i] for i in video_indices], captions, owners)


def grouped_split(name: str, shape: Shape, ids: list[str], captions: dict[str, list[str]],
                  video: Callable[[str], Video], source: Path) -> Split:
    """A split from ordered video ids and each id's captions (all of them queries or training pairs).
    Every id must have at least one caption: the error names the ids and the annotation file."""
    without = [vid for vid in ids if not captions.get(vid)]
    if without:
        raise DataError(f"{source}: no captions for {len(without)} video(s) of split {name}: "
                        f"{', '.join(without[:10])}{' ...' if len(without) > 10 else ''}.")
    for vid in ids:
        if not isinstance(captions[vid], list) or not all(isinstance(c, str) for c in captions[vid]):
            raise DataError(f"{source}: the captions of video {vid!r} are {captions[vid]!r:.200}; expected a list of "
                            "strings.")
    texts, owners = [], []
    for index, vid in enumerate(ids):
        texts += captions[vid]
        owners += [index] * len(captions[vid])
    return Split(name, shape, [video(v) for v in ids], texts, owners)


def paragraph_split(name: str, ids: list[str], sentences: dict[str, list[str]], video: Callable[[str], Video],
                    source: Path) -> Split:
    """Paragraph shape: each video's sentences joined with spaces into one query (CLIP4Clip's DiDeMo and
    ActivityNet loaders), ground truth on the diagonal."""
    joined = {vid: [" ".join(sentences[vid])] for vid in ids if sentences.get(vid)}
    return grouped_split(name, "paragraph", ids, joined, video, source)


def read_lines(path: Path) -> list[str]:
    """One id a line (the official *_list.txt files); blank lines ignored."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """A CSV file with a header, read strictly: a quote left open, a row with more or fewer fields than
    the header, or an undecodable byte is an error naming the file and the line where the row starts."""
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, strict=True)
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file; expected a header with {', '.join(columns)}.")
            absent = [c for c in columns if c not in header]
            if absent:
                raise DataError(f"{path}: missing column(s) {', '.join(absent)}; found {header}.")
            start = reader.line_num + 1
            for fields in reader:
                if len(fields) != len(header):
                    raise DataError(f"{path}:{start}: {len(fields)} field(s); the header has {len(header)} "
                                    f"({','.join(header)}).")
                rows.append(dict(zip(header, fields)))
                start = reader.line_num + 1
        except csv.Error as error:
            raise DataError(f"{path}:{start}: malformed CSV ({error}); expected {len(header)} fields "
                            f"({','.join(header)}), a quoted field closed on its line.") from None
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error}).") from None
    return rows


def read_json(path: Path, kind: type, what: str) -> Any:
    """A JSON file whose top level must be `kind` (dict or list); `what` describes the expected content."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}); expected {what}.") from None
    if not isinstance(data, kind):
        raise DataError(f"{path}: the top level is a {type(data).__name__}; expected {what}.")
    return data


def first_existing(folder: Path, names: list[str]) -> Path:
    """The first of `names` present under `folder`, else the first (the path a missing-video error shows)."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return folder / names[0]


def fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


class Benchmark:
    """One annotation format. Subclasses set name, splits and layout and implement load_split."""

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    layout: ClassVar[str]  # the expected files, for error messages
    # Protocol values a suite takes unless it sets them itself (docs/protocol.md section 2), e.g. 64 frames.
    protocol_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, root: str | None, videos: str | None, cache_dir: Path, seed: int = 42, quiet: bool = False):
        if root is None:
            raise DataError(f"{self.name}: no data root given (benchmark.root). Expected layout:\n{self.layout}")
        self.root = Path(root).expanduser()
        self.video_dir = Path(videos).expanduser() if videos else self.root / "videos"
        self.cache_dir = cache_dir
        self.seed = seed
        self.quiet = quiet
        self.annotation_files: dict[str, Path] = {}  # every file read, for the fingerprints

    @classmethod
    def not_yet_generated(cls, root: str | None, cache_dir: Path, seed: int) -> str | None:
        """For a benchmark the harness generates itself: what constructing it would generate, while that is
        still to be done (a dry run must not start it). None for data read from disk."""
        return None

    def load_split(self, split: str) -> Split:
        raise NotImplementedError

    def require(self, *names: str) -> list[Path]:
        """Paths of annotation files under root; all missing ones named in one error."""
        paths = [self.root / name for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataError(
                f"{self.name}: annotation file(s) not found: {', '.join(missing)}.\n"
                f"Expected layout under the data root ({self.root}):\n{self.layout}"
            )
        self.annotation_files.update(zip(names, paths))
        return paths

    def fingerprints(self) -> dict[str, str]:
        """Content hash of every annotation file read so far: which exact files a result came from."""
        return {name: fingerprint(path) for name, path in sorted(self.annotation_files.items())}


def drop_videos(split: Split, problems: dict[str, str], kind: Literal["missing", "unreadable"],
                allow_partial: bool) -> Split:
    """Refuse a split with missing or unreadable videos (problems: id -> path or reason), or, when the
    suite allows a partial gallery, drop them and record the coverage."""
    if not problems:
        return split
    ids = [v.id for v in split.videos if v.id in problems]
    if not allow_partial:
        shown = ", ".join(ids[:10]) + (f" (+{len(ids) - 10} more)" if len(ids) > 10 else "")
        what = "video files are missing" if kind == "missing" else "videos cannot be decoded"
        raise DataError(
            f"split {split.name}: {len(ids)} of {len(split.videos)} {what}: {shown} "
            f"(e.g. {ids[0]}: {problems[ids[0]]}). Fix the video folder (`harness data check` lists them all), "
            "or set benchmark.allow_partial_gallery: true to evaluate on the videos present (coverage is recorded)."
        )
    keep = [i for i, v in enumerate(split.videos) if v.id not in problems]
    partial = split.subset(split.name, keep)
    partial.expected_videos, partial.missing, partial.unreadable = split.expected_videos, split.missing, split.unreadable
    getattr(partial, kind).extend(ids)
    return partial


def video_keys(split: Split) -> dict[str, str]:
    """Per video id, what its frames depend on in the file (as the frame cache keys them): the file's size and
    modification time, and the decoded span; not its folder, so a data set moved elsewhere with its times kept
    stays the same. A file replaced by another of equal size and time (`cp -p`) is not told apart."""
    keys = {}
    for video in split.videos:
        try:
            stat = video.path.stat()
        except OSError as error:
            raise DataError(f"video {video.id!r} ({video.path}): {error.strerror or error}") from None
        keys[video.id] = f"size {stat.st_size}, modified {stat.st_mtime_ns} ns, span {video.end_second}"
    return keys


def missing_videos(split: Split) -> dict[str, str]:
    return {v.id: str(v.path) for v in split.videos if not v.path.is_file()}


def check_videos(split: Split, allow_partial: bool) -> Split:
    """Refuse a split with missing video files, or drop them and record the coverage when allowed."""
    return drop_videos(split, missing_videos(split), "missing", allow_partial)
