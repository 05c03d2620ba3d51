"""`harness run SUITE --dry-run`: what a run would do, without doing it.

Prints the resolved suite (overrides and selections applied), per split how many videos the frame cache
already holds, per method what would happen (train, continue an interrupted training, evaluate a given
checkpoint, or keep a finished result of the run directory) and the counted cost (MACs, no timing).
Nothing is trained, decoded or written; a backbone that does not exist yet (the built-in small CLIP before
its first use) is not generated.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from harness import registry
from harness.cost.suite import cost_table, suite_cost
from harness.data.coverage import frame_size
from harness.data.frames import FrameStore
from harness.errors import HarnessError
from harness.retrieval.feature_cache import method_code
from harness.pipeline.fingerprint import method_differences, method_fingerprint, run_differences, run_fingerprint
from harness.data.benchmark import check_videos
from harness.pipeline.preflight import select_device, videos_by_role
from harness.pipeline.results import code_version, read_results
from harness.pipeline.run import stored_videos
from harness.suite import Suite
from harness.data.synthetic_backbone import SYNTHETIC_ARCH, checkpoint_path


def backbone_file(suite: Suite) -> Path | None:
    """The CLIP weights a run would load, if they exist already."""
    if suite.backbone.checkpoint:
        path = Path(suite.backbone.checkpoint).expanduser()
    elif suite.backbone.arch == SYNTHETIC_ARCH:
        path = checkpoint_path(Path(suite.cache_dir).expanduser(), suite.seed)
    else:
        return None
    return path if path.is_file() else None


def frame_cache_lines(suite: Suite, image_size: int | None) -> list[str]:
    """Per split: videos listed, and how many are already decoded under this protocol."""
    spec, cls, cache_dir = suite.benchmark, registry.benchmarks()[suite.benchmark.name], Path(suite.cache_dir).expanduser()
    pending = cls.not_yet_generated(spec.root, cache_dir, suite.seed)
    if pending:
        return [f"  {spec.name}: {pending}"]
    try:
        benchmark = cls(spec.root, spec.videos, cache_dir, suite.seed, quiet=True)
    except HarnessError as error:
        return [f"  data: {error}"]
    if image_size is None:
        return ["  frame cache: unknown (the frame size comes from the backbone checkpoint, which is not there)"]
    store = FrameStore(Path(suite.cache_dir).expanduser(), suite.protocol.frames, suite.protocol.sampling, image_size,
                       quiet=True)
    lines = []
    for name in [spec.train_split, *spec.test_splits]:
        if name is None:
            continue
        try:
            split = benchmark.load_split(name)
        except HarnessError as error:
            lines.append(f"  {name}: {error}")
            continue
        cached = sum(1 for v in split.videos if v.path.is_file() and store.has(v))
        lines.append(f"  {name}: {len(split.videos)} videos, {len(split.captions)} captions; {cached} decoded in the "
                     "frame cache")
    return lines


def run_videos(suite: Suite) -> dict[str, dict[str, str]] | None:
    """The video keys by role a run would fingerprint (the splits it would read, as its pre-flight reads them);
    None when the data cannot be read yet (not generated, files missing)."""
    spec, cls = suite.benchmark, registry.benchmarks()[suite.benchmark.name]
    cache_dir = Path(suite.cache_dir).expanduser()
    if cls.not_yet_generated(spec.root, cache_dir, suite.seed):
        return None
    trains = any(m.trains(registry.methods()[m.name]) for m in suite.methods)
    try:
        benchmark = cls(spec.root, spec.videos, cache_dir, suite.seed, quiet=True)
        splits = {name: check_videos(benchmark.load_split(name), spec.allow_partial_gallery)
                  for name in [*spec.test_splits, *((spec.train_split, spec.validation_split) if trains else ())]
                  if name is not None}
    except HarnessError:
        return None
    return videos_by_role([splits[name] for name in spec.test_splits], splits.get(spec.train_split),
                          splits.get(spec.validation_split))


def method_lines(suite: Suite, run_dir: Path | None, weights: Path | None) -> list[str]:
    stored = read_results(run_dir / "results.json") if run_dir and (run_dir / "results.json").is_file() else None
    videos = run_videos(suite)
    run = (run_fingerprint(code_version(), str(weights), select_device(suite.device).type, suite.to_dict(), videos)
           if weights and videos is not None else None)
    differences = []
    if stored is not None and run is not None:  # annotation files are compared by the run itself
        differences = run_differences(stored, {"fingerprint": run, "suite": suite.to_dict(),
                                               "benchmark": {"annotations": {}}},
                                      any(e.get("trained") for e in stored["methods"].values()),
                                      stored_videos(run_dir), videos)
    lines = []
    for spec in suite.methods:
        cls = registry.methods()[spec.name]
        if spec.checkpoint:
            action = f"evaluate the checkpoint {spec.checkpoint} ({spec.checkpoint_format})"
        elif cls.trainable:
            action = f"train {suite.training.epochs} epoch(s), select ({suite.training.selection}), evaluate"
        else:
            action = "evaluate (nothing to train)"
        code = method_code(cls)
        fingerprint = method_fingerprint(spec, run, spec.trains(cls), code["digest"]) if run else None
        entry = (stored or {}).get("methods", {}).get(spec.name)
        state = run_dir / "checkpoints" / f"{spec.name}.train-state.pt" if run_dir else None
        if entry is not None:
            same = fingerprint is not None and entry.get("fingerprint") == fingerprint
            action = ("kept: finished in the run directory, same fingerprint" if same else
                      "refused without --force: finished in the run directory, differently ("
                      + "; ".join(differences or method_differences(entry, spec.params, spec.checkpoint, code)) + ")")
        elif state is not None and state.is_file():
            saved = torch.load(state, map_location="cpu", weights_only=True)
            action = (f"continue training after epoch {saved['epoch']}, then evaluate"
                      if saved.get("fingerprint") == fingerprint else
                      "refused without --force: an unfinished training of another run is there")
        lines.append(f"  {spec.name:<22} {action}")
    return lines


def dry_run(suite: Suite, run_dir: Path | None) -> str:
    weights = backbone_file(suite)
    try:
        image_size = frame_size(suite)
    except HarnessError:
        image_size = None
    cost = suite_cost(suite, select_device(suite.device), timing=False, log=lambda *_: None)
    parts = ["resolved suite:", yaml.safe_dump(suite.to_dict(), sort_keys=False).rstrip(),
             "", "data:", *frame_cache_lines(suite, image_size),
             "", f"methods ({'into ' + str(run_dir) if run_dir else 'into a new run directory'}):",
             *method_lines(suite, run_dir, weights),
             "", "cost (MACs counted under the protocol; no timing):", cost_table(cost),
             "", "dry run: nothing was trained, decoded or written."]
    if weights is None:
        parts.insert(-1, "(the backbone weights do not exist yet: what is resumable cannot be told before the first run)")
    return "\n".join(parts)

