"""The `harness` command: thin subcommands that parse, call one function, and print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import HarnessError


def _run(args: argparse.Namespace) -> None:
    from harness.run import run_suite
    from harness.suite import load_suite

    suite = load_suite(args.suite)
    if args.cache_dir:
        suite.cache_dir = args.cache_dir
    run_suite(suite, Path(args.output) if args.output else None, quiet=args.quiet)


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

    from harness.cost.report import cost_table, suite_cost
    from harness.results import atomic_write
    from harness.run import select_device
    from harness.suite import load_suite

    suite = load_suite(args.suite)
    cost = suite_cost(suite, select_device(suite.device), timing=not args.no_timing,
                      log=(lambda *_: None) if args.quiet else print)
    print(cost_table(cost))
    if args.output:
        atomic_write(Path(args.output), json.dumps(cost, indent=2) + "\n")
        print(f"cost: {args.output}")


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
    for path in write_report(boards, runs, formats, output):
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
    if args.against == "reported":
        tolerances = check.parse_tolerances(args.tolerance, check.REPORTED_TOLERANCES)
        lines = check.compare_with_reported(run, tolerances, Path(args.reported) if args.reported else None)
    else:
        tolerances = check.parse_tolerances(args.tolerance, check.BASELINE_TOLERANCES)
        lines = check.compare_with_baseline(run, Path(args.against), tolerances)
    print(check.summary(lines))
    if check.failed(lines):
        print("check FAILED")
        return 1
    print("check passed")
    return 0


def _new_method(args: argparse.Namespace) -> None:
    from harness.scaffold import new_method

    folder = Path(args.dir or args.name)
    for path in new_method(args.name, folder):
        print(f"wrote {path}")
    print(f"next: pip install -e {folder} && harness check-method {args.name} && harness run {folder / 'suite.yaml'}")


def _check_method(args: argparse.Namespace) -> int:
    from harness.conformance import check_registered, failures
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
    main = argparse.ArgumentParser(prog="harness", description="Text-video retrieval benchmark harness.")
    commands = main.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate every method of a suite, save results")
    run.add_argument("suite", help="suite YAML file, e.g. suites/synthetic.yaml")
    run.add_argument("--output", help="run directory (default: runs/<suite>/<run-id>)")
    run.add_argument("--cache-dir", help="override the suite's cache_dir (generated data, frames, backbones)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)
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
    args = parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
