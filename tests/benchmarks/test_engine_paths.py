"""Two evaluation paths of the engine at ViT-B/32 widths (pytest-benchmark; `--benchmark-enable` for the sizes
below, otherwise small sizes run as plain tests): EERCF's two-stage ranking in both directions (v2t queries are
videos, whose patch tokens are the large features), and a square split that fits in one score chunk (X-Pool).
Timings are recorded, never asserted; the ranks are checked against the full score matrix."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from harness.api.backbone import Backbone, ClipShape, build_clip
from harness.retrieval.ranking import rank_features
from harness.retrieval.tiles import Scoring, score_in_chunks
from harness.retrieval.metrics import text_to_video, video_to_text

CPU = torch.device("cpu")
DIM, FRAMES, PATCHES = 512, 12, 49


def big(benchmark) -> bool:
    return not benchmark.disabled


def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(build_clip(ClipShape(DIM, 32, 16, 64, 1, 8, 1000, DIM, 1), 8))


def eercf_features(n: int) -> tuple[dict, dict]:
    torch.manual_seed(1)
    text = {"text": F.normalize(torch.randn(n, DIM), dim=-1)}
    text["text_global"] = text["text"].clone()
    video = {"video": F.normalize(torch.randn(n, DIM), dim=-1),
             "frames": F.normalize(torch.randn(n, FRAMES, DIM), dim=-1),
             "temporal": F.normalize(torch.randn(n, FRAMES, DIM), dim=-1),
             "patches": F.normalize(torch.randn(n, FRAMES * PATCHES, DIM), dim=-1)}
    return text, video


def test_eercf_two_stage_in_both_directions(benchmark):
    from methods.eercf import EERCF, EERCFParams

    n = 128 if big(benchmark) else 24
    method = EERCF(backbone(), EERCFParams(layers=1, frames=FRAMES, candidates=min(50, n // 2))).eval()
    text, video = eercf_features(n)
    owners = torch.arange(n)
    timings = {}
    for direction in ("t2v", "v2t"):
        start = time.perf_counter()
        coarse, two_stage = rank_features(method, text, video, owners, Scoring(CPU, 1024), directions=(direction,))
        timings[direction] = time.perf_counter() - start
        assert two_stage.fine_scores[direction] == n * method.candidates()
    benchmark.pedantic(lambda: rank_features(method, text, video, owners, Scoring(CPU, 1024), directions=("v2t",)),
                       rounds=1, iterations=1)
    benchmark.extra_info.update(queries=n, t2v_seconds=round(timings["t2v"], 3),
                                v2t_seconds=round(timings["v2t"], 3),
                                v2t_over_t2v=round(timings["v2t"] / timings["t2v"], 2))


def test_a_square_split_within_one_chunk_is_scored_once(benchmark):
    from baselines.xpool import XPool, XPoolParams

    n = 256 if big(benchmark) else 32
    method = XPool(backbone(), XPoolParams(dropout=0.0)).eval()
    torch.manual_seed(2)
    text = {"text": torch.randn(n, DIM)}
    video = {"frames": torch.randn(n, FRAMES, DIM), "frame_mask": torch.ones(n, FRAMES, dtype=torch.bool)}
    start = time.perf_counter()
    full = score_in_chunks(method, text, video, Scoring(CPU, 1024))
    matrix_seconds = time.perf_counter() - start
    (stage,) = benchmark.pedantic(lambda: rank_features(method, text, video, torch.arange(n), Scoring(CPU, 1024)),
                                  rounds=1, iterations=1)
    owners = torch.arange(n)
    assert (stage.rankings["t2v"].ranks == text_to_video(full, owners).ranks).all()
    assert (stage.rankings["v2t"].ranks == video_to_text(full, owners, n).ranks).all()
    benchmark.extra_info.update(pairs=n * n, one_score_matrix_seconds=round(matrix_seconds, 3))
