"""Retrieved videos in the HTML report: for each example of a per-query comparison (harness/report/leaderboard.py
`per_query_view`), the ground-truth clip and each method's top 5 as small strips of frames, embedded in the
one HTML file as JPEG data URIs.

Nothing is decoded or recomputed: the top lists come from the ranks files, the frames from the frame cache
the run's suite names (results.json `suite`: cache_dir, the benchmark; `protocol`: frames, sampling,
image_size). Where the cache, the benchmark's data or a video's entry is missing, the report says so in
place of the images. The whole report stays within REPORT_BUDGET bytes: where tables, plots and images would
pass it, the images shown last are left out, each saying so.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from harness import registry
from harness.data.benchmark import Video
from harness.data.frames import FrameStore
from harness.errors import HarnessError
from harness.report.leaderboard import Answer, Example, Leaderboard, Run

FRAMES_PER_STRIP = 3  # evenly spaced over the video's decoded frames, first to last
FRAME_PX = 64  # each frame's side in a strip; the image is shown at its own size
STRIP_WIDTH, STRIP_HEIGHT = FRAMES_PER_STRIP * FRAME_PX, FRAME_PX
JPEG_QUALITY = 80
REPORT_BUDGET = 2_000_000  # bytes: the whole HTML report, images included


class FrameSource:
    """The cached frames of the videos of one run's split, or why there are none (`problem`)."""

    def __init__(self, videos: dict[str, Video], store: FrameStore | None, problem: str | None = None):
        self.videos, self.store, self.problem = videos, store, problem

    @classmethod
    def of_run(cls, run: Run, split: str) -> FrameSource:
        try:
            return cls._open(run, split)
        except (HarnessError, OSError, KeyError, TypeError, ValueError) as error:
            return cls({}, None, f"the videos of {run.folder} cannot be found ({error})")

    @classmethod
    def _open(cls, run: Run, split: str) -> FrameSource:
        suite, protocol = run.results.get("suite", {}), run.results.get("protocol", {})
        benchmark = suite.get("benchmark", {})
        if not suite.get("cache_dir") or not all(protocol.get(k) for k in ("frames", "sampling", "image_size")):
            return cls({}, None, f"{run.folder / 'results.json'} names no frame cache (suite.cache_dir and "
                                 "protocol frames, sampling, image_size)")
        cache_dir = Path(suite["cache_dir"]).expanduser()
        # FrameStore's layout (harness/data/frames.py), checked first: making a store creates its folder
        folder = cache_dir / "frames" / f"T{protocol['frames']}-{protocol['sampling']}-{protocol['image_size']}px"
        if not folder.is_dir():
            return cls({}, None, f"the frame cache {folder} is not on this machine")
        kind = registry.benchmarks()[benchmark["name"]]
        seed = run.results.get("seed", suite.get("seed", 42))
        absent = kind.not_yet_generated(benchmark.get("root"), cache_dir, seed)
        if absent is not None:
            return cls({}, None, f"the {benchmark['name']} data is not on this machine (it is {absent})")
        data = kind(benchmark.get("root"), benchmark.get("videos"), cache_dir, seed, quiet=True)
        videos = {video.id: video for video in data.load_split(split).videos}
        store = FrameStore(cache_dir, int(protocol["frames"]), protocol["sampling"], int(protocol["image_size"]),
                           quiet=True)
        return cls(videos, store)

    def frames(self, video_id: str) -> np.ndarray | str:
        """The video's decoded frames, uint8 (n, S, S, 3) without padding, or why they cannot be shown."""
        if self.store is None:
            return self.problem or "no frame cache"
        video = self.videos.get(video_id)
        if video is None:
            return f"{video_id} is not a video of the split"
        if not video.path.is_file():
            return f"its file {video.path} is missing"
        if not self.store.has(video):
            return "not in the frame cache"
        try:
            frames, mask = self.store.load(video)
        except HarnessError as error:  # an entry found corrupt, whose video cannot be decoded again
            return str(error)
        return frames[mask].numpy()


