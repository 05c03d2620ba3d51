"""Measured online retrieval cost at gallery scale: `harness cost SUITE --gallery 1e4,1e5,1e6`.

For each method and gallery size G, a gallery of G stored video features of the method's real shapes
(one encoded video repeated: cost depends on shapes, not values) and the features of one query: the time
to answer one text query (median of 3; the score against every gallery item in chunks of `chunk` videos, then the top
10; a two-stage method: the coarse score on every item, its top k, the fine score on those k) and the time
per query when a batch of queries is answered at once; the peak memory of doing so beyond the stored
features. Each size is measured in a child process, so that one method's memory does not colour the next
and a size that would exhaust memory never runs: when the features (bytes per video x G) and the batch's
scores exceed the memory budget, the features are written to a scratch directory, if one is given and has
the room, and streamed from disk chunk by chunk (as a gallery larger than memory is searched); otherwise the
size is reported as not fitting, with those figures. A size whose time, extrapolated linearly from the
previous measured one (or from one chunk of the gallery, before the first), exceeds the time limit is
reported as such instead of measured.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.text import tokenize
from harness.errors import HarnessError
from harness.processes import context, process
from harness.retrieval.features import bytes_per_item
from harness.retrieval.tiles import Scoring
from harness.retrieval.two_stage import rerank_block
from harness.api.method import Features, Method

TOP = 10  # what one query returns
REPEATS = 3  # one query is timed this often; the median is kept
BATCH = 16  # queries answered at once in the batch figure


@dataclass
class ScalePoint:
    gallery: int
    bytes_per_video: int
    status: str  # "measured", "does not fit", "too slow"
    reason: str = ""
    storage: str = "memory"  # where the gallery's features were held: "memory", or "disk" (streamed in chunks)
    one_query_s: float | None = None
    per_query_in_batch_s: float | None = None
    batch: int = BATCH
    peak_mib: float | None = None  # beyond the stored features
    online_macs: float | None = None  # counted, one text query (harness/cost/model.py)


def parse_galleries(text: str) -> list[int]:
    """"1e4,1e5,1e6" -> [10000, 100000, 1000000]; anything else is an error naming the value."""
    sizes = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = -1.0
        if value < 1 or value != int(value):
            raise HarnessError(f"--gallery {text!r}: {item!r} is not a gallery size (a positive whole number, e.g. 1e5).")
        sizes.append(int(value))
    return sorted(set(sizes))


def available_bytes() -> int:
    """Memory the system can give now (MemAvailable), else the physical memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def repeated(features: Features, count: int) -> Features:
    return {name: value[:1].expand(count, *value.shape[1:]).contiguous() for name, value in features.items()}


class MemoryGallery:
    """Stored video features held in memory."""

    def __init__(self, features: Features):
        self.features = features
        self.count = next(iter(features.values())).shape[0]

    def chunk(self, start: int, end: int) -> Features:
        return {name: value[start:end] for name, value in self.features.items()}

    def items(self) -> Features:
        return self.features


class DiskGallery:
    """Stored video features in files, one raw file per feature, read chunk by chunk: memory O(chunk) whatever
    the gallery. `items()` maps the files (a two-stage method gathers its candidates from them)."""

    def __init__(self, directory: Path, block: Features, count: int):
        """`count` items written to `directory`: the items of `block`, repeated as often as needed."""
        self.count, self.layout = count, {}
        for name, value in block.items():
            array = value.numpy()
            path = directory / f"{name}.bin"
            self.layout[name] = (path, array.dtype, array.shape[1:])
            raw, item_bytes, per_block = array.tobytes(), array[0].nbytes, array.shape[0]
            with open(path, "wb") as handle:
                for start in range(0, count, per_block):
                    handle.write(raw[: (min(start + per_block, count) - start) * item_bytes])

    def chunk(self, start: int, end: int) -> Features:
        parts, end = {}, min(end, self.count)
        for name, (path, dtype, shape) in self.layout.items():
            per_item = int(np.prod(shape, dtype=np.int64))
            values = np.fromfile(path, dtype=dtype, count=(end - start) * per_item,
                                 offset=start * per_item * dtype.itemsize)
            parts[name] = torch.from_numpy(values).view(end - start, *shape)
        return parts

    def items(self) -> Features:
        # copy-on-write maps: writable for torch, nothing written back; only the pages gathered are read
        return {name: torch.from_numpy(np.memmap(path, dtype=dtype, mode="c", shape=(self.count, *shape)))
                for name, (path, dtype, shape) in self.layout.items()}


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the resident high-water mark (VmHWM) to the current size
        return True
    except OSError:
        return False


