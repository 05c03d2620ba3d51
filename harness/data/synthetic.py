"""The built-in synthetic benchmark: generated once from a seed, in the MSR-VTT file formats.

Real H.264 MP4 files (PyAV) and MSR-VTT annotation files are written into a cache folder on first use,
then read through the same MSR-VTT loader as the real data. Splits: train-9k (the training videos,
several captions each), test-1kA (one caption per test video, square), test-1kA-multi (every
caption of the test videos, the MSVD/VATEX shape) and test-paragraph (every caption of a test video
joined into one query, the DiDeMo/ActivityNet shape).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np

from harness.data.benchmark import Split, paragraph_split
from harness.data.benchmarks.msrvtt import DATA_JSON, TEST_CSV, TRAIN_CSV, MSRVTT
from harness.data.frames import FrameStore
from harness.processes import process as child_process
from harness.progress import progress
from harness.data.synthetic_world import FPS, TEST_KINDS, TRAIN_KINDS, caption, random_clip, render, reordered

GENERATOR_VERSION = 2  # bump when the world or the files change: a new cache folder is used
TRAIN_VIDEOS = 720
TEST_VIDEOS = 250
TWIN_FRACTION = 0.4  # test videos that are another test video's events in another order
TRAIN_CAPTIONS = 5
TEST_CAPTIONS = 5  # for test-1kA-multi; the first one is the test-1kA query


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """uint8 (t, H, W, 3) -> lossless H.264 MP4 (qp 0). libx264's lossy mode is not bit-reproducible from
    run to run here (a few pixels move by a few levels), which would make the benchmark depend on the
    day it was generated; lossless decoding is exactly the input."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "0", "preset": "veryfast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _clips(seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    train = [random_clip(rng) for _ in range(TRAIN_VIDEOS)]
    twins = int(TEST_VIDEOS * TWIN_FRACTION)
    bases = [random_clip(rng) for _ in range(TEST_VIDEOS - twins)]
    test = bases + [reordered(bases[i], rng) for i in range(twins)]
    order = rng.permutation(len(test))
    return train, [test[i] for i in order]


def generate(root: Path, seed: int, quiet: bool = False) -> None:
    """Write the benchmark into `root` (atomically: a half-written folder is never used)."""
    if (root / "COMPLETE").exists():
        return
    staging = root.with_name(root.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "videos").mkdir(parents=True)
    rng = np.random.default_rng(seed + 1)
    train, test = _clips(seed)
    train_ids = [f"video{i}" for i in range(len(train))]
    test_ids = [f"video{len(train) + i}" for i in range(len(test))]
    videos, sentences, jsfusion = [], [], []
    for split, ids, clips, kinds, per_video in (
        ("train", train_ids, train, TRAIN_KINDS, TRAIN_CAPTIONS),
        ("test", test_ids, test, TEST_KINDS, TEST_CAPTIONS),
    ):
        for vid, clip in progress(list(zip(ids, clips)), f"generating {split} videos", quiet):
            write_mp4(staging / "videos" / f"{vid}.mp4", render(clip))
            videos.append({"video_id": vid, "split": split, "id": int(vid[5:])})
            for sen_id in range(per_video):
                kind = kinds[sen_id % len(kinds)] if split == "test" else str(rng.choice(kinds))
                sentences.append({"video_id": vid, "caption": caption(clip, kind, rng), "sen_id": sen_id})
                if split == "test" and sen_id == 0:
                    jsfusion.append({"key": f"ret{len(jsfusion)}", "vid_key": f"msr{vid[5:]}", "video_id": vid,
                                     "sentence": sentences[-1]["caption"]})
    (staging / DATA_JSON).write_text(json.dumps({"info": {"generator": GENERATOR_VERSION, "seed": seed},
                                                "videos": videos, "sentences": sentences}))
    with (staging / TRAIN_CSV["train-9k"]).open("w", newline="") as handle:
        handle.write("video_id\n" + "".join(f"{v}\n" for v in train_ids))
    with (staging / TEST_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["key", "vid_key", "video_id", "sentence"])
        writer.writeheader()
        writer.writerows(jsfusion)
    (staging / "COMPLETE").write_text("ok\n")
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staging, root)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)


def generate_in_background(root: Path, seed: int, store: dict | None = None) -> BaseProcess:
    """Start `generate` (quiet) in another process, then (with `store`, FrameStore's arguments) decode every video
    into the frame cache: a first run pre-trains the small CLIP meanwhile, on the other core. The writes are atomic,
    so a generate() or a decoding in this process after it finds the work done."""
    process = child_process(_generate_and_decode, (root, seed, store))
    process.start()
    return process


def _generate_and_decode(root: Path, seed: int, store: dict | None) -> None:
    generate(root, seed, quiet=True)
    if store is not None:
        benchmark = Synthetic(str(root), None, store["cache_dir"], seed, quiet=True)
        videos = [video for split in ("train-9k", "test-1kA") for video in benchmark.load_split(split).videos]
        FrameStore(**store, quiet=True, workers=1).prepare(videos)


class Synthetic(MSRVTT):
    """Built-in synthetic benchmark (generated on first use, MSR-VTT formats, nothing downloaded)."""

    name = "synthetic"
    splits = ("train-9k", "test-1kA", "test-1kA-multi", "test-paragraph")

    @staticmethod
    def folder(root: str | None, cache_dir: Path, seed: int) -> Path:
        return Path(root).expanduser() if root else Path(cache_dir) / f"synthetic-v{GENERATOR_VERSION}-seed{seed}"

    @classmethod
    def not_yet_generated(cls, root: str | None, cache_dir: Path, seed: int) -> str | None:
        folder = cls.folder(root, cache_dir, seed)
        return None if folder.is_dir() else f"generated into {folder} on first use"

    def __init__(self, root: str | None, videos: str | None, cache_dir: Path, seed: int = 42, quiet: bool = False):
        folder = self.folder(root, cache_dir, seed)
        generate(folder, seed, quiet)
        super().__init__(str(folder), videos, cache_dir, seed, quiet)

    def load_split(self, split: str) -> Split:
        if split != "test-paragraph":
            return super().load_split(split)
        test = super().load_split("test-1kA")
        ids = [v.id for v in test.videos]
        return paragraph_split(split, ids, self._sentences(), self._video, self.root / DATA_JSON)
