"""`harness run`: suite -> pre-flight -> for each method: train, select, evaluate, cost -> results.json.

A run directory is owned by one run at a time (harness/rundir.py). A run into a directory that already
holds results continues it: methods whose fingerprint (harness/fingerprint.py) matches the stored one are
kept as they are, the others run; a stored run produced differently (code, weights, annotations, protocol,
a method's params) is refused, naming what differs, so rows of two different runs are never mixed and
finished rows are never overwritten. results.json is written atomically after every method; Ctrl-C and
SIGTERM stop the run with what is finished kept (harness/interrupt.py).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from harness.checkpoints import load_checkpoint
from harness.cost.model import method_cost
from harness.cost.timing import time_method
from harness.data.benchmark import Split, drop_videos
from harness.data.frames import FrameStore
from harness.errors import HarnessError
from harness.evaluate import StageScores, evaluate_split, rank_split
from harness.files import atomic_save, atomic_write
from harness.fingerprint import method_differences, method_fingerprint, run_differences, run_fingerprint
from harness.interrupt import Interrupted, Stopped, signal_number
from harness.metrics import RECALL_AT, summarize
from harness.preflight import Prepared, preflight
from harness.results import (SCHEMA_VERSION, code_version, environment, new_run_dir, read_results, started_at,
                             table, write_ranks, write_results)
from harness.rundir import RunLock
from harness.suite import MethodSpec, Suite
from harness.train import PairBatches, train


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


def stored_results(run_dir: Path) -> dict | None:
    """The results.json a previous run left in `run_dir` (schema-checked), if any."""
    file = run_dir / "results.json"
    return read_results(file) if file.is_file() else None


def reusable_methods(stored: dict | None, results: dict, fingerprints: dict[str, str], suite: Suite,
                     run_dir: Path) -> list[str]:
    """The suite's methods the stored run already finished, to keep. A stored run with finished methods that
    was produced differently is refused with what differs; a method of the suite stored with other params
    likewise."""
    finished = list((stored or {}).get("methods", {}))
    if not finished:
        return []
    refuse = (f"{run_dir} holds finished results ({', '.join(finished)}) of a run that differs from this one; "
              "they are kept as they are. Give another --output, or fix the suite to match the stored run. ")
    differences = run_differences(stored, results)
    if differences:
        raise HarnessError(refuse + "What differs: " + "; ".join(differences) + ".")
    kept = []
    for spec in suite.methods:
        entry = stored["methods"].get(spec.name)
        if entry is None:
            continue
        if entry.get("fingerprint") != fingerprints[spec.name]:
            raise HarnessError(refuse + f"What differs: {spec.name} " + "; ".join(
                method_differences(entry, spec.params, spec.checkpoint)) + ".")
        kept.append(spec.name)
    return kept


def new_results(suite: Suite, prepared: Prepared, store: FrameStore, train_policy: str) -> dict:
    protocol, training, validation = suite.protocol, suite.training, prepared.validation
    version = code_version()
    fingerprint = run_fingerprint(version, prepared.backbone.provenance["checkpoint"], prepared.device.type,
                                  suite.to_dict())
    return {
        "schema_version": SCHEMA_VERSION,
        "code_version": version,
        "started": started_at(),
        "environment": environment(prepared.device),
        "seed": suite.seed,
        "suite": suite.to_dict(),
        "fingerprint": fingerprint,
        "protocol": {
            "frames": protocol.frames, "words": protocol.words, "sampling": protocol.sampling,
            "train_sampling": train_policy, "image_size": store.size, "rank": "optimistic (1 + #strictly higher)",
            "ties": "counted per query, not broken", "multi_caption_v2t": protocol.multi_caption_v2t,
            "optimizer": "AdamW (decoupled wd; none on biases and norms)", "schedule": "warm-up + cosine",
            "checkpoint_selection": training.selection if validation is not None else "last-epoch",
            "validation_videos": len(validation.videos) if validation is not None else 0,
            "validation_split": (suite.benchmark.validation_split or "carved from training")
            if validation is not None else None,
        },
        "backbone": prepared.backbone.describe(),
        "benchmark": {"name": suite.benchmark.name, "root": str(prepared.benchmark.root),
                      "annotations": prepared.benchmark.fingerprints(), "splits": {
            s.name: {"shape": s.shape, "videos": len(s.videos), "queries": len(s.captions), "coverage": s.coverage,
                     "missing": s.missing, "unreadable": s.unreadable}
            for s in prepared.test_splits + [s for s in (prepared.train_split, validation) if s is not None]}},
        "methods": {},
        "rows": [],
    }


def run_method(spec: MethodSpec, suite: Suite, prepared: Prepared, store: FrameStore, train_store: FrameStore | None,
               train_policy: str, run_dir: Path, quiet: bool, log) -> tuple[dict, list[dict]]:
    """Train (or load) one method, evaluate it on every test split and measure its cost: its results entry
    and rows."""
    protocol, training, evaluation, device = suite.protocol, suite.training, suite.evaluation, prepared.device
    cls = prepared.methods[spec.name]
    torch.manual_seed(suite.seed)  # head initialisation does not depend on the method order
    method = cls(copy.deepcopy(prepared.backbone), cls.Params(**spec.params)).to(device)
    entry = {"params": asdict(method.params), "trained": cls.trainable and spec.checkpoint is None,
             "reported_as": cls.reported_as, "benchmark_defaults": cls.benchmark_defaults.get(suite.benchmark.name, {}),
             "protocol": method.protocol()}
    if spec.checkpoint is not None:
        load_checkpoint(method, spec.checkpoint, spec.checkpoint_format)
        entry.update(checkpoint=spec.checkpoint, checkpoint_format=spec.checkpoint_format)
    elif cls.trainable:
        batches = PairBatches(prepared.train_split, train_store, protocol.words, training.batch_size, suite.seed,
                              train_policy, protocol.frames, store.size)
        validation = prepared.validation if training.selection == "validation" else None
        record = train(method, batches, validation, store, protocol.words, training, evaluation.batch_size,
                       evaluation.score_chunk, device, quiet, log)
        entry["training"] = asdict(record)
        checkpoint = run_dir / "checkpoints" / f"{spec.name}.pt"
        state = method.state_dict()
        atomic_save(checkpoint, lambda temporary: torch.save(state, temporary), "checkpoint")
        entry["checkpoint"] = str(checkpoint.relative_to(run_dir))
    rows = []
    for split in prepared.test_splits:
        for stage in evaluate_split(method, split, store, protocol.words, evaluation.batch_size, evaluation.score_chunk,
                                    device, training.mixed_precision, quiet, tuple(evaluation.directions)):
            rows += stage_rows(run_dir, suite, spec.name, split, stage, method.candidates())
    entry["cost"] = method_cost(method, protocol.frames, protocol.words, store.size).to_dict(
        gallery=max(len(s.videos) for s in prepared.test_splits))
    entry["cost"]["timing"] = {stage: asdict(t) for stage, t in time_method(
        method, protocol.frames, protocol.words, store.size, device, entry["cost"]["score"]["per_pair"],
        repeats=3).items()}
    return entry, rows


def run_suite(suite: Suite, output: Path | None = None, quiet: bool = False, log=print) -> dict:
    """Run every method of the suite into `output` (default: a new runs/<suite>/<time> folder); when `output`
    holds a previous run's results, continue it."""
    clock = time.perf_counter()
    run_dir = Path(output) if output else new_run_dir(Path("runs"), suite.name)
    with RunLock(run_dir):
        stored = stored_results(run_dir)
        prepared = preflight(suite, run_dir, quiet)
        protocol, partial = suite.protocol, suite.benchmark.allow_partial_gallery
        size = protocol.image_size or prepared.backbone.image_size
        cache_dir = Path(suite.cache_dir).expanduser()
        store = FrameStore(cache_dir, protocol.frames, protocol.sampling, size, quiet,
                           timeout=suite.benchmark.decode_timeout)
        try:  # decode every video once; an unreadable one refuses its split unless a partial gallery is allowed
            prepared.test_splits = [decode_split(store, s, partial) for s in prepared.test_splits]
            prepared.train_split, prepared.validation = (decode_split(store, s, partial) if s is not None else None
                                                         for s in (prepared.train_split, prepared.validation))
        except HarnessError as error:
            raise HarnessError(f"{suite.source}: benchmark ({suite.benchmark.name}): {error}") from None
        train_policy = protocol.train_sampling or protocol.sampling
        train_store = store if train_policy == protocol.sampling else (
            None if train_policy == "rand" else FrameStore(cache_dir, protocol.frames, train_policy, size, quiet,
                                                           timeout=suite.benchmark.decode_timeout))

        results = new_results(suite, prepared, store, train_policy)
        fingerprints = {spec.name: method_fingerprint(spec, results["fingerprint"]) for spec in suite.methods}
        kept = reusable_methods(stored, results, fingerprints, suite, run_dir)
        if stored is not None and stored["methods"]:  # every stored method stays (one the suite no longer lists too)
            results["resumes"] = stored.get("resumes", []) + [{"started": stored.get("started"), "kept": kept}]
            results["methods"], results["rows"] = dict(stored["methods"]), list(stored["rows"])
        atomic_write(run_dir / "suite.yaml", yaml.safe_dump(suite.to_dict(), sort_keys=False), "suite")
        finished = list(kept)
        try:
            for spec in suite.methods:
                if spec.name in kept:
                    log(f"{spec.name}: kept (finished earlier in {run_dir}, same fingerprint)")
                    continue
                log(f"{spec.name}:")
                entry, rows = run_method(spec, suite, prepared, store, train_store, train_policy, run_dir, quiet, log)
                results["methods"][spec.name] = {"fingerprint": fingerprints[spec.name], **entry}
                results["rows"] += rows
                results["wall_seconds"] = round(time.perf_counter() - clock, 1)
                write_results(run_dir, results)  # after every method: finished work is never lost
                finished.append(spec.name)
        except (KeyboardInterrupt, Stopped) as stop:
            unfinished = [m.name for m in suite.methods if m.name not in finished]
            raise Interrupted(f"interrupted: kept {len(finished)} finished method(s) ({', '.join(finished) or 'none'}) "
                              f"in {run_dir}; not finished: {', '.join(unfinished)}", signal_number(stop),
                              run_dir) from None
    results["run_dir"] = str(run_dir)
    log(table(results["rows"]))
    log(f"results: {run_dir / 'results.json'} ({results.get('wall_seconds', 0.0)} s)")
    return results
