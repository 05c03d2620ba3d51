"""`harness run`: suite -> benchmark -> for each method: train, select, evaluate -> results.json."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from harness import registry
from harness.backbone import Backbone, load_clip
from harness.checkpoints import load_checkpoint
from harness.cost.model import method_cost
from harness.cost.timing import time_method
from harness.data.benchmark import Split, check_videos, drop_videos
from harness.data.frames import FrameStore
from harness.errors import DataError
from harness.evaluate import StageScores, evaluate_split, rank_split
from harness.metrics import RECALL_AT, summarize
from harness.results import (SCHEMA_VERSION, code_version, environment, new_run_dir, started_at, table,
                             write_ranks, write_results)
from harness.suite import Suite
from harness.synthetic_backbone import synthetic_checkpoint
from harness.train import PairBatches, train

SYNTHETIC_ARCH = "synthetic-small"


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise DataError("the suite asks for device 'cuda' but no CUDA device is available.")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def load_backbone(suite: Suite, cache_dir: Path, quiet: bool) -> Backbone:
    spec = suite.backbone
    arch, checkpoint = spec.arch, spec.checkpoint
    if arch == SYNTHETIC_ARCH and checkpoint is None:
        checkpoint, arch = str(synthetic_checkpoint(cache_dir, suite.seed, quiet)), "auto"
    if checkpoint is None:
        raise DataError(f"{suite.source}: backbone.checkpoint: no CLIP checkpoint given for {arch}. Point it at a "
                        "local file (e.g. OpenAI's ViT-B-32.pt), for example checkpoint: ${CLIP_CHECKPOINT}.")
    clip = load_clip(arch, checkpoint, suite.protocol.words, spec.quick_gelu)
    return Backbone(clip, {"arch": spec.arch, "checkpoint": str(checkpoint), "quick_gelu": spec.quick_gelu})


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


def decode_split(store: FrameStore, split: Split, allow_partial: bool) -> Split:
    failed = store.prepare(split.videos, f"decoding {split.name} videos")
    return drop_videos(split, failed, "unreadable", allow_partial)


def stage_rows(run_dir: Path, suite: Suite, name: str, split: Split, stage: StageScores, k: int | None) -> list[dict]:
    """One result row per direction of one retrieval stage, with its per-query ranks written out."""
    protocol, rows = suite.protocol, []
    for direction, scores in stage.scores.items():
        ranking = rank_split(scores, split, direction, protocol.multi_caption_v2t)
        video_ids = [v.id for v in split.videos]
        queries = split.captions if direction == "t2v" else video_ids
        truth = [video_ids[i] for i in split.caption_video] if direction == "t2v" else video_ids
        label = name if stage.stage == "single" else f"{name}@{stage.stage}"
        ranks_file = write_ranks(run_dir, label, split.name, direction, ranking.ranks, ranking.tied, queries,
                                 truth)
        row = {
            "method": name, "benchmark": suite.benchmark.name, "split": split.name, "direction": direction,
            "stage": stage.stage, "post": "none", **summarize(ranking, RECALL_AT),
            "coverage": split.coverage, "queries": len(ranking.ranks),
            "gallery": len(split.captions) if direction == "v2t" and protocol.multi_caption_v2t ==
            "all-captions" and split.shape == "multi-caption" else len(split.videos),
            "shape": split.shape, "ranks_file": ranks_file,
            **({"v2t_convention": protocol.multi_caption_v2t}
               if direction == "v2t" and split.shape == "multi-caption" else {}),
        }
        if stage.stage == "two-stage":  # fine scores actually computed, against the full matrix
            row.update(candidates=k, fine_scores=stage.fine_scores[direction], all_pairs=scores.numel())
        rows.append(row)
    return rows


def run_suite(suite: Suite, output: Path | None = None, quiet: bool = False, log=print) -> dict:
    started, clock = started_at(), time.perf_counter()
    device = select_device(suite.device)
    cache_dir = Path(suite.cache_dir).expanduser()
    protocol, training, evaluation = suite.protocol, suite.training, suite.evaluation

    benchmark_cls = registry.benchmarks()[suite.benchmark.name]
    try:
        benchmark = benchmark_cls(suite.benchmark.root, suite.benchmark.videos, cache_dir, suite.seed, quiet)
        test_splits = [check_videos(benchmark.load_split(s), suite.benchmark.allow_partial_gallery)
                       for s in suite.benchmark.test_splits]
        methods = {m.name: registry.methods()[m.name] for m in suite.methods}
        needs_training = any(methods[m.name].trainable and m.checkpoint is None for m in suite.methods)
        train_split = validation = None
        if needs_training:
            if suite.benchmark.train_split is None:
                raise DataError("benchmark.train_split: a trainable method is listed but no training split is given.")
            train_split = check_videos(benchmark.load_split(suite.benchmark.train_split),
                                       suite.benchmark.allow_partial_gallery)
            if suite.benchmark.validation_split is not None:
                validation = check_videos(benchmark.load_split(suite.benchmark.validation_split),
                                          suite.benchmark.allow_partial_gallery)
            else:
                train_split, validation = carve_validation(train_split, training.validation_videos, suite.seed)
    except DataError as error:
        raise DataError(f"{suite.source}: benchmark ({suite.benchmark.name}): {error}") from None

    backbone = load_backbone(suite, cache_dir, quiet)
    size = protocol.image_size or backbone.image_size
    store = FrameStore(cache_dir, protocol.frames, protocol.sampling, size, quiet)
    try:  # decode every video once; an unreadable one refuses its split unless a partial gallery is allowed
        test_splits = [decode_split(store, s, suite.benchmark.allow_partial_gallery) for s in test_splits]
        train_split, validation = (decode_split(store, s, suite.benchmark.allow_partial_gallery)
                                   if s is not None else None for s in (train_split, validation))
    except DataError as error:
        raise DataError(f"{suite.source}: benchmark ({suite.benchmark.name}): {error}") from None
    train_policy = protocol.train_sampling or protocol.sampling
    train_store = store if train_policy == protocol.sampling else (
        None if train_policy == "rand" else FrameStore(cache_dir, protocol.frames, train_policy, size, quiet))

    run_dir = output or new_run_dir(Path("runs"), suite.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "suite.yaml").write_text(yaml.safe_dump(suite.to_dict(), sort_keys=False))
    results = {
        "schema_version": SCHEMA_VERSION,
        "code_version": code_version(),
        "started": started,
        "environment": environment(device),
        "seed": suite.seed,
        "suite": suite.to_dict(),
        "protocol": {
            "frames": protocol.frames, "words": protocol.words, "sampling": protocol.sampling,
            "train_sampling": train_policy, "image_size": size, "rank": "optimistic (1 + #strictly higher)",
            "ties": "counted per query, not broken", "multi_caption_v2t": protocol.multi_caption_v2t,
            "optimizer": "AdamW (decoupled wd; none on biases and norms)", "schedule": "warm-up + cosine",
            "checkpoint_selection": training.selection if validation is not None else "last-epoch",
            "validation_videos": len(validation.videos) if validation is not None else 0,
            "validation_split": (suite.benchmark.validation_split or "carved from training")
            if validation is not None else None,
        },
        "backbone": backbone.describe(),
        "benchmark": {"name": suite.benchmark.name, "root": str(benchmark.root),
                      "annotations": benchmark.fingerprints(), "splits": {
            s.name: {"shape": s.shape, "videos": len(s.videos), "queries": len(s.captions), "coverage": s.coverage,
                     "missing": s.missing, "unreadable": s.unreadable}
            for s in test_splits + [s for s in (train_split, validation) if s is not None]}},
        "methods": {},
        "rows": [],
    }
    for spec in suite.methods:
        cls = methods[spec.name]
        log(f"{spec.name}:")
        torch.manual_seed(suite.seed)  # head initialisation does not depend on the method order
        method = cls(copy.deepcopy(backbone), cls.Params(**spec.params)).to(device)
        entry = {"params": asdict(method.params), "trained": cls.trainable and spec.checkpoint is None,
                 "reported_as": cls.reported_as,
                 "benchmark_defaults": cls.benchmark_defaults.get(suite.benchmark.name, {}),
                 "protocol": method.protocol()}
        if spec.checkpoint is not None:
            load_checkpoint(method, spec.checkpoint, spec.checkpoint_format)
            entry.update(checkpoint=spec.checkpoint, checkpoint_format=spec.checkpoint_format)
        elif cls.trainable:
            batches = PairBatches(train_split, train_store, protocol.words, training.batch_size, suite.seed,
                                  train_policy, protocol.frames, size)
            record = train(method, batches, validation if training.selection == "validation" else None, store,
                           protocol.words, training, evaluation.batch_size, evaluation.score_chunk, device, quiet, log)
            entry["training"] = asdict(record)
            checkpoint = run_dir / "checkpoints" / f"{spec.name}.pt"
            checkpoint.parent.mkdir(exist_ok=True)
            torch.save(method.state_dict(), checkpoint)
            entry["checkpoint"] = str(checkpoint.relative_to(run_dir))
        for split in test_splits:
            for stage in evaluate_split(method, split, store, protocol.words, evaluation.batch_size,
                                        evaluation.score_chunk, device, training.mixed_precision, quiet,
                                        tuple(evaluation.directions)):
                results["rows"] += stage_rows(run_dir, suite, spec.name, split, stage, method.candidates())
        entry["cost"] = method_cost(method, protocol.frames, protocol.words, size).to_dict(
            gallery=max(len(s.videos) for s in test_splits))
        entry["cost"]["timing"] = {stage: asdict(t) for stage, t in time_method(
            method, protocol.frames, protocol.words, size, device, entry["cost"]["score"]["per_pair"], repeats=3).items()}
        results["methods"][spec.name] = entry
        results["wall_seconds"] = round(time.perf_counter() - clock, 1)
        write_results(run_dir, results)  # after every method: finished work is never lost
    results["run_dir"] = str(run_dir)
    log(table(results["rows"]))
    log(f"results: {run_dir / 'results.json'} ({results['wall_seconds']} s)")
    return results
