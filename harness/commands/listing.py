"""`harness list`: the methods and benchmarks available, built-in and plugins (broken ones with their error)."""

from __future__ import annotations

import argparse


def _list(args: argparse.Namespace) -> None:
    from harness import registry

    for title, entries in (("methods", registry.methods()), ("benchmarks", registry.benchmarks())):
        print(f"{title}:")
        print("\n".join(registry.listing(entries)))


def add(commands) -> None:
    listing = commands.add_parser("list", help="methods and benchmarks available (built-in and plugins)")
    listing.set_defaults(handler=_list)
