"""Pre-flight: everything a run can check without computing, checked before the first method starts.

The device is usable, the run directory writable, every split's annotation files read and every video
file present, the CLIP checkpoint read, and every method checkpoint the suite lists read (weights only)
and matched against its method's keys and shapes. All problems are collected and reported together in one
`PreflightError` (exit 2), so a bad second checkpoint does not surface after the first method trained
for an hour.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness import distributed, registry
from harness.api.backbone import Backbone, read_state_dict
from harness.pipeline.checkpoints import load_backbone, load_checkpoint
from harness.data.benchmark import Benchmark, Split, check_videos, video_keys
from harness.data.synthetic import Synthetic, generate_in_background
from harness.data.synthetic_backbone import IMAGE_SIZE, SYNTHETIC_ARCH, checkpoint_path
from harness.errors import DataError, HarnessError
from harness.retrieval.post_rows import method_post_names
from harness.progress import timed
from harness.pipeline.tensorboard import require_tensorboard
from harness.suite import Suite


class PreflightError(HarnessError):
    """One or more problems found before any work started; the message lists them all."""


@dataclass
class Prepared:
    """What the checks produced, for the run to use."""

    device: torch.device
    benchmark: Benchmark
    backbone: Backbone
    test_splits: list[Split]
    train_split: Split | None = None
    validation: Split | None = None
    methods: dict[str, type] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per stage of the preparation: its profile
    # "test" / "training" -> {video id: key}: what the numbers depend on in the video files, read before decoding
    # (a submitter and its jobs see the same); the training and validation videos together
    videos: dict[str, dict[str, str]] = field(default_factory=dict)


def videos_by_role(test: list[Split], train: Split | None, validation: Split | None) -> dict[str, dict[str, str]]:
    """The video keys (harness.data.benchmark.video_keys) of the test splits and of the training ones (a video id
    names one file of the benchmark, whichever splits list it)."""
    return {role: {vid: key for split in listed if split is not None for vid, key in video_keys(split).items()}
            for role, listed in (("test", test), ("training", [train, validation]))}


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise HarnessError("the suite asks for device 'cuda' but no CUDA device is available.")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and distributed.active():  # one GPU per process of the group
        return torch.device("cuda", distributed.local_rank())
    return torch.device(choice)


def usable_device(choice: str) -> torch.device:
    device = select_device(choice)
    try:
        torch.ones(2, device=device).sum().item()
    except RuntimeError as error:
        raise HarnessError(f"device {device} is not usable: {error}") from None
    return device


def writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"probe")
    except OSError as error:
        raise HarnessError(f"the run directory {folder} is not writable: {error.strerror or error}.") from None


class Problems:
    """Runs checks, keeping each one's error instead of stopping at the first."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, where: str, action: Callable):
        try:
            return action()
        except HarnessError as error:
            self.found.append(f"{where}: {error}")
            return None


def carve_validation(train_split: Split, count: int, seed: int) -> tuple[Split, Split | None]:
    """A deterministic validation split (one caption per video) carved from the training videos."""
    if count <= 0:
        return train_split, None
    if count >= len(train_split.videos):
        raise DataError(f"validation_videos={count} leaves no training video (the split has {len(train_split.videos)}).")
    order = sorted(range(len(train_split.videos)), key=lambda i: train_split.videos[i].id)
    chosen = set(np.random.default_rng(seed).permutation(order)[:count].tolist())
    keep = [i for i in range(len(train_split.videos)) if i not in chosen]
    validation = train_split.subset("validation", sorted(chosen), first_caption_only=True)
    return train_split.subset(train_split.name, keep), validation


def load_splits(suite: Suite, benchmark: Benchmark, methods: dict[str, type], problems: Problems) -> dict:
    """The test splits, and the training and validation splits when a method will train; a missing
    annotation file or video file is a problem (dropped instead, where a partial gallery is allowed)."""
    spec, partial = suite.benchmark, suite.benchmark.allow_partial_gallery
    needs_training = any(m.trains(methods[m.name]) for m in suite.methods)
    bank_for = [m.name for m in suite.methods if "qbnorm" in method_post_names(methods[m.name], suite.evaluation.post)[0]]
    named = [("test", name) for name in spec.test_splits]
    if needs_training or bank_for:
        if spec.train_split is None:
            problems.found.append("benchmark.train_split: " + ("a trainable method is listed" if needs_training else
                                  f"the QB-Norm rows of {', '.join(bank_for)} need a query bank (one caption per "
                                  "training video)") + " but no training split is given.")
        else:
            named.append(("train", spec.train_split))
            if spec.validation_split is not None:
                named.append(("validation", spec.validation_split))
    splits: dict = {"test": []}
    for role, name in named:
        split = problems.check(f"benchmark ({spec.name})",
                               lambda: check_videos(benchmark.load_split(name), partial))
        if split is None:
            continue
        if role == "test":
            splits["test"].append(split)
        else:
            splits[role] = split
    if "train" in splits and spec.validation_split is None:
        carved = problems.check("training.validation_videos", lambda: carve_validation(
            splits["train"], suite.training.validation_videos, suite.seed))
        if carved is not None:
            splits["train"], splits["validation"] = carved
    if spec.limit is not None:
        splits = {role: [first_videos(s, spec.limit) for s in split] if role == "test" else first_videos(split, spec.limit)
                  for role, split in splits.items()}
    return splits


