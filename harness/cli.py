"""The `harness` command: thin subcommands that parse, call one function, and print."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from harness.errors import HarnessError


def method_selection(given: str | None) -> list[str] | None:
    """--methods a,b: the names given (None without the option); an option that names none is an error, never
    the whole suite."""
    if given is None:
        return None
    names = [name.strip() for name in given.split(",") if name.strip()]
    if not names:
        raise HarnessError(f"--methods {given!r}: names no method; give a comma-separated list such as glscl,xpool "
                           "(leave the option out to run every method of the suite).")
    return names


def _load_suite(args: argparse.Namespace, checkpoints: dict[str, tuple[str, str]] | None = None):
    """The suite with the command line's --set overrides, --methods selection, --checkpoint entries and
    --cache-dir applied."""
    from harness.suite import load_suite

    overrides = list(args.set) + ([f"benchmark.limit={args.limit}"] if getattr(args, "limit", None) is not None else [])
    methods = method_selection(args.methods)
    for name, (path, checkpoint_format) in (checkpoints or {}).items():
        overrides += [f"methods.{name}.checkpoint={path}", f"methods.{name}.checkpoint_format={checkpoint_format}"]
    suite = load_suite(args.suite, overrides, methods)
    if args.cache_dir:
        suite.cache_dir = args.cache_dir
    return suite, {"overrides": overrides, "methods": methods}


def _execute(args: argparse.Namespace, suite, invocation: dict) -> int:
    """Run (or, with --dry-run, describe) the suite into --resume / --output; a signal ends it with the
    command that continues."""
    from harness.interrupt import Interrupted
    from harness.run import run_suite

    if args.resume and args.output and Path(args.resume) != Path(args.output):
        raise HarnessError(f"--resume {args.resume} and --output {args.output}: give one run directory.")
    if args.resume and not (Path(args.resume) / "results.json").is_file():
        raise HarnessError(f"--resume {args.resume}: no results.json there; nothing to continue (give the run "
                           "directory a previous `harness run` printed).")
    run_dir = Path(args.resume or args.output) if (args.resume or args.output) else None
    if args.dry_run:
        from harness.plan import dry_run

        print(dry_run(suite, run_dir))
        return 0
    from harness import distributed

    # in a process group only rank 0 reports (the tables, the run directory); progress lines name their rank
    log = print if distributed.is_main() else (lambda *_: None)
    try:
        if getattr(args, "executor", None):
            from harness.executor import ExecutorSpec, submit_suite
            from harness.results import new_run_dir

            spec = ExecutorSpec(args.executor, args.slurm_partition, args.gpus_per_node, args.nodes, args.time)
            submit_suite(suite, run_dir or new_run_dir(Path("runs"), suite.name), spec, args.quiet, args.force, log,
                         invocation=invocation)
        else:
            run_suite(suite, run_dir, quiet=args.quiet, force=args.force, invocation=invocation, log=log)
    except Interrupted as stop:
        command = ["harness", args.command, args.suite, "--resume", str(stop.run_dir)]
        for option, values in (("--set", args.set), ("--checkpoint", getattr(args, "checkpoint", []))):
            for value in values:
                command += [option, value]
        command += ["--methods", args.methods] if args.methods else []
        command += ["--limit", str(args.limit)] if args.limit is not None else []
        command += ["--cache-dir", args.cache_dir] if args.cache_dir else []
        command += ["--quiet"] if args.quiet else []
        if getattr(args, "executor", None):
            command += ["--executor", args.executor, "--gpus-per-node", str(args.gpus_per_node), "--nodes",
                        str(args.nodes), "--time", str(args.time)]
            command += ["--slurm-partition", args.slurm_partition] if args.slurm_partition else []
        print(f"{stop.message}; continue with: {shlex.join(command)}", file=sys.stderr)
        return stop.exit_code
    return 0


def _launch(argv: list[str], processes: int) -> int:
    """The same command on `processes` local processes under torchrun's elastic agent (standalone
    rendezvous on this machine); the first failed rank's exit code, else 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if processes < 1:
        raise HarnessError(f"--nproc {processes}: give the number of processes, at least 1.")
    config = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", "harness", *argv])
    try:
        run(config)
    except ChildFailedError as failed:
        return next(iter(failed.failures.values())).exitcode or 1
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for item in argv:
        if skip or item.startswith("--nproc="):
            skip = False
            continue
        skip = item == "--nproc"
        if not skip:
            kept.append(item)
    return kept


