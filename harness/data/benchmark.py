"""The benchmark abstraction: splits of videos and captions in one of three evaluation shapes.

- square: one query per gallery video, ground truth on the diagonal (MSR-VTT 1k-A, LSMDC);
- multi-caption: many captions per video, every caption a query (MSVD, VATEX);
- paragraph: all sentences of a video joined into one query, then square (DiDeMo, ActivityNet).
A training split uses the same structure: every (video, caption) pair is a sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from harness.errors import DataError

Shape = Literal["square", "multi-caption", "paragraph"]


@dataclass
class Video:
    id: str
    path: Path


@dataclass
class Split:
    name: str
    shape: Shape
    videos: list[Video]
    captions: list[str]
    caption_video: list[int]  # for each caption, the index of its video in `videos`
    expected_videos: int = -1  # before any missing video was dropped (partial gallery)
    missing: list[str] = field(default_factory=list)

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


class Benchmark:
    """One annotation format. Subclasses set name, splits and layout and implement load_split."""

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    layout: ClassVar[str]  # the expected files, for error messages

    def __init__(self, root: str | None, videos: str | None, cache_dir: Path, seed: int = 42, quiet: bool = False):
        if root is None:
            raise DataError(f"{self.name}: no data root given (benchmark.root). Expected layout:\n{self.layout}")
        self.root = Path(root).expanduser()
        self.video_dir = Path(videos).expanduser() if videos else self.root / "videos"
        self.cache_dir = cache_dir
        self.seed = seed
        self.quiet = quiet

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
        return paths


def check_videos(split: Split, allow_partial: bool) -> Split:
    """Refuse a split with missing video files, or drop them and record the coverage when allowed."""
    missing = [i for i, video in enumerate(split.videos) if not video.path.is_file()]
    if not missing:
        return split
    ids = [split.videos[i].id for i in missing]
    if not allow_partial:
        shown = ", ".join(ids[:10]) + (f" (+{len(ids) - 10} more)" if len(ids) > 10 else "")
        raise DataError(
            f"split {split.name}: {len(ids)} of {len(split.videos)} video files are missing: {shown} "
            f"(e.g. {split.videos[missing[0]].path}). Fix the video folder, or set "
            "benchmark.allow_partial_gallery: true to evaluate on the videos present (coverage is recorded)."
        )
    keep = [i for i in range(len(split.videos)) if i not in set(missing)]
    partial = split.subset(split.name, keep)
    partial.expected_videos = split.expected_videos
    partial.missing = ids
    return partial
