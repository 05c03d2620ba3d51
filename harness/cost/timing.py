"""Wall-clock time of each stage (docs/cost.md section 5): warm-up first, the device synchronised before the
clock is read, repeated; median and inter-quartile range per item (per video, per query, per pair)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from harness.cost.model import dummy_inputs
from harness.api.method import Method


@dataclass
class Timing:
    median_s: float  # per item
    iqr_s: float
    repeats: int
    batch: int  # items per timed call


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], items: int, device: torch.device, warmup: int = 2, repeats: int = 5) -> Timing:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        seconds = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            seconds.append((time.perf_counter() - start) / items)
    q1, median, q3 = np.percentile(seconds, [25, 50, 75])
    return Timing(float(median), float(q3 - q1), repeats, items)


def gallery_for(pair_macs: float, budget: float = 2e9, batch: int = 8, largest: int = 256) -> int:
    """The side of the square of pairs timed: as large as `largest` while the call stays near `budget`
    MACs (a cross-encoder's pair costs 10^5 times a dot product's)."""
    side = int((budget / max(pair_macs, 1.0)) ** 0.5) // batch * batch
    return min(largest, max(batch, side))


def time_method(method: Method, frames: int, words: int, image_size: int, device: torch.device,
                pair_macs: float, batch: int = 8, repeats: int = 5) -> dict[str, Timing]:
    """Per video (encode_video on `batch` videos), per query (encode_text on `batch` captions), per pair
    (score on a square of pairs sized by `pair_macs`; for two-stage methods the coarse score too)."""
    gallery = gallery_for(pair_macs, batch=batch)
    method.eval().to(device)
    pixels, frame_mask, tokens, token_mask = (x.to(device) for x in dummy_inputs(frames, words, image_size, batch))
    timings = {"per_video": time_call(lambda: method.encode_video(pixels, frame_mask), batch, device, repeats=repeats),
               "per_query": time_call(lambda: method.encode_text(tokens, token_mask), batch, device, repeats=repeats)}
    with torch.no_grad():
        video, text = method.encode_video(pixels, frame_mask), method.encode_text(tokens, token_mask)
    # A gallery of `gallery` items on each side, built by repeating the encoded ones (values do not matter).
    video = {k: v.repeat_interleave(gallery // batch, dim=0) for k, v in video.items()}
    text = {k: v.repeat_interleave(gallery // batch, dim=0) for k, v in text.items()}
    pairs = (gallery // batch * batch) ** 2
    timings["per_pair"] = time_call(lambda: method.score(text, video), pairs, device, repeats=repeats)
    if method.candidates() is not None:
        timings["per_pair_coarse"] = time_call(lambda: method.coarse_score(text, video), pairs, device, repeats=repeats)
    return timings
