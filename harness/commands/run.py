"""`harness run` and `harness eval`: a suite's methods trained (or given checkpoints evaluated) into one run
directory; on several local processes through torchrun's agent; through submitit's executors."""

from __future__ import annotations

import argparse
import shlex
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
    from harness.pipeline.run import run_suite

    if args.resume and args.output and Path(args.resume) != Path(args.output):
        raise HarnessError(f"--resume {args.resume} and --output {args.output}: give one run directory.")
    if args.resume and not (Path(args.resume) / "results.json").is_file():
        raise HarnessError(f"--resume {args.resume}: no results.json there; nothing to continue (give the run "
                           "directory a previous `harness run` printed).")
    run_dir = Path(args.resume or args.output) if (args.resume or args.output) else None
    if args.dry_run:
        from harness.pipeline.dry_run import dry_run

        print(dry_run(suite, run_dir))
        return 0
    from harness import distributed

    # in a process group only rank 0 reports (the tables, the run directory); progress lines name their rank
    log = print if distributed.is_main() else (lambda *_: None)
    try:
        if getattr(args, "executor", None):
            from harness.pipeline.executor import ExecutorSpec, submit_suite
            from harness.pipeline.results import new_run_dir

            spec = ExecutorSpec(args.executor, args.slurm_partition, args.gpus_per_node, args.nodes, args.time)
            submit_suite(suite, run_dir or new_run_dir(Path("runs"), suite.name), spec, args.quiet, args.force, log,
                         invocation=invocation)
        else:
            run_suite(suite, run_dir, quiet=args.quiet, force=args.force, invocation=invocation, log=log)
    except Interrupted as stop:
        if stop.run_dir is None:  # stopped before any result was written: the same command starts it again
            print(f"{stop.message}; continue with: {shlex.join(['harness', *args.argv])}", file=sys.stderr)
            return stop.exit_code
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


def _asks_for_workers(args: argparse.Namespace) -> bool:
    """Whether the suite runs its methods in worker processes (`jobs` above 1 in its file or a --set), read from
    the YAML alone: loading the suite imports torch, and the workers' server is worth starting before that.
    Anything this cannot read is left to the suite's loading to report (the server then starts with the pool)."""
    import yaml

    try:
        jobs = yaml.safe_load(Path(args.suite).read_text()).get("jobs", 1)
        for item in args.set:
            key, _, value = item.partition("=")
            jobs = value if key.strip() == "jobs" else jobs
        return int(jobs) > 1
    except Exception:
        return False


def _run(args: argparse.Namespace) -> int:
    if args.nproc is None and not args.dry_run and not getattr(args, "executor", None) and _asks_for_workers(args):
        from harness.processes import start_server

        start_server()  # before this process imports torch: the workers' imports run beside it
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


def add(commands) -> None:
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