def _run(args: argparse.Namespace) -> int:
    from harness import distributed

    if args.nproc is not None and not distributed.launched():
        return _launch(_without_nproc(args.argv), args.nproc)
    with distributed.process_group():
        suite, invocation = _load_suite(args)
        return _execute(args, suite, {"command": "run", **invocation})


def _eval(args: argparse.Namespace) -> int:
    from harness import distributed

    if args.nproc is not None and not distributed.launched():
        return _launch(_without_nproc(args.argv), args.nproc)
    with distributed.process_group():
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from harness import registry

    checkpoints = {}
    for item in args.checkpoint:
        name, sep, target = item.partition("=")
        path, _, checkpoint_format = target.rpartition(":") if target.endswith((":official", ":harness")) else (
            target, "", "harness")
        if not sep or not name or not path:
            raise HarnessError(f"--checkpoint {item!r}: expected NAME=PATH or NAME=PATH:official|harness.")
        checkpoints[name] = (path, checkpoint_format)
    if checkpoints and not args.methods:
        args.methods = ",".join(checkpoints)
    suite, invocation = _load_suite(args, checkpoints)
    untrained = [m.name for m in suite.methods if m.trains(registry.methods()[m.name])]
    if untrained:
        raise HarnessError(f"harness eval: {', '.join(untrained)} would need training; give each a checkpoint "
                           f"(--checkpoint {untrained[0]}=RUN_DIR/checkpoints/{untrained[0]}.pt), or select the "
                           "methods to evaluate with --methods.")
    return _execute(args, suite, {"command": "eval", "checkpoints": args.checkpoint, **invocation})


def _import_checkpoint(args: argparse.Namespace) -> None:
    from harness.checkpoints import import_checkpoint
    from harness.suite import load_suite

    suite = load_suite(args.suite)
    if args.cache_dir:
        suite.cache_dir = args.cache_dir
    count = import_checkpoint(suite, args.method, args.checkpoint, args.output, quiet=args.quiet)
    print(f"imported {args.checkpoint} into {args.method}: {count} tensors written to {args.output}")
    print(f"evaluate it with, in the suite's methods: {{name: {args.method}, checkpoint: {args.output}, "
          "checkpoint_format: harness}")


def _cost(args: argparse.Namespace) -> None:
    import json

    from harness.cost.report import cost_table, suite_cost, unfinished_record
    from harness.cost.scale import parse_galleries, scale_table
    from harness.files import atomic_write
    from harness.preflight import select_device
    from harness.suite import load_suite

    suite = load_suite(args.suite, methods=method_selection(args.methods))
    galleries = parse_galleries(args.gallery) if args.gallery else []
    scratch = Path(args.scratch) if args.scratch else None
    if scratch is not None and not scratch.is_dir():
        raise HarnessError(f"--scratch {scratch}: not a directory (create it, or give another).")
    output = Path(args.output) if args.output else None
    earlier = unfinished_record(output) if output is not None else None

    def write(record: dict) -> None:  # after every method, so that an interrupted measurement keeps what it did
        atomic_write(output, json.dumps(record, indent=2) + "\n", "cost record")

    cost = suite_cost(suite, select_device(suite.device), timing=not args.no_timing,
                      log=(lambda *_: None) if args.quiet else print, galleries=galleries, time_limit=args.time_limit,
                      scratch=scratch, earlier=earlier, on_method=write if output is not None else None)
    print(cost_table(cost))
    if galleries:
        print(scale_table(cost["methods"]))
    if output is not None:
        write(cost)
        print(f"cost: {output}")


def _data_check(args: argparse.Namespace) -> int:
    from harness.data.check import check_data, coverage_table, problems, write_report
    from harness.suite import load_suite

    suite = load_suite(args.suite)
    if args.cache_dir:
        suite.cache_dir = args.cache_dir
    report = check_data(suite, args.workers, args.quiet)
    print(coverage_table(report))
    for name, digest in report["annotations"].items():
        print(f"  {name}  {digest}")
    summary, offending = write_report(report, Path(args.output or Path("runs") / suite.name / "data-check"))
    count = problems(report)
    if count:
        print(f"{count} video(s) missing or unreadable: ids in {offending}")
    print(f"report: {summary}")
    return 1 if count else 0


