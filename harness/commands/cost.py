"""`harness cost`: the MACs per stage and the wall-clock time of every method of a suite, without data or training;
with --gallery, the online cost measured against galleries of 10^4..10^6 stored videos."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import HarnessError
from harness.commands.run import method_selection


def _cost(args: argparse.Namespace) -> None:
    import json

    from harness.cost.suite import cost_table, suite_cost, unfinished_record
    from harness.cost.scale import parse_galleries, scale_table
    from harness.storage.files import atomic_write
    from harness.pipeline.preflight import select_device
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


def add(commands) -> None:
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
