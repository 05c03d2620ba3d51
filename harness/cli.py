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


def _list(args: argparse.Namespace) -> None:
    from harness import registry

    for title, entries in (("methods", registry.methods()), ("benchmarks", registry.benchmarks())):
        print(f"{title}:")
        for name in sorted(entries):
            where, summary = registry.describe(entries[name])
            print(f"  {name:<22} {summary}  [{where}]")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="harness", description="Text-video retrieval benchmark harness.")
    commands = main.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate every method of a suite, save results")
    run.add_argument("suite", help="suite YAML file, e.g. suites/synthetic.yaml")
    run.add_argument("--output", help="run directory (default: runs/<suite>/<run-id>)")
    run.add_argument("--cache-dir", help="override the suite's cache_dir (generated data, frames, backbones)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)
    listing = commands.add_parser("list", help="methods and benchmarks available (built-in and plugins)")
    listing.set_defaults(handler=_list)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.handler(args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
