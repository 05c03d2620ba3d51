"""`harness list`: the methods and benchmarks available, built-in and plugins (broken ones with their error);
with --suite-keys, the reference of every suite key (the table docs/plugins.md holds)."""

from __future__ import annotations

import argparse


def _list(args: argparse.Namespace) -> None:
    if args.suite_keys:
        from harness.suite_reference import key_reference

        print(key_reference(), end="")
        return
    from harness import registry

    for title, entries in (("methods", registry.methods()), ("benchmarks", registry.benchmarks())):
        print(f"{title}:")
        print("\n".join(registry.listing(entries)))


def add(commands) -> None:
    listing = commands.add_parser("list", help="methods and benchmarks available (built-in and plugins)")
    listing.add_argument("--suite-keys", action="store_true", help="print the reference of every suite key (type, "
                                                                   "default, allowed range, meaning) as Markdown")
    listing.set_defaults(handler=_list)