def first_videos(split: Split | None, limit: int) -> Split | None:
    """`benchmark.limit`: the split's first `limit` videos and their captions (a smoke test)."""
    return split if split is None or len(split.videos) <= limit else split.subset(split.name, list(range(limit)))


def generate_while_pretraining(suite: Suite, cache_dir: Path, quiet: bool) -> multiprocessing.Process | None:
    """On the first run of the synthetic suite (neither its benchmark nor its small CLIP cached yet), the benchmark
    is written and its videos decoded into the frame cache in another process while this one pre-trains the CLIP:
    they share nothing and take a core each.
    None otherwise (and in a process group, whose ranks each load the data)."""
    if (suite.benchmark.name != Synthetic.name or suite.benchmark.root or suite.backbone.arch != SYNTHETIC_ARCH
            or suite.backbone.checkpoint is not None or distributed.world_size() > 1):
        return None
    folder = Synthetic.folder(None, cache_dir, suite.seed)
    if folder.is_dir() or checkpoint_path(cache_dir, suite.seed).exists():
        return None
    if not quiet:
        print(f"generating the synthetic benchmark into {folder} and decoding its videos in the background while "
              "the small CLIP pre-trains")
    protocol = suite.protocol
    store = {"cache_dir": cache_dir, "frames": protocol.frames, "policy": protocol.sampling,
             "size": protocol.image_size or IMAGE_SIZE, "timeout": suite.benchmark.decode_timeout}
    return generate_in_background(folder, suite.seed, store)


def preflight(suite: Suite, run_dir: Path, quiet: bool = False) -> Prepared:
    problems = Problems()
    device = problems.check("device", lambda: usable_device(suite.device))
    problems.check("output", lambda: writable(run_dir))
    if suite.training.log == "tensorboard":
        problems.check("training.log", require_tensorboard)
    cache_dir = Path(suite.cache_dir).expanduser()
    methods = {m.name: registry.methods()[m.name] for m in suite.methods}
    seconds: dict[str, float] = {}
    loaded: dict = {}

    def load_benchmark() -> None:  # a generated benchmark is generated here, on first use
        if generating is not None:
            generating.join()  # then the benchmark is complete, or generated here (with its error, if it fails)
        benchmark = loaded["benchmark"] = problems.check(f"benchmark ({suite.benchmark.name})", lambda: registry.benchmarks()[
            suite.benchmark.name](suite.benchmark.root, suite.benchmark.videos, cache_dir, suite.seed, quiet))
        loaded["splits"] = load_splits(suite, benchmark, methods, problems) if benchmark is not None else {"test": []}

    def load_the_backbone() -> None:  # the synthetic backbone is pre-trained here, on first use
        loaded["backbone"] = problems.check("backbone", lambda: load_backbone(suite, cache_dir, quiet))

    generating = generate_while_pretraining(suite, cache_dir, quiet)
    stages = [("benchmark", load_benchmark), ("backbone", load_the_backbone)]
    for name, stage in stages if generating is None else reversed(stages):
        with timed(seconds, name):
            stage()
    benchmark, splits, backbone = loaded["benchmark"], loaded["splits"], loaded["backbone"]
    for index, spec in enumerate(suite.methods):
        if spec.checkpoint is None:
            continue
        where = f"methods[{index}] ({spec.name}) checkpoint"
        if backbone is None:  # the file can still be read; its keys are checked against the model once it loads
            problems.check(where, lambda: read_state_dict(spec.checkpoint, f"{spec.name} checkpoint"))
            continue
        cls = methods[spec.name]
        problems.check(where, lambda: load_checkpoint(cls.build(backbone, spec.params),
                                                      spec.checkpoint, spec.checkpoint_format))
    if problems.found:
        listed = "\n".join(f"  {i}. {p}" for i, p in enumerate(problems.found, start=1))
        raise PreflightError(f"{suite.source}: {len(problems.found)} problem(s) found before any work started "
                             f"(nothing was trained or written):\n{listed}")
    return Prepared(device, benchmark, backbone, splits["test"], splits.get("train"), splits.get("validation"), methods,
                    seconds, videos_by_role(splits["test"], splits.get("train"), splits.get("validation")))
