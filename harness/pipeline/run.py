"""`harness run`: suite -> pre-flight -> for each method: train, select, evaluate, cost -> results.json.

A run directory is owned by one run at a time (harness/pipeline/rundir.py). A run into a directory that already
holds results continues it: methods whose fingerprint (harness/pipeline/fingerprint.py) matches the stored one are
kept as they are, the others run; a stored run produced differently (code, weights, annotations, protocol,
a method's params) is refused, naming what differs, so rows of two different runs are never mixed and
finished rows are never overwritten. results.json is written atomically after every method; Ctrl-C and
SIGTERM stop the run with what is finished kept (harness/interrupt.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from harness import distributed, registry
from harness.pipeline.checkpoints import load_checkpoint
from harness.cost.model import method_cost
from harness.cost.timing import time_method
from harness.data.benchmark import Split, drop_videos
from harness.data.frames import FrameStore
from harness.errors import HarnessError
from harness.retrieval.ranking import Evaluation, StageRanks, evaluate_split
from harness.retrieval.post_rows import method_post_names, post_processings
from harness.retrieval.tiles import Scoring
from harness.retrieval.feature_cache import FeatureCache, method_code
from harness.storage.files import atomic_torch_save, atomic_write
from harness.pipeline.fingerprint import method_differences, method_fingerprint, run_differences, run_fingerprint
from harness.interrupt import Interrupted, Stopped, signal_number
from harness.api.method import Method
from harness.retrieval.metrics import RECALL_AT, summarize
from harness.pipeline.preflight import Prepared, preflight
from harness.pipeline.results import (SCHEMA_VERSION, code_version, environment, new_run_dir, read_results, started_at,
                             table, write_ranks, write_results)
from harness.pipeline.rundir import RunLock
from harness.suite import MethodSpec, Suite
from harness.pipeline.jobs import in_workers
from harness.pipeline.train import PairBatches, Validation, train
from harness.progress import timed


def decode_split(store: FrameStore, split: Split, allow_partial: bool) -> Split:
    failed = store.prepare(split.videos, f"decoding {split.name} videos")
    return drop_videos(split, failed, "unreadable", allow_partial)


def stage_rows(run_dir: Path, suite: Suite, name: str, split: Split, stage: StageRanks, k: int | None,
               code: dict) -> list[dict]:
    """One result row per direction of one retrieval stage, with its per-query ranks written out."""
    protocol, rows = suite.protocol, []
    for direction, ranking in stage.rankings.items():
        video_ids = [v.id for v in split.videos]
        queries = split.captions if direction == "t2v" else video_ids
        truth = [video_ids[i] for i in split.caption_video] if direction == "t2v" else video_ids
        label = (name if stage.stage == "single" else f"{name}@{stage.stage}") + (
            f"+{stage.post}" if stage.post != "none" else "")
        top = None if ranking.top is None else [[video_ids[i] for i in row] for row in ranking.top]
        ranks_file = write_ranks(run_dir, label, split.name, direction, ranking.ranks, ranking.tied, queries,
                                 truth, top, ranking.top_scores)
        row = {
            "method": name, "benchmark": suite.benchmark.name, "split": split.name, "direction": direction,
            "stage": stage.stage, "post": stage.post, **summarize(ranking, RECALL_AT),
            "coverage": split.coverage, "queries": len(ranking.ranks),
            "gallery": len(split.captions) if direction == "v2t" and protocol.multi_caption_v2t ==
            "all-captions" and split.shape == "multi-caption" else len(split.videos),
            "shape": split.shape, "ranks_file": ranks_file, "code": code,
            **({"limit": suite.benchmark.limit} if suite.benchmark.limit is not None else {}),
            **({"v2t_convention": protocol.multi_caption_v2t}
               if direction == "v2t" and split.shape == "multi-caption" else {}),
        }
        if stage.post != "none":  # what the post-processing used (temperature; QB-Norm's settings and bank)
            row["post_settings"] = stage.post_settings[direction]
        if stage.stage == "two-stage":  # fine scores actually computed, against the full matrix
            row.update(candidates=k, fine_scores=stage.fine_scores[direction], all_pairs=stage.pairs)
        if stage.index is not None:  # searched by a FAISS index; an approximate one's rows carry its recall
            row.update(index=stage.index, approximate=direction in stage.index_recall)
            if direction in stage.index_recall:
                row["index_recall"] = stage.index_recall[direction]
        rows.append(row)
    return rows


def stored_results(run_dir: Path) -> dict | None:
    """The results.json a previous run left in `run_dir` (schema-checked), if any."""
    file = run_dir / "results.json"
    return read_results(file) if file.is_file() else None


VIDEOS_FILE = "videos.json"  # per role, every video's key: what a resume names when the videos differ


def refusal(run_dir: Path, finished: dict, differences: list[str]) -> HarnessError:
    return HarnessError(f"{run_dir} holds finished results ({', '.join(finished)}) of a run that differs from this "
                        "one; they are kept as they are. Give another --output, fix the suite to match the stored run, "
                        "or give --force to run the differing methods again beside the others. What differs: "
                        + "; ".join(differences) + ".")


def refuse_a_differing_run(stored: dict | None, suite: Suite, run_dir: Path, force: bool) -> None:
    """Before any work (a backbone's pre-training, decoding): a stored run with finished methods that other code
    or another suite produced is refused at once. What needs the data and the weights is compared once they are
    read (`reusable_methods`)."""
    finished = (stored or {}).get("methods", {})
    if not finished or force:
        return
    now = {"fingerprint": {"code_version": code_version()}, "suite": suite.to_dict(), "benchmark": {"annotations": {}}}
    differences = run_differences(stored, now, training=any(entry.get("trained") for entry in finished.values()))
    if differences:
        raise refusal(run_dir, finished, differences)


def stored_videos(run_dir: Path) -> dict | None:
    file = run_dir / VIDEOS_FILE
    try:
        return json.loads(file.read_text()) if file.is_file() else None
    except (OSError, ValueError):
        return None


def reusable_methods(stored: dict | None, results: dict, fingerprints: dict[str, str], suite: Suite,
                     run_dir: Path, videos: dict, force: bool = False, log=print) -> list[str]:
    """The suite's methods the stored run already finished, to keep. A stored run with finished methods that
    was produced differently is refused with what differs (the training budget and videos count where a stored
    method was trained; a method of the suite stored with other params likewise); with `force`, what differs is
    named and the methods it concerns run again."""
    finished = (stored or {}).get("methods", {})
    if not finished:
        return []
    any_trained = any(entry.get("trained") for entry in finished.values())
    differences = run_differences(stored, results, any_trained, stored_videos(run_dir), videos)
    for spec in suite.methods:
        entry = finished.get(spec.name)
        if entry is not None and entry.get("fingerprint") != fingerprints[spec.name] and not differences:
            code = method_code(registry.methods()[spec.name])
            differences += [f"{spec.name} {line}" for line in method_differences(entry, spec.params, spec.checkpoint,
                                                                                 code)]
    if differences and not force:
        raise refusal(run_dir, finished, differences)
    if differences:
        log(f"--force: {run_dir} was produced differently (" + "; ".join(differences) + "); the methods concerned "
            "run again")
    return [spec.name for spec in suite.methods if finished.get(spec.name, {}).get("fingerprint") == fingerprints[spec.name]]


def new_results(suite: Suite, prepared: Prepared, size: int, train_policy: str, device_type: str | None = None) -> dict:
    """The results skeleton with its provenance; `device_type` is where the methods compute (the jobs', when
    a submitter prepares it) and enters the fingerprint."""
    protocol, training, validation = suite.protocol, suite.training, prepared.validation
    version = code_version()
    fingerprint = run_fingerprint(version, prepared.backbone.provenance["checkpoint"],
                                  device_type or prepared.device.type, suite.to_dict(), prepared.videos)
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
            "train_sampling": train_policy, "image_size": size, "rank": "optimistic (1 + #strictly higher)",
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
        "distributed": {"world_size": distributed.world_size(),
                        "devices": distributed.gather_objects(environment(prepared.device)["device_name"])},
        "methods": {},
        "rows": [],
    }


@dataclass
class RunContext:
    """What every stage of one run shares."""

    suite: Suite
    prepared: Prepared
    store: FrameStore
    train_store: FrameStore | None
    train_policy: str
    run_dir: Path
    features: FeatureCache | None = None  # encoded test features, reused by a later evaluation of the same weights
    quiet: bool = False
    force: bool = False
    log: Callable = print


    def evaluation(self) -> Evaluation:
        suite, evaluation = self.suite, self.suite.evaluation
        return Evaluation(Scoring(self.prepared.device, evaluation.score_chunk, suite.training.mixed_precision),
                          suite.protocol.words, evaluation.batch_size, tuple(evaluation.directions),
                          suite.protocol.multi_caption_v2t, evaluation.index_spec(), self.features, self.quiet)


def build_method(ctx: RunContext, spec: MethodSpec) -> Method:
    torch.manual_seed(ctx.suite.seed)  # head initialisation does not depend on the method order
    return ctx.prepared.methods[spec.name].build(ctx.prepared.backbone, spec.params).to(ctx.prepared.device)


def train_stage(ctx: RunContext, spec: MethodSpec, method: Method, fingerprint: str) -> dict:
    """Train the method (continuing an interrupted training), or reuse a finished training of the same
    fingerprint; the method ends with the selected weights. Its output, stored in stages/<method>.train.json
    with the fingerprint: the training record and the checkpoint path."""
    suite, prepared, run_dir = ctx.suite, ctx.prepared, ctx.run_dir
    checkpoint = run_dir / "checkpoints" / f"{spec.name}.pt"
    state_file = run_dir / "checkpoints" / f"{spec.name}.train-state.pt"
    stage_file = run_dir / "stages" / f"{spec.name}.train.json"
    done = json.loads(stage_file.read_text()) if stage_file.is_file() else None
    if done is not None and done["fingerprint"] == fingerprint and checkpoint.is_file():
        load_checkpoint(method, checkpoint, "harness")
        ctx.log(f"  {spec.name}: training kept ({stage_file.relative_to(run_dir)}, same fingerprint)")
        return done["output"]
    stale = [f for f in (state_file, stage_file) if f.is_file() and stored_fingerprint(f) != fingerprint]
    distributed.wait_for_all()  # every rank has read the stage files before rank 0 removes stale ones
    if stale and not ctx.force:
        raise HarnessError(f"{run_dir}: the unfinished training of {spec.name} there ({stale[0].name}) was started by a "
                           "run that differs from this one; continue it with the suite it was started with, or give "
                           "--force to discard it and train from the start.")
    for file in stale if distributed.is_main() else ():
        file.unlink()
    protocol, training = suite.protocol, suite.training
    batches = PairBatches(prepared.train_split, ctx.train_store, protocol.words, training.batch_size, suite.seed,
                          ctx.train_policy, protocol.frames, ctx.store.size, samples=training.samples)
    validation = (Validation(prepared.validation, ctx.store, ctx.evaluation())
                  if training.selection == "validation" and prepared.validation is not None else None)
    record = train(method, batches, training, prepared.device, validation, ctx.quiet, ctx.log, state_file, fingerprint,
                   scalar_folder=run_dir / "tensorboard" / spec.name)
    output = {"training": asdict(record), "checkpoint": str(checkpoint.relative_to(run_dir))}
    if distributed.is_main():
        state = method.state_dict()
        atomic_torch_save(checkpoint, state, "checkpoint")
        atomic_write(stage_file, json.dumps({"fingerprint": fingerprint, "output": output}, indent=2), "stage record")
        state_file.unlink(missing_ok=True)  # optimizer moments and the best weights so far: no longer needed
    return output


def stored_fingerprint(file: Path) -> str | None:
    """The fingerprint a stage record (.json) or a training state (.pt) was written with."""
    try:
        if file.suffix == ".json":
            return json.loads(file.read_text()).get("fingerprint")
        return torch.load(file, map_location="cpu", weights_only=True).get("fingerprint")
    except Exception:  # unreadable: as good as written by another run
        return None


def evaluate_stage(ctx: RunContext, spec: MethodSpec, method: Method) -> list[dict]:
    """Every test split, every direction and retrieval stage: rows, with their per-query ranks written. In a
    process group every rank encodes and ranks its share (harness/retrieval/ranking.py); rank 0 writes."""
    suite = ctx.suite
    names, _ = method_post_names(type(method), suite.evaluation.post)
    evaluation = dataclasses.replace(ctx.evaluation(), post=post_processings(names, ctx.prepared.train_split,
                                                                             suite.benchmark.name))
    rows = []
    for split in ctx.prepared.test_splits:
        for stage in evaluate_split(method, split, ctx.store, evaluation):
            if distributed.is_main():  # every rank ranked its share; rank 0 writes the rows and ranks files
                rows += stage_rows(ctx.run_dir, suite, spec.name, split, stage, method.candidates(),
                                   method_code(type(method)))
    return rows


def cost_stage(ctx: RunContext, method: Method) -> dict:
    """MACs per stage (counted) and wall-clock time per stage (measured)."""
    protocol, size, device = ctx.suite.protocol, ctx.store.size, ctx.prepared.device
    cost = method_cost(method, protocol.frames, protocol.words, size).to_dict(
        gallery=max(len(s.videos) for s in ctx.prepared.test_splits))
    cost["timing"] = {stage: asdict(t) for stage, t in time_method(
        method, protocol.frames, protocol.words, size, device, cost["score"]["per_pair"], repeats=3).items()}
    return cost


def run_method(ctx: RunContext, spec: MethodSpec, fingerprint: str) -> tuple[dict, list[dict]]:
    """The stages of one method (train or load, evaluate, cost): its results entry and rows."""
    cls = ctx.prepared.methods[spec.name]
    method = build_method(ctx, spec)
    entry = {"fingerprint": fingerprint, "code": method_code(cls), "params": asdict(method.params),
             "trained": spec.trains(cls), "reported_as": cls.reported_as,
             "benchmark_defaults": cls.benchmark_defaults.get(ctx.suite.benchmark.name, {}),
             "protocol": method.protocol()}
    entry["post_processing"], skipped = method_post_names(cls, ctx.suite.evaluation.post)
    if skipped:
        entry["post_skipped"] = skipped
        ctx.log(f"  {spec.name}: no post-processed rows: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    seconds = entry["seconds"] = {}  # the method's profile per stage
    if spec.checkpoint is not None:
        load_checkpoint(method, spec.checkpoint, spec.checkpoint_format)
        entry.update(checkpoint=spec.checkpoint, checkpoint_format=spec.checkpoint_format)
    elif spec.trains(cls):
        with timed(seconds, "train"):
            entry.update(train_stage(ctx, spec, method, fingerprint))
    with timed(seconds, "evaluate"):
        rows = evaluate_stage(ctx, spec, method)
    if distributed.is_main():  # cost is counted and timed by one process; the others wait for it
        with timed(seconds, "cost"):
            entry["cost"] = cost_stage(ctx, method)
    distributed.wait_for_all()
    return entry, rows


def prepare(suite: Suite, run_dir: Path, quiet: bool, force: bool, log) -> RunContext:
    """The data stage: pre-flight (every check that needs no computing), then every video decoded once into
    the frame cache; an unreadable one refuses its split unless a partial gallery is allowed."""
    prepared = preflight(suite, run_dir, quiet)
    protocol, partial, timeout = suite.protocol, suite.benchmark.allow_partial_gallery, suite.benchmark.decode_timeout
    size = protocol.image_size or prepared.backbone.image_size
    cache_dir = Path(suite.cache_dir).expanduser()
    store = FrameStore(cache_dir, protocol.frames, protocol.sampling, size, quiet, timeout=timeout)
    try:
        with timed(prepared.seconds, "decoding"):
            prepared.test_splits = [decode_split(store, s, partial) for s in prepared.test_splits]
            prepared.train_split, prepared.validation = (decode_split(store, s, partial) if s is not None else None
                                                         for s in (prepared.train_split, prepared.validation))
    except HarnessError as error:
        raise HarnessError(f"{suite.source}: benchmark ({suite.benchmark.name}): {error}") from None
    train_policy = protocol.train_sampling or protocol.sampling
    train_store = store if train_policy == protocol.sampling else (
        None if train_policy == "rand" else FrameStore(cache_dir, protocol.frames, train_policy, size, quiet,
                                                       timeout=timeout))
    return RunContext(suite, prepared, store, train_store, train_policy, run_dir, FeatureCache(cache_dir), quiet, force,
                      log)


def open_results(suite: Suite, prepared: Prepared, size: int, train_policy: str, stored: dict | None, run_dir: Path,
                 force: bool, log, device_type: str | None = None) -> tuple[dict, dict[str, str], list[str]]:
    """The results this run writes: a new skeleton carrying the stored run's methods and rows, each method's
    fingerprint, and the suite's methods kept from the stored run (a differing stored run is refused)."""
    results = new_results(suite, prepared, size, train_policy, device_type)
    fingerprints = {spec.name: method_fingerprint(spec, results["fingerprint"], spec.trains(prepared.methods[spec.name]),
                                                  method_code(prepared.methods[spec.name])["digest"])
                    for spec in suite.methods}
    kept = reusable_methods(stored, results, fingerprints, suite, run_dir, prepared.videos, force, log)
    if stored is not None and stored["methods"]:  # every stored method stays (one the suite no longer lists too)
        # each earlier invocation stays recorded with the run it started (a resume may select other methods)
        results["resumes"] = stored.get("resumes", []) + [{"started": stored.get("started"), "kept": kept,
                                                           "forced": force,
                                                           "invocation": stored.get("invocation", {})}]
        results["methods"], results["rows"] = dict(stored["methods"]), list(stored["rows"])
        if "executor" in stored:
            results["executor"] = stored["executor"]
    if distributed.is_main():
        atomic_write(run_dir / "suite.yaml", yaml.safe_dump(suite.to_dict(), sort_keys=False), "suite")
        atomic_write(run_dir / VIDEOS_FILE, json.dumps(prepared.videos, indent=1, sort_keys=True) + "\n", "video record")
    return results, fingerprints, kept


def prepare_results(suite: Suite, run_dir: Path, quiet: bool, force: bool, log, device_type: str
                    ) -> tuple[dict, list[str]]:
    """For a submitter (harness/pipeline/executor.py): the pre-flight only (the jobs decode and compute), then the
    results its jobs are merged into and the methods kept from a stored run."""
    stored = stored_results(run_dir)
    refuse_a_differing_run(stored, suite, run_dir, force)
    prepared = preflight(suite, run_dir, quiet)
    size = suite.protocol.image_size or prepared.backbone.image_size
    results, _, kept = open_results(suite, prepared, size, suite.protocol.train_sampling or suite.protocol.sampling,
                                    stored, run_dir, force, log, device_type)
    return results, kept


def run_methods(ctx: RunContext, specs: list[MethodSpec], fingerprints: dict[str, str]
                ) -> Iterator[tuple[str, dict, list[dict]]]:
    """(name, entry, rows) of each method run: one after the other here, or in the suite's `jobs` worker
    processes on the CPU (harness/pipeline/jobs.py; not in a process group, where the ranks share each method)."""
    jobs = parallel_jobs(ctx)
    if jobs > 1 and len(specs) > 1:
        yield from in_workers(prepare, run_method, ctx.suite, ctx.run_dir, ctx.force, specs, fingerprints, jobs, ctx.log)
        return
    for spec in specs:
        ctx.log(f"{spec.name}:")
        yield (spec.name, *run_method(ctx, spec, fingerprints[spec.name]))


def parallel_jobs(ctx: RunContext) -> int:
    """How many methods run at once: the suite's `jobs` on the CPU, outside a process group; else one."""
    return ctx.suite.jobs if ctx.prepared.device.type == "cpu" and not distributed.active() else 1


def in_suite_order(results: dict, suite: Suite) -> None:
    """The methods and rows of `results` in the suite's method order (stored methods the suite no longer lists
    after them), whatever order the methods finished in."""
    order = {spec.name: i for i, spec in enumerate(suite.methods)}

    def position(name: str) -> int:
        return order.get(name, len(order))

    results["methods"] = dict(sorted(results["methods"].items(), key=lambda item: position(item[0])))
    results["rows"] = sorted(results["rows"], key=lambda row: position(row["method"]))


def run_suite(suite: Suite, output: Path | None = None, quiet: bool = False, log=print, force: bool = False,
              invocation: dict | None = None) -> dict:
    """Run every method of the suite into `output` (default: a new runs/<suite>/<time> folder); when `output`
    holds a previous run's results, continue it. `invocation` (command-line selections and overrides) is
    recorded in results.json."""
    clock = time.perf_counter()
    # in a process group: rank 0's directory, lock and files; the other ranks train beside it
    run_dir = distributed.broadcast(Path(output) if output else new_run_dir(Path("runs"), suite.name))
    with RunLock(run_dir) if distributed.is_main() else contextlib.nullcontext():
        stored = stored_results(run_dir)
        refuse_a_differing_run(stored, suite, run_dir, force)
        finished: list[str] = []
        try:
            with distributed.main_first():  # rank 0 decodes into the frame cache; the others find it there
                ctx = prepare(suite, run_dir, quiet, force, log)
            results, fingerprints, kept = open_results(suite, ctx.prepared, ctx.store.size, ctx.train_policy, stored,
                                                       run_dir, force, log)
            results["invocation"] = invocation or {}
            results["seconds"] = dict(ctx.prepared.seconds)  # the preparation's profile: benchmark, backbone, decoding
            if parallel_jobs(ctx) > 1:  # the methods' numbers are those of one torch thread, in worker processes
                results["environment"].update(torch_threads=1, jobs=parallel_jobs(ctx))
            finished = list(kept)
            for name in kept:
                log(f"{name}: kept (finished earlier in {run_dir}, same fingerprint)")
            for name, entry, rows in run_methods(ctx, [spec for spec in suite.methods if spec.name not in kept],
                                                 fingerprints):
                results["methods"][name] = entry
                results["rows"] = [r for r in results["rows"] if r["method"] != name] + rows
                results["wall_seconds"] = round(time.perf_counter() - clock, 1)
                in_suite_order(results, suite)
                if distributed.is_main():
                    write_results(run_dir, results)  # after every method: finished work is never lost
                finished.append(name)
        except (KeyboardInterrupt, Stopped) as stop:
            unfinished = [m.name for m in suite.methods if m.name not in finished]
            # before the first results (pre-training a backbone, decoding) there is no run to resume: the same command
            resumable = (run_dir / "results.json").is_file()
            raise Interrupted(f"interrupted: kept {len(finished)} finished method(s) ({', '.join(finished) or 'none'}) "
                              f"in {run_dir}; not finished: {', '.join(unfinished)}", signal_number(stop),
                              run_dir if resumable else None) from None
    results["run_dir"] = str(run_dir)
    log(table(results["rows"]))
    log(profile(results))
    log(f"results: {run_dir / 'results.json'} ({results.get('wall_seconds', 0.0)} s)")
    return results


def profile(results: dict) -> str:
    """Where the run's time went: the preparation's stages and each method's (what this run computed)."""
    def stages(seconds: dict) -> str:
        return ", ".join(f"{stage} {value:.1f} s" for stage, value in seconds.items())

    methods = [f"{name} ({stages(entry['seconds'])})" for name, entry in results["methods"].items()
               if entry.get("seconds")]
    return f"time: {stages(results.get('seconds', {})) or 'nothing prepared'}; " + ("; ".join(methods) or "no method run")
