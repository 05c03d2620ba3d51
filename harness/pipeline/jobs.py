"""Methods of one run in parallel worker processes (the suite's `jobs`, on the CPU): each method trained,
evaluated and costed in a worker with one torch thread, the parent merging every finished method into
results.json as it comes (in the suite's order). A worker prepares the run once (the data and the backbone are in
the caches by then: the parent prepared them) and takes method after method, the longest of the last run first.
Workers ignore Ctrl-C and SIGTERM: the parent stops them; every method's training state is on disk after each
epoch, so a resumed run continues."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from harness.processes import pool as worker_pool
from harness.storage.files import atomic_write

if TYPE_CHECKING:
    from harness.suite import MethodSpec, Suite

_context = None  # the worker's RunContext, prepared for its first method


def _start_worker() -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the workers stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_one(prepare: Callable, run_method: Callable, suite: Suite, run_dir: Path, force: bool, name: str,
             fingerprint: str) -> tuple[str, dict, list[dict]]:
    global _context
    if _context is None:
        _context = prepare(suite, run_dir, True, force, print)
    spec = next(spec for spec in suite.methods if spec.name == name)
    entry, rows = run_method(_context, spec, fingerprint)
    return name, entry, rows


def timings_file(suite: Suite) -> Path:
    """Each method's seconds in the suite's last run on this cache (the `timings` kind of the cache folder)."""
    name = re.sub(r"[^\w.-]", "_", suite.name)  # a file name whatever the suite is called
    return Path(suite.cache_dir).expanduser() / "timings" / f"{name}.json"


def last_seconds(suite: Suite) -> dict[str, float]:
    """The record of timings_file, or nothing when it is missing or unreadable (it only orders the work)."""
    try:
        return {name: float(seconds) for name, seconds in json.loads(timings_file(suite).read_text()).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def longest_first(specs: list[MethodSpec], seconds: dict[str, float]) -> list[MethodSpec]:
    """The order in which the workers take the methods: those never timed first (in the suite's order), then the
    longest of the last run first, so that no long method starts last while the other workers idle."""
    return sorted(specs, key=lambda spec: (spec.name in seconds, -seconds.get(spec.name, 0.0)))


def in_workers(prepare: Callable, run_method: Callable, suite: Suite, run_dir: Path, force: bool,
               specs: list[MethodSpec], fingerprints: dict[str, str], jobs: int, log: Callable = print
               ) -> Iterator[tuple[str, dict, list[dict]]]:
    """(name, entry, rows) of each method as its worker finishes it, `prepare(suite, run_dir, quiet, force, log)`
    and `run_method(context, spec, fingerprint)` (harness/pipeline/run.py's, module-level: a worker imports them by
    name) doing the work. An error in a method stops the others. Each finished method's seconds are recorded
    (timings_file) for the order of the next run."""
    timings = last_seconds(suite)
    specs = longest_first(specs, timings)
    pool = worker_pool(min(jobs, len(specs)), _start_worker)
    try:
        pending = [pool.apply_async(_run_one, (prepare, run_method, suite, run_dir, force, spec.name,
                                             fingerprints[spec.name]))
                   for spec in specs]
        order = f", longest first by the last run ({', '.join(spec.name for spec in specs)})" if timings else ""
        log(f"{len(specs)} method(s) in {min(jobs, len(specs))} worker processes (one torch thread each){order}")
        while pending:
            done = next((result for result in pending if result.ready()), None)
            if done is None:
                pending[0].wait(0.2)
                continue
            pending.remove(done)
            name, entry, rows = done.get()  # a worker's exception is raised here
            timings[name] = round(sum(entry["seconds"].values()), 1)
            atomic_write(timings_file(suite), json.dumps(timings, indent=1, sort_keys=True) + "\n", "timing record")
            yield name, entry, rows
        pool.close()  # the workers exit by themselves
    except BaseException:
        pool.terminate()  # a stop or an error: the workers go too (their training states are on disk)
        raise
    finally:
        pool.join()