def _report(args: argparse.Namespace) -> None:
    import json

    from harness.report.leaderboard import build_leaderboards, load_run
    from harness.report.render import FORMATS, write_report

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise HarnessError(f"--format {args.format!r}: choose from {', '.join(FORMATS)} (comma-separated).")
    compare = tuple(args.compare.split(",")) if args.compare else None
    if compare is not None and len(compare) != 2:
        raise HarnessError(f"--compare {args.compare!r}: give two method names, e.g. glscl,clip4clip-meanp.")
    runs = [load_run(path) for path in args.runs]
    boards = build_leaderboards(runs, args.reference, compare, resamples=args.resamples)
    output = Path(args.output) if args.output else runs[0].folder / "report"
    cost = None
    if args.cost:
        try:
            cost = json.loads(Path(args.cost).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise HarnessError(f"--cost {args.cost}: cannot be read as a `harness cost --output` file ({error}).") from None
        if not isinstance(cost, dict) or not isinstance(cost.get("methods"), dict):
            raise HarnessError(f"--cost {args.cost}: not a `harness cost --output` file (no methods).")
    for path in write_report(boards, runs, formats, output, cost):
        print(f"wrote {path}")


def _check(args: argparse.Namespace) -> int:
    from harness import check
    from harness.report.leaderboard import load_run

    run = load_run(args.results)
    if args.write_baseline:
        path = check.write_baseline(run, Path(args.write_baseline))
        print(f"baseline written: {path} ({len(run.results['rows'])} rows)")
        return 0
    if args.against is None:
        raise HarnessError("harness check: give --against BASELINE.json (or 'reported'), or --write-baseline PATH.")
    changes = []
    if args.against == "reported":
        tolerances = check.parse_tolerances(args.tolerance, check.REPORTED_TOLERANCES)
        lines = check.compare_with_reported(run, tolerances, Path(args.reported) if args.reported else None)
    else:
        tolerances = check.parse_tolerances(args.tolerance, check.BASELINE_TOLERANCES)
        baseline = check.read_baseline(Path(args.against))
        lines = check.compare_with_baseline(run, baseline, tolerances)
        changes = check.environment_changes(run, baseline)
    print(check.summary(lines))
    if changes:
        print(f"the baseline was written under another environment ({'; '.join(changes)}): what is trained or "
              "scored on the CPU moves with the thread count and vector kernels, so a move may come from that, "
              "not from the code; compare runs made alike, or write a baseline on this machine from the "
              "unchanged code first.")
    if check.failed(lines):
        print("check FAILED")
        return 1
    print("check passed")
    return 0


def _cache_folder(args: argparse.Namespace) -> Path:
    from harness.cachedir import default_cache_dir

    return Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()


def _cache_info(args: argparse.Namespace) -> None:
    from harness.cachedir import entries, info_table

    folder = _cache_folder(args)
    print(info_table(folder, entries(folder)))


def _cache_clear(args: argparse.Namespace) -> None:
    from harness.cachedir import entries, mark_cache, remove, removal_report, select

    if args.kind is None and args.older_than is None and not args.all:
        raise HarnessError("harness cache clear: give --kind KIND, --older-than DAYS, or --all to clear every kind "
                           "(see `harness cache info` for what is there).")
    folder = _cache_folder(args)
    found = entries(folder)
    if found:
        mark_cache(folder)  # a harness cache: still recognised as one once emptied
    removed, failed = remove(folder, select(found, args.kind, args.older_than))
    print(removal_report(folder, removed))
    if failed:
        raise HarnessError(f"{len(failed)} cache entries could not be removed: " + "; ".join(failed))


def _new_method(args: argparse.Namespace) -> None:
    from harness.scaffold import new_method

    folder = Path(args.dir or args.name)
    for path in new_method(args.name, folder):
        print(f"wrote {path}")
    print(f"next: pip install -e {folder} && harness check-method {args.name} && harness run {folder / 'suite.yaml'}")


def _check_method(args: argparse.Namespace) -> int:
    from harness.api.conformance import check_registered, failures
    from harness.suite import load_suite

    findings = check_registered(args.name, load_suite(args.suite) if args.suite else None)
    for finding in findings:
        print(finding)
    broken = failures(findings)
    print(f"{args.name}: {len(findings) - len(broken)} checks passed, {len(broken)} failed")
    return 1 if broken else 0


def _list(args: argparse.Namespace) -> None:
    from harness import registry

    for title, entries in (("methods", registry.methods()), ("benchmarks", registry.benchmarks())):
        print(f"{title}:")
        print("\n".join(registry.listing(entries)))


def parser() -> argparse.ArgumentParser:
    from harness.cachedir import KINDS

    main = argparse.ArgumentParser(prog="harness", description="Text-video retrieval benchmark harness.")
    commands = main.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate every method of a suite, save results")
    evaluate = commands.add_parser("eval", help="evaluate given checkpoints (no training), save results")
    evaluate.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH[:FORMAT]",
                          help="evaluate method NAME from PATH (FORMAT harness, the default: a run's "
                               "checkpoints/NAME.pt; or official); repeatable. The methods given are those evaluated")
    for command, handler in ((run, _run), (evaluate, _eval)):
        command.add_argument("suite", help="suite YAML file, e.g. suites/synthetic.yaml")
        command.add_argument("--output", help="run directory (default: runs/<suite>/<run-id>); one holding a "
                                              "previous run's results continues it")
        command.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR: methods it finished "
                                                                 "with the same fingerprint are kept, the others run")
        command.add_argument("--force", action="store_true", help="with a run directory produced differently: run "
                                                                  "the differing methods again instead of refusing")
        command.add_argument("--methods", help="comma-separated subset of the suite's methods, e.g. glscl,xpool")
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                             help="override a suite value (dotted key, YAML value): training.epochs=1, "
                                  "methods.glscl.params.alpha=0.2, benchmark.test_splits=[test-1kA]; repeatable")
        command.add_argument("--dry-run", action="store_true", help="print the resolved suite, what would run, what "
                                                                    "is cached or resumable, and the counted cost")
        command.add_argument("--cache-dir", help="override the suite's cache_dir (generated data, frames, backbones)")
        command.add_argument("--limit", type=int, metavar="N", help="a smoke test: the first N videos of each split "
                                                                   "(benchmark.limit); its rows say so and are never "
                                                                   "gated or compared with published numbers")
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        command.set_defaults(handler=handler)
    for command in (run, evaluate):
        command.add_argument("--nproc", type=int, metavar="N", help="train and evaluate on N local processes (one "
                                                                    "per GPU, or CPU processes): starts torchrun's "
                                                                    "agent with this command")
    run.add_argument("--executor", choices=("slurm", "local"), help="one job per method through submitit, on Slurm or "
                                                                    "on this machine; rows merged into one run directory")
    run.add_argument("--slurm-partition", metavar="P", help="with --executor slurm: the partition")
    run.add_argument("--gpus-per-node", type=int, default=0, metavar="G",
                     help="with --executor: GPUs (and processes) per job node; 0 runs on CPU (default)")
    run.add_argument("--nodes", type=int, default=1, metavar="K", help="with --executor: nodes per job (default 1)")
    run.add_argument("--time", type=int, default=24 * 60, metavar="MIN", help="with --executor: job time limit in "
                                                                              "minutes (default 1440)")
    convert = commands.add_parser("import-checkpoint",
                                  help="convert a checkpoint saved by a method's official code into the harness's module")
    convert.add_argument("checkpoint", help="the official checkpoint file")
    convert.add_argument("--method", required=True, help="registered method name, e.g. xpool")
    convert.add_argument("--suite", required=True, help="suite whose backbone and protocol the method uses")
    convert.add_argument("--output", required=True, help="where to write the harness state dict")
    convert.add_argument("--cache-dir", help="override the suite's cache_dir")
    convert.add_argument("--quiet", action="store_true")
    convert.set_defaults(handler=_import_checkpoint)
    cost = commands.add_parser("cost", help="MACs per stage and wall-clock time of every method of a suite (no data "
                                            "or training needed)")
    cost.add_argument("suite", help="suite YAML file")
    cost.add_argument("--output", help="write the cost record (JSON) here")
    cost.add_argument("--no-timing", action="store_true", help="count MACs only")
    cost.add_argument("--gallery", metavar="SIZES", help="also measure one query (and a batch) against stored galleries "
                                                        "of these sizes, e.g. 1e4,1e5,1e6: time and peak memory")
    cost.add_argument("--time-limit", type=float, default=120.0, metavar="S",
                      help="with --gallery: skip a size expected to take longer than S seconds (default 120)")
    cost.add_argument("--scratch", metavar="DIR", help="with --gallery: a gallery too large for memory is written "
                                                       "here and streamed from disk (removed after it is measured)")
    cost.add_argument("--methods", help="comma-separated subset of the suite's methods, e.g. glscl,xpool")
    cost.add_argument("--quiet", action="store_true")
    cost.set_defaults(handler=_cost)
    data = commands.add_parser("data", help="check a suite's data on disk")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser("check", help="read the annotations, find and decode every video, print the "
                                                   "coverage per split; exit 1 if any video is missing or unreadable")
    check.add_argument("suite", help="suite YAML file")
    check.add_argument("--output", help="report folder (default: runs/<suite>/data-check)")
    check.add_argument("--workers", type=int, help="parallel decoders (default: CPU count, at most 8)")
    check.add_argument("--cache-dir", help="override the suite's cache_dir (the frames decoded are cached there)")
    check.add_argument("--quiet", action="store_true", help="no progress bars")
    check.set_defaults(handler=_data_check)
    report = commands.add_parser("report", help="HTML, LaTeX and Markdown leaderboards from saved runs (nothing is "
                                                "recomputed)")
    report.add_argument("runs", nargs="+", help="run directories (or their results.json)")
    report.add_argument("--format", default="html,tex,md", help="comma-separated: html, tex, md (default: all)")
    report.add_argument("--output", help="report folder (default: <first run>/report)")
    report.add_argument("--reference", default="clip4clip-meanp",
                        help="method the paired test and the time ratio compare against (default: clip4clip-meanp)")
    report.add_argument("--compare", help="two methods for the per-query view, e.g. glscl,clip4clip-meanp "
                                          "(default: the best R@1 against the reference)")
    report.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    report.add_argument("--cost", metavar="COST_JSON", help="a `harness cost --gallery ... --output` file: adds the "
                                                            "measured online cost at scale (table and plot)")
    report.set_defaults(handler=_report)
    gate = commands.add_parser("check", help="regression gate: compare a run with a stored baseline or the published "
                                             "numbers; exit 1 if a metric moved beyond its tolerance")
    gate.add_argument("results", help="a run directory or its results.json")
    gate.add_argument("--against", help="a baseline JSON (reports/baselines/<suite>.json), or 'reported'")
    gate.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                      help="override a tolerance, absolute (R1=0.3) or relative (per_pair_macs=1%%); repeatable")
    gate.add_argument("--reported", help="with --against reported: a CSV in reported.csv's format (default: the "
                                         "packaged reports/reported.csv)")
    gate.add_argument("--write-baseline", metavar="PATH", help="write the run's rows as the new baseline and stop")
    gate.set_defaults(handler=_check)
    cache = commands.add_parser("cache", help="what the cache folder holds (frames, features, backbones, synthetic "
                                              "benchmarks) and clearing it")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    folder_help = "the cache folder (default: $HARNESS_CACHE, else ~/.cache/tvr-harness, as in the suites)"
    info = cache_commands.add_parser("info", help="entries and size per kind and in total")
    info.add_argument("--cache-dir", help=folder_help)
    info.set_defaults(handler=_cache_info)
    clear = cache_commands.add_parser("clear", help="remove cache entries by kind and age and print what was removed; "
                                                    "not while a run uses the cache")
    clear.add_argument("--cache-dir", help=folder_help)
    clear.add_argument("--kind", choices=KINDS, help="only this kind (default: every kind but other; other is what "
                                                     "the harness did not write, removed only when named)")
    clear.add_argument("--older-than", type=float, metavar="DAYS", help="only entries last written more than DAYS "
                                                                        "days ago")
    clear.add_argument("--all", action="store_true", help="clear every kind but other, whatever its age: needed when "
                                                          "neither --kind nor --older-than is given")
    clear.set_defaults(handler=_cache_clear)
    listing = commands.add_parser("list", help="methods and benchmarks available (built-in and plugins)")
    listing.set_defaults(handler=_list)
    scaffold = commands.add_parser("new-method", help="write a ready plugin package for a new method (entry point, "
                                                      "method module, example suite, conformance test)")
    scaffold.add_argument("name", help="the method's registered name, e.g. my-method")
    scaffold.add_argument("--dir", help="where to write the package (default: ./NAME)")
    scaffold.set_defaults(handler=_new_method)
    conformance = commands.add_parser("check-method", help="test a registered method against the method contract on "
                                                           "random inputs; exit 1 if a rule fails")
    conformance.add_argument("name", help="registered method name (or distribution:name)")
    conformance.add_argument("--suite", help="take the shapes, backbone architecture (random weights) and params from "
                                             "this suite (default: a small random CLIP, 8 frames, 32 words)")
    conformance.set_defaults(handler=_check_method)
    return main


def main(argv: list[str] | None = None) -> int:
    from harness.distributed import rank_label
    from harness.interrupt import Stopped, signal_number, stop_on_sigterm

    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with stop_on_sigterm():
            return args.handler(args) or 0
    except HarnessError as error:
        print(f"{rank_label()}error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Stopped) as stop:  # outside a run: nothing partial was written (atomic writes)
        number = signal_number(stop)
        print(f"{rank_label()}interrupted ({signal.Signals(number).name}): stopped; every file written so far is complete.",
              file=sys.stderr)
        return 128 + number


if __name__ == "__main__":
    sys.exit(main())
