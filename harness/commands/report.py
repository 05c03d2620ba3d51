"""`harness report`: HTML, LaTeX and Markdown leaderboards from saved runs (nothing is recomputed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import HarnessError


def _report(args: argparse.Namespace) -> None:
    import json

    from harness.report.leaderboard import build_leaderboards, load_run
    from harness.report.render import FORMATS, write_report

    if args.table is not None:
        return _table(args)
    if not args.runs:
        raise HarnessError("harness report: give at least one run directory (or --table glscl-table1, which "
                           "needs none).")
    formats = [f.strip() for f in (args.format or ",".join(FORMATS)).split(",") if f.strip()]
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


def _table(args: argparse.Namespace) -> None:
    """A published table regenerated: its figures, the harness's counted and measured cost, and the runs'."""
    from harness.commands.claims import cost_source, named_figures
    from harness.report.claims import provenance
    from harness.report.leaderboard import load_run
    from harness.report.reported import backbone_name, read_reported
    from harness.report.table1 import FORMATS, check_formats, check_table, table1_context, table1_rows, write_table1

    check_table(args.table)  # both checked before any counting, which takes minutes without --cost
    formats = check_formats([f.strip() for f in (args.format or ",".join(FORMATS)).split(",") if f.strip()])
    runs = [load_run(path) for path in args.runs]
    if args.output is None and not runs:
        raise HarnessError(f"--table {args.table}: give --output DIR (there is no run directory to write into).")
    output = Path(args.output) if args.output else runs[0].folder / "report"
    record = cost_source(args.cost, args.suite, not args.no_timing)
    backbone = backbone_name(record["protocol"].get("arch", ""))
    rows = table1_rows(read_reported(), named_figures(record), backbone, runs)
    for path in write_table1(table1_context(rows, provenance(record), backbone, runs), formats, output):
        print(f"wrote {path}")


def add(commands) -> None:
    report = commands.add_parser("report", help="HTML, LaTeX and Markdown leaderboards from saved runs (nothing is "
                                                "recomputed)")
    report.add_argument("runs", nargs="*", help="run directories (or their results.json); optional with --table")
    report.add_argument("--format", help="comma-separated: html, tex, md (default: all; with --table: tex, md)")
    report.add_argument("--output", help="report folder (default: <first run>/report)")
    report.add_argument("--reference", default="clip4clip-meanp",
                        help="method the paired test and the time ratio compare against (default: clip4clip-meanp)")
    report.add_argument("--compare", help="two methods for the per-query view, e.g. glscl,clip4clip-meanp "
                                          "(default: the best R@1 against the reference)")
    report.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    report.add_argument("--cost", metavar="COST_JSON", help="a `harness cost --gallery ... --output` file: adds the "
                                                            "measured online cost at scale (table and plot); with "
                                                            "--table, any `harness cost --output` file: the counted "
                                                            "and measured cost columns")
    report.add_argument("--table", metavar="NAME", help="regenerate a published table instead: glscl-table1 (GLSCL's "
                                                        "Table I with counted and measured head cost)")
    report.add_argument("--suite", default="suites/msrvtt.yaml",
                        help="with --table and no --cost: the suite whose shapes are counted, with random weights "
                             "(default suites/msrvtt.yaml)")
    report.add_argument("--no-timing", action="store_true", help="with --table and no --cost: count only")
    report.set_defaults(handler=_report)
