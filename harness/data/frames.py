"""Frame store: every video decoded once per protocol, stored as uint8, shared by every method and run.

The cache key holds the protocol (frames, sampling, size) and the file's size and modification time,
so a changed file is decoded again.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from torch import Tensor
from tqdm import tqdm

from harness.data.benchmark import Video
from harness.data.video import decode, pad_frames


class FrameStore:
    def __init__(self, cache_dir: Path, frames: int, policy: str, size: int, quiet: bool = False):
        self.frames, self.policy, self.size, self.quiet = frames, policy, size, quiet
        self.folder = Path(cache_dir) / "frames" / f"T{frames}-{policy}-{size}px"
        self.folder.mkdir(parents=True, exist_ok=True)

    def _file(self, video: Video) -> Path:
        stat = video.path.stat()
        key = hashlib.sha1(f"{video.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        return self.folder / f"{video.id}-{key}.npy"

    def prepare(self, videos: list[Video], label: str = "decoding") -> None:
        """Decode every video not yet cached (in parallel threads, with a progress bar)."""
        todo = {self._file(v): v for v in videos}
        todo = {f: v for f, v in todo.items() if not f.exists()}
        if not todo:
            return

        def work(item: tuple[Path, Video]) -> None:
            file, video = item
            array = decode(video.path, self.frames, self.policy, self.size, video.id)
            temporary = file.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(temporary, array)
            os.replace(temporary, file)

        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            list(tqdm(pool.map(work, todo.items()), total=len(todo), desc=label, disable=self.quiet, leave=False))

    def load(self, video: Video) -> tuple[Tensor, Tensor]:
        """uint8 (T, S, S, 3) padded frames and a (T,) bool mask."""
        file = self._file(video)
        if not file.exists():
            self.prepare([video])
        return pad_frames(np.load(file), self.frames)
