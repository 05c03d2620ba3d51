"""Scores in tiles: the one place where a method's score is called on features moved to the device, under
autocast, `chunk` queries x `chunk` gallery items at a time, so that no per-pair intermediate grows beyond one
tile and a block of queries against the whole gallery holds memory O(chunk x gallery)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.api.method import Features, Method
from harness.errors import HarnessError
from harness.retrieval.features import count, move_features, slice_features

ScoreFn = Callable[[Features, Features], Tensor]  # (text, video) -> (n_text, n_video)


@dataclass(frozen=True)
class Scoring:
    """Where and in what pieces scores are computed."""

    device: torch.device
    chunk: int = 1024  # queries (and gallery items) per tile
    mixed_precision: bool = False  # bf16 autocast, on CUDA only


def autocast(device: torch.device, enabled: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" else nullcontext()


def refuse_nan(scores: Tensor, method: Method, what: str) -> Tensor:
    """`scores`, unless one is NaN: NaN compares false with everything, so it would rank silently wrong."""
    nan = scores.isnan()
    if nan.any():
        raise HarnessError(f"{method.name}: {int(nan.sum())} of {nan.numel()} {what} are NaN; a rank against them "
                           "would mean nothing. The method's score (or the checkpoint evaluated) is broken.")
    return scores


def sides(text: Features, video: Features, direction: str) -> tuple[Features, Features]:
    """(queries, gallery) of a direction."""
    return (text, video) if direction == "t2v" else (video, text)


def tile(score_fn: ScoreFn, queries: Features, items: Features, direction: str, scoring: Scoring) -> Tensor:
    """(queries, items) float32 on the CPU: `score_fn` of queries already on the device against some gallery
    items (texts for v2t: the text side is always the first argument)."""
    items = move_features(items, scoring.device)
    with autocast(scoring.device, scoring.mixed_precision):
        scores = score_fn(queries, items) if direction == "t2v" else score_fn(items, queries).t()
    return scores.float().cpu()


def scored_block(score_fn: ScoreFn, queries: Features, gallery: Features, direction: str, scoring: Scoring) -> Tensor:
    """Some queries (on the device) against the whole gallery, tile by tile: (queries, gallery) float32."""
    n_gallery = count(gallery)
    block = torch.empty(count(queries), n_gallery)
    for g0 in range(0, n_gallery, scoring.chunk):
        block[:, g0 : g0 + scoring.chunk] = tile(score_fn, queries, slice_features(gallery, g0, g0 + scoring.chunk),
                                                 direction, scoring)
    return block


@torch.no_grad()
def query_blocks(score_fn: ScoreFn, text: Features, video: Features, direction: str, scoring: Scoring,
                 select: Callable[[int], bool] = lambda start: True) -> Iterator[tuple[int, Tensor]]:
    """(start, block): `chunk` queries (texts for t2v, videos for v2t) against the whole gallery, a (queries,
    gallery) float32 block on the CPU, for the query blocks `select` keeps. Every score is the one the full
    matrix holds; no more than one block is held."""
    queries, gallery = sides(text, video, direction)
    for q0 in filter(select, range(0, count(queries), scoring.chunk)):
        part = move_features(slice_features(queries, q0, q0 + scoring.chunk), scoring.device)
        yield q0, scored_block(score_fn, part, gallery, direction, scoring)


@torch.no_grad()
def score_in_chunks(method: Method, text: Features, video: Features, scoring: Scoring,
                    score_fn: ScoreFn | None = None) -> Tensor:
    """The whole (n_text, n_video) float32 matrix on the CPU, from the same tiles. `score_fn` defaults to
    `method.score`."""
    scores = torch.empty(count(text), count(video))
    for t0, block in query_blocks(score_fn or method.score, text, video, "t2v", scoring):
        scores[t0 : t0 + len(block)] = block
    return scores
