"""Where the harness's child processes come from (the method workers, the synthetic benchmark's generator, the
gallery-cost measurements): forked from a server process that imported the engine once (multiprocessing's
forkserver) where the platform has one, else spawned.

A spawned child imports torch and open_clip again, seconds before it does anything; a child forked from the harness
itself could hang in its first multi-threaded OpenMP operation once the parent ran one. The server imports and
never computes, so its children start at once and safely."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Callable
from multiprocessing import forkserver
from multiprocessing.process import BaseProcess

PRELOAD = ["harness.pipeline.run"]  # the engine: every module a child runs is imported by it
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def context() -> multiprocessing.context.BaseContext:
    """The context to make child processes with: the server starts with the first child unless start_server ran."""
    if START_METHOD == "forkserver":
        forkserver.set_forkserver_preload(PRELOAD)
    return multiprocessing.get_context(START_METHOD)


def _with_the_environment(environ: dict[str, str], target: Callable, args: tuple) -> None:
    os.environ.clear()
    os.environ.update(environ)
    target(*args)


def process(target: Callable, args: tuple) -> BaseProcess:
    """A child process (not started) running target(*args) with this process's environment of now, as a spawned
        one would (a forked one has the server's, of its start; multiprocessing passes the working directory). What
    torch read when the server imported it (OMP_NUM_THREADS, the CPU kernel pins) stays as the server read it."""
    return context().Process(target=_with_the_environment, args=(dict(os.environ), target, args))


def pool(processes: int, initializer: Callable) -> multiprocessing.pool.Pool:
    """A pool of `processes` children with this process's environment of now, each calling initializer() first."""
    return context().Pool(processes, initializer=_with_the_environment, initargs=(dict(os.environ), initializer, ()))


def start_server() -> None:
    """Start the server now, before this process imports torch itself: `harness run` calls this first thing, so
    that the server's imports run beside its own. Not in a torchrun world, where every rank would start one for
    nothing (its ranks share each method)."""
    if START_METHOD == "forkserver" and os.environ.get("WORLD_SIZE", "1") == "1":
        context()  # the preload set
        forkserver.ensure_running()