@torch.no_grad()
def answer(method: Method, queries: Features, gallery: MemoryGallery | DiskGallery, chunk: int) -> torch.Tensor:
    """The top items of the gallery for each query, as the engine finds them: the scores in chunks of
    `chunk` items; a two-stage method's coarse scores reranked by its fine score on the top k
    (harness.retrieval.two_stage.rerank_block, batched as in an evaluation)."""
    k = method.candidates()
    score = method.coarse_score if k is not None else method.score
    scores = torch.empty(next(iter(queries.values())).shape[0], gallery.count)
    for start in range(0, gallery.count, chunk):  # filled in place: no chunk's score (or what it views) is kept
        scores[:, start : start + chunk] = score(queries, gallery.chunk(start, start + chunk))
    if k is not None:
        scores = rerank_block(method, queries, gallery.items(), scores, k, "t2v", Scoring(torch.device("cpu")))
    return scores.topk(min(TOP, gallery.count), dim=1).indices


def _measure(method: Method, video: Features, text: Features, gallery: int, chunk: int, scratch: Path | None,
             repeats: int, with_batch: bool, pipe) -> None:
    """Child process: build the gallery (in memory, or with `scratch` on disk there), time one query
    (`repeats` times, the median kept) and, `with_batch`, a batch; report the peak memory beyond the stored
    features."""
    directory = None
    try:
        if scratch is None:
            stored = MemoryGallery(repeated(video, gallery))
        else:
            directory = Path(tempfile.mkdtemp(prefix="harness-gallery-", dir=scratch))
            stored = DiskGallery(directory, repeated(video, min(chunk, gallery)), gallery)
        queries = repeated(text, BATCH)
        one = {n: v[:1] for n, v in queries.items()}
        answer(method, one, MemoryGallery(repeated(video, min(gallery, chunk))), chunk)  # warm-up
        peak_known = _reset_peak()
        before = _status_kib("VmRSS")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            answer(method, one, stored, chunk)
            times.append(time.perf_counter() - start)
        one_query, batch = statistics.median(times), None
        if with_batch:
            start = time.perf_counter()
            answer(method, queries, stored, chunk)
            batch = (time.perf_counter() - start) / BATCH
        after = _status_kib("VmHWM")
        peak = (after - before) / 1024 if peak_known and before is not None and after is not None else None
        pipe.send({"one_query_s": one_query, "per_query_in_batch_s": batch, "peak_mib": peak})
    except Exception as error:  # reported as the size's status, not a crash of the whole table
        pipe.send({"error": f"{type(error).__name__}: {error}"})
    finally:
        pipe.close()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def measure_scale(method: Method, frames: int, words: int, size: int, galleries: list[int], chunk: int,
                  online_macs: dict[int, float], time_limit: float = 120.0, memory_budget: int | None = None,
                  scratch: Path | None = None, disk_budget: int | None = None) -> list[ScalePoint]:
    """One ScalePoint per gallery size, smallest first. `scratch`: a directory where a gallery too large for
    memory is stored and streamed from (`disk_budget` bytes at most, default 90% of its free space)."""
    method.eval()
    with torch.no_grad():
        frame_mask = torch.ones(1, frames, dtype=torch.bool)
        video = method.encode_video(torch.randn(1, frames, 3, size, size), frame_mask)
        tokens, token_mask = tokenize(["a person is cooking in a kitchen"], words)
        text = method.encode_text(tokens, token_mask)
    per_video = bytes_per_item(video)
    budget = memory_budget if memory_budget is not None else int(0.8 * available_bytes())
    if scratch is not None and disk_budget is None:
        disk_budget = int(0.9 * shutil.disk_usage(scratch).free)
    galleries = sorted(galleries)

    def measured(gallery: int, storage: str = "memory", repeats: int = REPEATS, with_batch: bool = True) -> ScalePoint:
        point = ScalePoint(gallery, per_video, "measured", online_macs=online_macs.get(gallery), storage=storage)
        result = _in_child(method, video, text, gallery, chunk, scratch if storage == "disk" else None, repeats,
                           with_batch, time_limit)
        if "error" in result:
            point.status, point.reason = "failed", result["error"]
        else:
            point.one_query_s = result["one_query_s"]
            point.per_query_in_batch_s = result["per_query_in_batch_s"]
            point.peak_mib = result["peak_mib"]
        return point

    # a first size far above one chunk is not measured blind: one chunk's time tells what it would take
    previous = measured(chunk) if galleries and galleries[0] > chunk else None
    points = []
    for gallery in galleries:
        # the stored features, plus each query's float32 scores and a two-stage method's float64 copy of them
        scores = BATCH * gallery * 12
        needed = per_video * gallery + scores
        # on disk, memory holds the scores and one chunk of features
        streamed = scratch is not None and per_video * gallery <= disk_budget and \
            scores + per_video * chunk <= budget
        ratio = gallery / previous.gallery if previous is not None else 0.0
        storage = "disk" if needed > budget else "memory"
        if needed > budget and not streamed:
            point = ScalePoint(gallery, per_video, "does not fit", online_macs=online_macs.get(gallery))
            point.reason = (f"{per_video:,} B per video x {gallery:,} videos + {BATCH} queries' scores = "
                            f"{needed / 2**30:.1f} GiB > {budget / 2**30:.1f} GiB available")
            if scratch is not None:
                point.reason += f", and {per_video * gallery / 2**30:.1f} GiB > {disk_budget / 2**30:.1f} GiB free in {scratch}"
        elif previous is not None and previous.status == "measured" and measuring_s(previous) * ratio > time_limit:
            expected, total = previous.one_query_s * ratio, measuring_s(previous) * ratio
            estimate = f"{total:.0f} s to measure (linear from {previous.gallery:,} videos)"
            if expected <= time_limit:  # one query fits the limit: timed once, without the batch
                point = measured(gallery, storage, repeats=1, with_batch=False)
                if point.status == "measured":
                    point.reason = f"one query timed once, no batch: {estimate} over the {time_limit:g} s limit"
            else:
                point = ScalePoint(gallery, per_video, "too slow", online_macs=online_macs.get(gallery))
                point.reason = f"about {expected:.3g} s per query, {estimate}: over the {time_limit:g} s limit"
        else:
            point = measured(gallery, storage)
        points.append(point)
        if point.status == "measured":
            previous = point
    return points


