"""Frame store: every video decoded once per protocol, stored as uint8, shared by every method and run.

The cache key holds the protocol (frames, sampling, size, the decoded span) and the file's size and
modification time, so a changed file is decoded again. Entries are .npz archives: the zip format keeps a
CRC-32 of the frames, so a corrupt entry (a bad disk block, a truncated copy) is detected on read, reported,
and decoded again instead of being used.

Videos are decoded in worker processes (pebble), each video under a time limit: a video that makes the
decoder hang or crash is reported as unreadable and its worker replaced, instead of stalling the run.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import zipfile
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
from pebble import ProcessExpired, ProcessPool
from torch import Tensor

from harness.storage.cachedir import mark_cache
from harness.data.benchmark import Video
from harness.data.video import decode, pad_frames
from harness.errors import DataError
from harness.progress import progress
from harness.storage.files import atomic_save

log = logging.getLogger(__name__)
DECODE_TIMEOUT = 120.0  # seconds one video may take; the suite's benchmark.decode_timeout overrides it


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _one_thread() -> None:
    """Worker initialiser: one intra-op thread per decoder process (the processes are the parallelism)."""
    import torch

    torch.set_num_threads(1)


def _decode_to_cache(path: Path, frames: int, policy: str, size: int, video_id: str, end_second: int | None,
                     file: Path) -> None:
    array = decode(path, frames, policy, size, video_id, end_second=end_second)

    def save(temporary: Path) -> None:
        with open(temporary, "wb") as stream:
            np.savez(stream, frames=array)

    atomic_save(file, save, "frame cache entry")


def _context():
    # fork: the workers start at once with everything imported (they touch no GPU); spawn where there is no fork
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class FrameStore:
    def __init__(self, cache_dir: Path, frames: int, policy: str, size: int, quiet: bool = False,
                 workers: int | None = None, timeout: float = DECODE_TIMEOUT):
        self.frames, self.policy, self.size, self.quiet = frames, policy, size, quiet
        self.workers = workers or default_workers()
        self.timeout = timeout
        self.folder = Path(cache_dir) / "frames" / f"T{frames}-{policy}-{size}px"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cache_dir = Path(cache_dir)

    def key(self, video: Video) -> str:
        """What the frames of `video` depend on besides this store's protocol (frames, sampling, size):
        the file's path, size and modification time and the decoded span."""
        try:
            stat = video.path.stat()
        except OSError as error:
            raise DataError(f"video {video.id!r} ({video.path}): {error.strerror or error}") from None
        return f"{video.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{video.end_second}"

    def _file(self, video: Video) -> Path:
        safe_id = re.sub(r"[^A-Za-z0-9._@-]", "_", video.id)[:80]
        return self.folder / f"{safe_id}-{hashlib.sha1(self.key(video).encode()).hexdigest()[:16]}.npz"

    def has(self, video: Video) -> bool:
        """Whether the video is decoded in the cache already (under this protocol, this file version)."""
        return self._file(video).exists()

    def prepare(self, videos: list[Video], label: str = "decoding") -> dict[str, str]:
        """Decode every video not yet cached (in parallel processes, with a progress bar).

        Returns {video id: reason} for the videos that are missing, cannot be decoded, crash the decoder
        or exceed the time limit; the caller decides whether that refuses the split or leaves a partial
        gallery. Failures are not cached."""
        todo, failed = {}, {}
        for video in videos:
            if not video.path.is_file():
                failed[video.id] = f"file not found: {video.path}"
                continue
            file = self._file(video)
            if not file.exists():
                todo[file] = video
        if not todo:
            return failed
        mark_cache(self.cache_dir)
        pool = ProcessPool(max_workers=min(self.workers, len(todo)), initializer=_one_thread, context=_context())
        try:
            futures = {pool.schedule(_decode_to_cache, args=(video.path, self.frames, self.policy, self.size,
                                                             video.id, video.end_second, file),
                                     timeout=self.timeout): video for file, video in todo.items()}
            for future, video in progress(futures.items(), label, self.quiet, total=len(futures)):
                reason = self._outcome(future)
                if reason is not None:
                    failed[video.id] = reason
            pool.close()
        finally:
            pool.stop()  # a no-op after close(); on an error or Ctrl-C, the workers are ended at once
            pool.join()
        return failed

    def _outcome(self, future) -> str | None:
        """None when the video was decoded and cached, else why not. A failure to write the cache is not
        the video's fault: it stops the run (HarnessError)."""
        try:
            future.result()
        except DataError as error:
            return str(error)
        except FutureTimeout:
            return (f"decoding took longer than {self.timeout:g} s and was stopped (the decoder hangs on this file; "
                    "benchmark.decode_timeout sets the limit)")
        except ProcessExpired as error:
            return f"the decoder crashed on this file (worker exit code {error.exitcode})"
        return None

    def _read(self, file: Path) -> np.ndarray | None:
        """The cached frames, or None when absent or corrupt (a corrupt entry is removed)."""
        try:
            with np.load(file) as archive:
                return archive["frames"]
        except FileNotFoundError:
            return None
        except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as error:
            log.warning("frame cache entry %s is corrupt (%s): it is not used, the video is decoded again", file, error)
            file.unlink(missing_ok=True)
            return None

    def load(self, video: Video) -> tuple[Tensor, Tensor]:
        """uint8 (T, S, S, 3) padded frames and a (T,) bool mask."""
        file = self._file(video)
        array = self._read(file)
        if array is None:
            failed = self.prepare([video], f"decoding {video.id}")
            if failed:
                raise DataError(f"video {video.id!r} ({video.path}): {failed[video.id]}")
            array = self._read(file)
            if array is None:
                raise DataError(f"video {video.id!r}: its frame cache entry {file} cannot be read back after "
                                "decoding; check the cache folder's disk.")
        return pad_frames(array, self.frames)
