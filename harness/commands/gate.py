"""`harness check`: the regression gate, a run's rows against a stored baseline or the published numbers."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import HarnessError


def _check(args: argparse.Namespace) -> int:
    from harness.report import gate as check
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
              "scored on the CPU moves with the thread count and the CPU kernels, so a move may come from that, "
              "not from the code; compare runs made alike, or write a baseline on this machine from the "
              "unchanged code first.")
    if check.failed(lines):
        print("check FAILED")
        return 1
    print("check passed")
    return 0


def add(commands) -> None:
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
