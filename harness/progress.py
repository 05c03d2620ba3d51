"""Progress that fits where it is read: a tqdm bar on a terminal, plain lines in a log.

Where stderr is not a terminal (a Slurm log, a redirected file) a bar's carriage returns make the log
unreadable, so progress becomes one line every `interval` seconds and one when the work ends:
what, how far, rate, ETA (`glscl epoch 1/5: 120/500 (24%), 3.20 it/s, ETA 1m59s, loss=1.2345`). Under
torchrun every line names its rank (`[rank 1/4] `); on a terminal only rank 0 draws a bar (the ranks
step together), the others stay silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

from harness import distributed

INTERVAL = 30.0  # seconds between two progress lines in a log


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class LineProgress:
    """Iterates `iterable`, writing a progress line to `stream` at most every `interval` seconds and once at
    the end. `clock` is injectable for tests."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, stream, interval: float,
                 clock=time.monotonic):
        self.iterable, self.desc, self.stream, self.interval, self.clock = iterable, desc, stream, interval, clock
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.done, self.postfix = 0, ""

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def line(self, elapsed: float) -> str:
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else f"{self.done}",
                 f"{rate:.2f} it/s"]
        if self.total and rate > 0:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}" if self.done < self.total
                         else f"took {duration(elapsed)}")
        if self.postfix:
            parts.append(self.postfix)
        return f"{distributed.rank_label()}{self.desc}: " + ", ".join(parts)

    def __iter__(self) -> Iterator:
        start = last = self.clock()
        reported = None
        for item in self.iterable:
            yield item
            self.done += 1
            now = self.clock()
            if now - last >= self.interval:
                print(self.line(now - start), file=self.stream, flush=True)
                last, reported = now, self.done
        if reported != self.done:  # the closing line, unless the last step was just reported
            print(self.line(self.clock() - start), file=self.stream, flush=True)


@contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Adds the wall-clock seconds of the block to seconds[stage] (a run's profile per stage)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - start, 2)


def progress(iterable: Iterable, desc: str, quiet: bool = False, total: int | None = None, stream=None,
             interval: float = INTERVAL):
    """An iterable over `iterable` that shows progress on `stream` (default stderr) as a bar on a terminal,
    as lines in a log, or not at all (`quiet`); both kinds have `set_postfix(**values)`."""
    stream = stream if stream is not None else sys.stderr
    if quiet or (stream.isatty() and not distributed.is_main()):
        return tqdm(iterable, total=total, disable=True)
    if stream.isatty():
        return tqdm(iterable, desc=desc, total=total, file=stream, leave=False)
    return LineProgress(iterable, desc, total, stream, interval)