def measuring_s(point: ScalePoint) -> float:
    """What measuring `point`'s size in full took: REPEATS single queries and a batch (a batch not timed:
    counted at one query's time a query)."""
    batch = point.per_query_in_batch_s if point.per_query_in_batch_s is not None else point.one_query_s
    return point.one_query_s * REPEATS + batch * BATCH


def _in_child(method: Method, video: Features, text: Features, gallery: int, chunk: int, scratch: Path | None,
              repeats: int, with_batch: bool, time_limit: float) -> dict:
    """`_measure` in a fresh process (harness/processes.py): its peak memory is the measurement's alone."""
    receive, send = context().Pipe(duplex=False)
    child = process(_measure, (method, video, text, gallery, chunk, scratch, repeats, with_batch, send))
    child.start()
    send.close()
    result = receive.recv() if receive.poll(max(600.0, 4 * time_limit)) else {"error": "no answer in time"}
    child.join()
    return result


def scale_record(points: list[ScalePoint]) -> list[dict]:
    return [asdict(p) for p in points]


def scale_table(methods: dict[str, dict]) -> str:
    """One line per method and gallery size: measured times and memory beside the counted MACs, or why not."""
    lines = [f"{'method':<22} {'gallery':>9} {'GMAC/query':>11} {'1 query':>10} {'in batch':>10} {'peak MiB':>9}  note"]
    for name, record in methods.items():
        for point in record.get("scale", []):
            macs = f"{point['online_macs'] / 1e9:.4g}" if point["online_macs"] is not None else "-"
            if point["status"] == "measured":
                peak = f"{point['peak_mib']:.0f}" if point["peak_mib"] is not None else "-"
                note = "  features streamed from disk" if point.get("storage") == "disk" else ""
                batch = point["per_query_in_batch_s"]
                batch = f"{batch * 1e3:>8.2f}ms" if batch is not None else f"{'-':>10}"
                note += f"  {point['reason']}" if point["reason"] else ""
                lines.append(f"{name:<22} {point['gallery']:>9,} {macs:>11} {point['one_query_s'] * 1e3:>8.2f}ms "
                             f"{batch} {peak:>9}{note}")
            else:
                lines.append(f"{name:<22} {point['gallery']:>9,} {macs:>11} {'-':>10} {'-':>10} {'-':>9}  "
                             f"{point['status']}: {point['reason']}")
    return "\n".join(lines)
