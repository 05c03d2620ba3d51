"""Evaluation: encode every gallery video and every query once, score in memory-bounded chunks, rank."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.data.text import tokenize
from harness.data.video import to_pixels
from harness.features import FeatureCache, method_identity
from harness.method import Features, Method
from harness.metrics import Ranking, text_to_video, video_to_text


def slice_features(features: Features, start: int, end: int) -> Features:
    return {name: value[start:end] for name, value in features.items()}


def concat_features(parts: list[Features]) -> Features:
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def move_features(features: Features, device: torch.device | str) -> Features:
    return {name: value.to(device) for name, value in features.items()}


def autocast(device: torch.device, enabled: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" else nullcontext()


def load_frames(store: FrameStore, split: Split, indices: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    frames, masks = zip(*(store.load(split.videos[i]) for i in indices))
    mask = torch.stack(masks).to(device)
    return to_pixels(torch.stack(frames).to(device), mask), mask


@torch.no_grad()
def encode_videos(method: Method, split: Split, store: FrameStore, batch_size: int, device: torch.device,
                  mixed_precision: bool = False, quiet: bool = False) -> Features:
    parts = []
    for start in tqdm(range(0, len(split.videos), batch_size), desc=f"encoding {split.name} videos",
                      disable=quiet, leave=False):
        indices = list(range(start, min(start + batch_size, len(split.videos))))
        pixels, mask = load_frames(store, split, indices, device)
        with autocast(device, mixed_precision):
            features = method.encode_video(pixels, mask)
        parts.append(move_features({k: v.float() for k, v in features.items()}, "cpu"))
    return concat_features(parts)


@torch.no_grad()
def encode_queries(method: Method, captions: list[str], words: int, batch_size: int, device: torch.device,
                   mixed_precision: bool = False, quiet: bool = False) -> Features:
    tokens, mask = tokenize(captions, words)
    parts = []
    for start in tqdm(range(0, len(captions), batch_size), desc="encoding queries", disable=quiet, leave=False):
        end = min(start + batch_size, len(captions))
        with autocast(device, mixed_precision):
            features = method.encode_text(tokens[start:end].to(device), mask[start:end].to(device))
        parts.append(move_features({k: v.float() for k, v in features.items()}, "cpu"))
    return concat_features(parts)


def count(features: Features) -> int:
    return next(iter(features.values())).shape[0]


@torch.no_grad()
def score_in_chunks(method: Method, text: Features, video: Features, chunk: int, device: torch.device,
                    mixed_precision: bool = False, score_fn: Callable | None = None) -> Tensor:
    """(n_text, n_video) float32 on the CPU, computed `chunk` queries x `chunk` videos at a time so that
    no per-pair intermediate grows beyond one chunk. `score_fn` defaults to `method.score`."""
    score_fn = score_fn or method.score
    n_text, n_video = count(text), count(video)
    scores = torch.empty(n_text, n_video)
    for t0 in range(0, n_text, chunk):
        text_chunk = move_features(slice_features(text, t0, t0 + chunk), device)
        for v0 in range(0, n_video, chunk):
            video_chunk = move_features(slice_features(video, v0, v0 + chunk), device)
            with autocast(device, mixed_precision):
                block = score_fn(text_chunk, video_chunk)
            scores[t0 : t0 + chunk, v0 : v0 + chunk] = block.float().cpu()
    return scores


def take(features: Features, index: Tensor) -> Features:
    return {name: value[index] for name, value in features.items()}


@torch.no_grad()
def two_stage_scores(method: Method, text: Features, video: Features, coarse: Tensor, k: int, direction: str,
                     device: torch.device, mixed_precision: bool = False) -> tuple[Tensor, int]:
    """Coarse-to-fine retrieval in one direction. Each query (a text for t2v, a video for v2t) keeps its
    top-k gallery items by the coarse score; only those pairs get the fine score (`method.score`), and they
    are placed above every other item, which keeps its coarse order. Returns an (n_text, n_video) float64
    matrix to rank in that direction and the number of fine scores computed (k per query)."""
    scores = coarse.double().t().clone() if direction == "v2t" else coarse.double().clone()  # (queries, gallery)
    queries, gallery = (video, text) if direction == "v2t" else (text, video)
    k = min(k, scores.shape[1])
    candidates = scores.topk(k, dim=1).indices
    computed = 0
    for q in range(scores.shape[0]):
        query = move_features(slice_features(queries, q, q + 1), device)
        items = move_features(take(gallery, candidates[q]), device)
        with autocast(device, mixed_precision):
            fine = method.score(items, query) if direction == "v2t" else method.score(query, items)
        fine = fine.reshape(-1).double().cpu()
        computed += fine.numel()
        row = scores[q]
        outside = torch.ones(row.shape[0], dtype=torch.bool)
        outside[candidates[q]] = False
        if outside.any():  # every non-candidate strictly below the lowest candidate, order kept
            row[outside] -= row[outside].max() - fine.min() + 1.0
        row[candidates[q]] = fine
    return (scores.t() if direction == "v2t" else scores), computed


def rank_split(scores: Tensor, split: Split, direction: str, v2t_convention: str) -> Ranking:
    owners = torch.as_tensor(split.caption_video, dtype=torch.long)
    if direction == "t2v":
        return text_to_video(scores, owners)
    return video_to_text(scores, owners, len(split.videos), v2t_convention)


@dataclass
class StageScores:
    """One retrieval stage's (n_text, n_video) scores per direction. `stage` is "single" for one-stage
    methods; two-stage methods give a "coarse" stage and a "two-stage" one, whose `fine_scores` counts
    the fine scores computed per direction."""

    stage: str
    scores: dict[str, Tensor]
    fine_scores: dict[str, int] = field(default_factory=dict)


def encode_split(method: Method, split: Split, store: FrameStore, words: int, batch_size: int, device: torch.device,
                 mixed_precision: bool = False, quiet: bool = False,
                 cache: FeatureCache | None = None) -> tuple[Features, Features]:
    """The split's video and query features; with a `cache`, those it holds for the same method, weights,
    protocol and inputs are read back instead of encoded (harness/features.py)."""

    def videos() -> Features:
        return encode_videos(method, split, store, batch_size, device, mixed_precision, quiet)

    def queries() -> Features:
        return encode_queries(method, split.captions, words, batch_size, device, mixed_precision, quiet)

    if cache is None:
        return videos(), queries()
    identity = method_identity(method, device, mixed_precision)
    return cache.videos(identity, split, store, videos), cache.queries(identity, split, words, queries)


def evaluate_split(method: Method, split: Split, store: FrameStore, words: int, batch_size: int, chunk: int,
                   device: torch.device, mixed_precision: bool = False, quiet: bool = False,
                   directions: tuple[str, ...] = ("t2v", "v2t"), cache: FeatureCache | None = None
                   ) -> list[StageScores]:
    """Every video and every query encoded exactly once (or read from `cache`), then scored: the full
    matrix for one-stage methods; the coarse matrix and, per direction, the two-stage result for two-stage
    methods."""
    method.eval()
    video, text = encode_split(method, split, store, words, batch_size, device, mixed_precision, quiet, cache)
    k = method.candidates()
    if k is None:
        scores = score_in_chunks(method, text, video, chunk, device, mixed_precision)
        return [StageScores("single", {d: scores for d in directions})]
    coarse = score_in_chunks(method, text, video, chunk, device, mixed_precision, method.coarse_score)
    fine = {d: two_stage_scores(method, text, video, coarse, k, d, device, mixed_precision) for d in directions}
    return [StageScores("coarse", {d: coarse for d in directions}),
            StageScores("two-stage", {d: fine[d][0] for d in directions}, {d: fine[d][1] for d in directions})]
