"""Encoding: every gallery video and every query of a split encoded exactly once, in batches (in a process group
each rank encodes its share of the batches and every rank ends with all the features), or read back from the
feature cache."""

from __future__ import annotations

import torch
from torch import Tensor

from harness import distributed
from harness.api.method import Features, Method
from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.data.text import tokenize
from harness.data.video import to_pixels
from harness.progress import progress
from harness.retrieval.feature_cache import FeatureCache, method_identity
from harness.retrieval.features import concat_features, stored
from harness.retrieval.tiles import Scoring, autocast


def load_frames(store: FrameStore, split: Split, indices: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    frames, masks = zip(*(store.load(split.videos[i]) for i in indices))
    mask = torch.stack(masks).to(device)
    return to_pixels(torch.stack(frames).to(device), mask), mask


def my_batches(total: int, batch_size: int) -> list[int]:
    """The starts of the batches this process encodes: in a process group, batch b goes to rank b mod N, the
    same batches one process would form, so every feature is bitwise the one a single process computes."""
    return list(range(0, total, batch_size))[distributed.rank()::distributed.world_size()]


def gathered(parts: dict[int, Features]) -> Features:
    """Every rank's {batch start: features}, concatenated in order on every rank."""
    merged: dict[int, Features] = {}
    for part in distributed.gather_objects(parts):
        merged.update(part)
    return concat_features([merged[start] for start in sorted(merged)])


@torch.no_grad()
def encode_videos(method: Method, split: Split, store: FrameStore, batch_size: int, scoring: Scoring,
                  quiet: bool = False) -> Features:
    parts = {}
    for start in progress(my_batches(len(split.videos), batch_size), f"encoding {split.name} videos",
                          quiet or not distributed.is_main()):
        indices = list(range(start, min(start + batch_size, len(split.videos))))
        pixels, mask = load_frames(store, split, indices, scoring.device)
        with autocast(scoring.device, scoring.mixed_precision):
            parts[start] = stored(method.encode_video(pixels, mask))
    return gathered(parts)


@torch.no_grad()
def encode_queries(method: Method, captions: list[str], words: int, batch_size: int, scoring: Scoring,
                   quiet: bool = False) -> Features:
    tokens, mask = tokenize(captions, words)
    device, parts = scoring.device, {}
    for start in progress(my_batches(len(captions), batch_size), "encoding queries", quiet or not distributed.is_main()):
        end = min(start + batch_size, len(captions))
        with autocast(device, scoring.mixed_precision):
            parts[start] = stored(method.encode_text(tokens[start:end].to(device), mask[start:end].to(device)))
    return gathered(parts)


def encode_split(method: Method, split: Split, store: FrameStore, words: int, batch_size: int, scoring: Scoring,
                 quiet: bool = False, cache: FeatureCache | None = None, videos: bool = True,
                 queries: bool = True) -> tuple[Features | None, Features | None]:
    """The split's video and query features (None for a side not asked for); with a `cache`, those it holds for
    the same method, weights, protocol and inputs are read back instead of encoded
    (harness/retrieval/feature_cache.py)."""

    def the_videos() -> Features:
        return encode_videos(method, split, store, batch_size, scoring, quiet)

    def the_queries() -> Features:
        return encode_queries(method, split.captions, words, batch_size, scoring, quiet)

    if cache is None:
        return the_videos() if videos else None, the_queries() if queries else None
    identity = method_identity(method, scoring.device, scoring.mixed_precision)
    return (cache.videos(identity, split, store, the_videos) if videos else None,
            cache.queries(identity, split, words, the_queries) if queries else None)
