"""Ctrl-C and SIGTERM (what Slurm sends before it kills a job) stop a run cleanly.

Both become an exception raised where the main thread is: KeyboardInterrupt for SIGINT, `Stopped` for
SIGTERM. Every file the harness writes is replaced atomically (harness/storage/files.py), so any point is a safe
point: finished work is already on disk, nothing is half-written. The run turns either into `Interrupted`,
which says what was kept and how to continue; the command line prints it as one line and exits with
128 + the signal number (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Stopped(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupted(BaseException):
    """A run stopped by a signal after keeping its finished work; `message` says what was kept."""

    def __init__(self, message: str, signum: int, run_dir=None):
        super().__init__(message)
        self.message, self.signum, self.run_dir = message, signum, run_dir

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_number(stop: BaseException) -> int:
    return stop.signum if isinstance(stop, Stopped) else signal.SIGINT


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block SIGTERM raises `Stopped` in the main thread; the previous handler is restored after."""
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
