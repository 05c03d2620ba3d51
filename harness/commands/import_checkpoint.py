"""`harness import-checkpoint`: a checkpoint saved by a method's official code converted through its strict key
map into the harness's state dict."""

from __future__ import annotations

import argparse


def _import_checkpoint(args: argparse.Namespace) -> None:
    from harness.pipeline.checkpoints import import_checkpoint
    from harness.suite import load_suite

    suite = load_suite(args.suite)
    if args.cache_dir:
        suite.cache_dir = args.cache_dir
    count = import_checkpoint(suite, args.method, args.checkpoint, args.output, quiet=args.quiet)
    print(f"imported {args.checkpoint} into {args.method}: {count} tensors written to {args.output}")
    print(f"evaluate it with, in the suite's methods: {{name: {args.method}, checkpoint: {args.output}, "
          "checkpoint_format: harness}")


def add(commands) -> None:
    convert = commands.add_parser("import-checkpoint",
                                  help="convert a checkpoint saved by a method's official code into the harness's module")
    convert.add_argument("checkpoint", help="the official checkpoint file")
    convert.add_argument("--method", required=True, help="registered method name, e.g. xpool")
    convert.add_argument("--suite", required=True, help="suite whose backbone and protocol the method uses")
    convert.add_argument("--output", required=True, help="where to write the harness state dict")
    convert.add_argument("--cache-dir", help="override the suite's cache_dir")
    convert.add_argument("--quiet", action="store_true")
    convert.set_defaults(handler=_import_checkpoint)
