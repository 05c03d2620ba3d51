"""Frame store: every video decoded once per protocol, stored as uint8, shared by every method and run.

The cache key holds the protocol (frames, sampling, size, the decoded span) and the file's size and
modification time, so a changed file is decoded again.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from torch import Tensor
from tqdm import tqdm

from harness.data.benchmark import Video
from harness.data.video import decode, pad_frames
from harness.errors import DataError


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class FrameStore:
    def __init__(self, cache_dir: Path, frames: int, policy: str, size: int, quiet: bool = False,
                 workers: int | None = None):
        self.frames, self.policy, self.size, self.quiet = frames, policy, size, quiet
        self.workers = workers or default_workers()
        self.folder = Path(cache_dir) / "frames" / f"T{frames}-{policy}-{size}px"
        self.folder.mkdir(parents=True, exist_ok=True)

    def _file(self, video: Video) -> Path:
        stat = video.path.stat()
        key = f"{video.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{video.end_second}"
        safe_id = re.sub(r"[^A-Za-z0-9._@-]", "_", video.id)[:80]
        return self.folder / f"{safe_id}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npy"

    def _decode_into(self, video: Video, file: Path) -> None:
        array = decode(video.path, self.frames, self.policy, self.size, video.id, end_second=video.end_second)
        temporary = file.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(temporary, array)
        os.replace(temporary, file)

    def prepare(self, videos: list[Video], label: str = "decoding") -> dict[str, str]:
        """Decode every video not yet cached (in parallel threads, with a progress bar).

        Returns {video id: reason} for the videos that are missing or cannot be decoded; the caller
        decides whether that refuses the split or leaves a partial gallery. Failures are not cached."""
        todo, failed = {}, {}
        for video in videos:
            if not video.path.is_file():
                failed[video.id] = f"file not found: {video.path}"
                continue
            file = self._file(video)
            if not file.exists():
                todo[file] = video

        def work(item: tuple[Path, Video]) -> tuple[str, str | None]:
            file, video = item
            try:
                self._decode_into(video, file)
            except DataError as error:
                return video.id, str(error)
            return video.id, None

        if todo:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                for video_id, error in tqdm(pool.map(work, todo.items()), total=len(todo), desc=label,
                                            disable=self.quiet, leave=False):
                    if error is not None:
                        failed[video_id] = error
        return failed

    def load(self, video: Video) -> tuple[Tensor, Tensor]:
        """uint8 (T, S, S, 3) padded frames and a (T,) bool mask."""
        file = self._file(video)
        if not file.exists():
            self._decode_into(video, file)
        return pad_frames(np.load(file), self.frames)
