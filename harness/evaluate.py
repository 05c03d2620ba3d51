"""Evaluation: encode every gallery video and every query once, score in memory-bounded chunks, rank."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor
from tqdm import tqdm

from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.data.text import tokenize
from harness.data.video import to_pixels
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


@torch.no_grad()
def score_in_chunks(method: Method, text: Features, video: Features, chunk: int, device: torch.device,
                    mixed_precision: bool = False) -> Tensor:
    """(n_text, n_video) float32 on the CPU, computed `chunk` queries x `chunk` videos at a time so that
    no per-pair intermediate grows beyond one chunk."""
    n_text = next(iter(text.values())).shape[0]
    n_video = next(iter(video.values())).shape[0]
    scores = torch.empty(n_text, n_video)
    for t0 in range(0, n_text, chunk):
        text_chunk = move_features(slice_features(text, t0, t0 + chunk), device)
        for v0 in range(0, n_video, chunk):
            video_chunk = move_features(slice_features(video, v0, v0 + chunk), device)
            with autocast(device, mixed_precision):
                block = method.score(text_chunk, video_chunk)
            scores[t0 : t0 + chunk, v0 : v0 + chunk] = block.float().cpu()
    return scores


def rank_split(scores: Tensor, split: Split, direction: str, v2t_convention: str) -> Ranking:
    owners = torch.as_tensor(split.caption_video, dtype=torch.long)
    if direction == "t2v":
        return text_to_video(scores, owners)
    return video_to_text(scores, owners, len(split.videos), v2t_convention)


def evaluate_split(method: Method, split: Split, store: FrameStore, words: int, batch_size: int, chunk: int,
                   device: torch.device, mixed_precision: bool = False, quiet: bool = False) -> Tensor:
    """The full score matrix of a split: every video and every query encoded exactly once."""
    method.eval()
    video = encode_videos(method, split, store, batch_size, device, mixed_precision, quiet)
    text = encode_queries(method, split.captions, words, batch_size, device, mixed_precision, quiet)
    return score_in_chunks(method, text, video, chunk, device, mixed_precision)
