"""`harness data check`: every annotation file of a suite read, every video found and decoded, the coverage per
split and the offending ids."""

from __future__ import annotations

import argparse
from pathlib import Path


def _data_check(args: argparse.Namespace) -> int:
    from harness.data.coverage import check_data, coverage_table, problems, write_report
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


def add(commands) -> None:
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
