"""The `harness` command: the parser, assembled from one module per subcommand (each registers its own parser
and handler: parse, call the engine, print), and the entry point."""

from __future__ import annotations

import argparse
import signal
import sys

from harness.commands import (cache, check_method, claims, cost, data_check, gate, import_checkpoint, listing,
                              new_method, report, run)
from harness.errors import HarnessError

SUBCOMMANDS = (run, import_checkpoint, cost, claims, data_check, report, gate, cache, listing, new_method, check_method)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="harness", description="Text-video retrieval benchmark harness.")
    commands = main.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.add(commands)
    return main


def _rank_label() -> str:
    # imported when an error is printed: harness.distributed imports torch, which `harness run` wants to import
    # only after it started its workers' server (harness/processes.py), and `harness --help` never
    from harness.distributed import rank_label as label

    return label()


def main(argv: list[str] | None = None) -> int:
    from harness.interrupt import Stopped, signal_number, stop_on_sigterm

    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with stop_on_sigterm():
            return args.handler(args) or 0
    except HarnessError as error:
        print(f"{_rank_label()}error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Stopped) as stop:  # outside a run: nothing partial was written (atomic writes)
        number = signal_number(stop)
        print(f"{_rank_label()}interrupted ({signal.Signals(number).name}): stopped; every file written so far is complete.",
              file=sys.stderr)
        return 128 + number


if __name__ == "__main__":
    sys.exit(main())
