"""`harness cache info` and `harness cache clear`: what the cache folder holds, by kind, and clearing it."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import HarnessError


def _cache_folder(args: argparse.Namespace) -> Path:
    from harness.storage.cachedir import default_cache_dir

    return Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()


def _cache_info(args: argparse.Namespace) -> None:
    from harness.storage.cachedir import entries, info_table

    folder = _cache_folder(args)
    print(info_table(folder, entries(folder)))


def _cache_clear(args: argparse.Namespace) -> None:
    from harness.storage.cachedir import entries, mark_cache, remove, removal_report, select

    if args.kind is None and args.older_than is None and not args.all:
        raise HarnessError("harness cache clear: give --kind KIND, --older-than DAYS, or --all to clear every kind "
                           "(see `harness cache info` for what is there).")
    folder = _cache_folder(args)
    found = entries(folder)
    if found:
        mark_cache(folder)  # a harness cache: still recognised as one once emptied
    removed, failed = remove(folder, select(found, args.kind, args.older_than))
    print(removal_report(folder, removed))
    if failed:
        raise HarnessError(f"{len(failed)} cache entries could not be removed: " + "; ".join(failed))


def add(commands) -> None:
    from harness.storage.cachedir import KINDS

    cache = commands.add_parser("cache", help="what the cache folder holds (frames, features, backbones, synthetic "
                                              "benchmarks) and clearing it")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    folder_help = "the cache folder (default: $HARNESS_CACHE, else ~/.cache/tvr-harness, as in the suites)"
    info = cache_commands.add_parser("info", help="entries and size per kind and in total")
    info.add_argument("--cache-dir", help=folder_help)
    info.set_defaults(handler=_cache_info)
    clear = cache_commands.add_parser("clear", help="remove cache entries by kind and age and print what was removed; "
                                                    "not while a run uses the cache")
    clear.add_argument("--cache-dir", help=folder_help)
    clear.add_argument("--kind", choices=KINDS, help="only this kind (default: every kind but other; other is what "
                                                     "the harness did not write, removed only when named)")
    clear.add_argument("--older-than", type=float, metavar="DAYS", help="only entries last written more than DAYS "
                                                                        "days ago")
    clear.add_argument("--all", action="store_true", help="clear every kind but other, whatever its age: needed when "
                                                          "neither --kind nor --older-than is given")
    clear.set_defaults(handler=_cache_clear)
