"""Where the harness's child processes come from (the method workers, the synthetic benchmark's generator, the
gallery-cost measurements): forked from a server process that imported the engine once (multiprocessing's
forkserver) where the platform has one, else spawned.

A spawned child imports torch and open_clip again, seconds before it does anything; a child forked from the harness
itself could hang in its first multi-threaded OpenMP operation once the parent ran one. The server imports and
never computes, so its children start at once and safely."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing import forkserver

PRELOAD = ["harness.pipeline.run"]  # the engine: every module a child runs is imported by it
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def context() -> multiprocessing.context.BaseContext:
    """The context to make child processes with: the server starts with the first child unless start_server ran."""
    if START_METHOD == "forkserver":
        forkserver.set_forkserver_preload(PRELOAD)
    return multiprocessing.get_context(START_METHOD)


def start_server() -> None:
    """Start the server now, before this process imports torch itself: `harness run` calls this first thing, so
    that the server's imports run beside its own. Not in a torchrun world, where every rank
    would start one for nothing (its ranks share each method)."""
    if START_METHOD == "forkserver" and os.environ.get("WORLD_SIZE", "1") == "1":
        forkserver.set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()