def strip_image(frames: np.ndarray) -> Image.Image:
    """FRAMES_PER_STRIP frames evenly spaced from first to last, each FRAME_PX square, side by side."""
    picks = np.linspace(0, len(frames) - 1, FRAMES_PER_STRIP).round().astype(int)
    strip = Image.new("RGB", (STRIP_WIDTH, STRIP_HEIGHT))
    for slot, index in enumerate(picks):
        frame = Image.fromarray(frames[index]).resize((FRAME_PX, FRAME_PX), Image.Resampling.BILINEAR)
        strip.paste(frame, (slot * FRAME_PX, 0))
    return strip


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: colours stay within their frame
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Strip:
    """One clip as shown: its image, or why there is none."""

    video: str
    uri: str | None = None
    note: str = ""
    width: int = STRIP_WIDTH
    height: int = STRIP_HEIGHT


@dataclass
class Strips:
    """Strips of one frame source; a video's image is encoded once and embedded each time it is shown."""

    source: FrameSource
    encoded: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # id -> (data URI or None, why not)

    def _encode(self, video_id: str) -> tuple[str | None, str]:
        frames = self.source.frames(video_id)
        return (None, frames) if isinstance(frames, str) else (data_uri(strip_image(frames)), "")

    def strip(self, video_id: str) -> Strip:
        if video_id not in self.encoded:
            self.encoded[video_id] = self._encode(video_id)
        uri, why = self.encoded[video_id]
        return Strip(video_id, uri, why)


@dataclass
class Shown:
    """One of a method's top videos for a query."""

    position: int
    score: float
    strip: Strip
    truth: bool  # the query's ground truth


@dataclass
class AnswerView:
    label: str
    rank: int
    shown: list[Shown]


@dataclass
class ExampleView:
    query: str
    why: str
    truth: Strip
    answers: list[AnswerView]

    def strips(self) -> list[Strip]:
        return [self.truth, *(shown.strip for answer in self.answers for shown in answer.shown)]


@dataclass
class RetrievedView:
    """The retrieved-videos part of one board's comparison; `note`: what is not shown and why, if anything."""

    examples: list[ExampleView]
    note: str | None


def answer_view(answer: Answer, truth: str, strips: Strips) -> AnswerView:
    return AnswerView(answer.label, answer.rank, [Shown(position, score, strips.strip(video), video == truth)
                                                  for position, (video, score) in enumerate(answer.top, 1)])


def example_view(example: Example, strips: Strips) -> ExampleView:
    truth = strips.strip(example.truth)
    return ExampleView(example.query, example.why, truth,
                       [answer_view(answer, example.truth, strips) for answer in example.answers])


def retrieved_views(boards: list[Leaderboard]) -> dict[str, RetrievedView]:
    """Board key -> the retrieved videos of its comparison's examples, for the boards that have examples."""
    sources: dict[tuple[Path, str], Strips] = {}
    views = {}
    for board in boards:
        comparison = board.comparison
        if not comparison or not comparison["examples"] or comparison["run"] is None:
            continue
        key = (comparison["run"].folder, board.split)
        if key not in sources:
            sources[key] = Strips(FrameSource.of_run(comparison["run"], board.split))
        strips = sources[key]
        notes = [f"Frames not shown: {strips.source.problem}." if strips.source.problem else "",
                 "" if comparison["has_top"] else "Top videos not shown: the ranks files hold no top lists (they "
                                                  "were written before the harness recorded them)."]
        views[board.key] = RetrievedView([example_view(e, strips) for e in comparison["examples"]],
                                         " ".join(filter(None, notes)) or None)
    return views


def drop_images(views: dict[str, RetrievedView], excess: int) -> bool:
    """Leave out the images shown last until `excess` bytes are freed; False when none was left to drop."""
    shown = [strip for view in views.values() for example in view.examples for strip in example.strips()
             if strip.uri is not None]
    freed = 0
    for strip in reversed(shown):
        if freed >= excess:
            break
        freed += len(strip.uri)
        strip.uri, strip.note = None, f"left out to keep the report under {REPORT_BUDGET / 1e6:g} MB"
    return bool(shown)
