"""X-CLIP scores a 1,000 x 1,000 gallery on the CPU (ViT-B/32 widths: D = 512, 12 frames, 32 words, random
weights), through the harness path against the official test loop's cost model.

Both start from the CLIP towers' outputs (t, W and F, computed once per caption and per video by either).
- Harness: seqTransf and the normalisations once per video (`video_features`), the normalisations and the
  two D x D projections once per query (`text_features`), then only per-pair work, in the engine's
  1024 x 1024 chunks (`score_in_chunks`), the fine matrix in blocks of `pair_budget` elements.
- Official (`_run_on_single_gpu` over the cached test batches of 40): every (text batch, video batch)
  block calls `get_similarity_logits`, which re-runs seqTransf on its videos, re-normalises and
  re-projects its texts, and computes w^ . v and t^ . f^ twice each.
With benchmarks disabled (the default) the same comparison runs at a small size as a plain test; with
`--benchmark-enable` at 1,000 x 1,000, recording both times, their ratio and the peak memory of the harness's
scoring (peak_memory.py: `score_in_chunks` on the cached features). Linux only.
"""

from __future__ import annotations

import time

import pytest
import torch
from peak_memory import peak_memory_mib

from harness.retrieval.tiles import Scoring, score_in_chunks

CPU = torch.device("cpu")
FRAMES, WORDS, DIM = 12, 32, 512
OFFICIAL_BATCH = 40  # MSR-VTT's batch_size_val
CHUNK = 1024  # the suites' evaluation.score_chunk

SETUP = f"""
import torch
from harness.api.backbone import Backbone, ClipShape, build_clip
from methods.xclip import XCLIP, XCLIPParams
torch.manual_seed(0)
# text width 512 with 4 blocks: seqTransf at ViT-B/32 width, copied from them as the official code does
backbone = Backbone(build_clip(ClipShape({DIM}, 32, 16, 64, 1, {WORDS}, 1000, {DIM}, 4), {WORDS}))
method = XCLIP(backbone, XCLIPParams(words={WORDS}, frames={FRAMES})).eval()
with torch.no_grad():
    for name, weight in method.weights().items():  # off the identity, as after training
        weight.add_(0.05 * torch.randn_like(weight))
n = {{n}}
sentence, words, frames = torch.randn(n, {DIM}), torch.randn(n, {WORDS}, {DIM}), torch.randn(n, {FRAMES}, {DIM})
frame_mask = torch.ones(n, {FRAMES}, dtype=torch.bool)
frame_mask[::3, {FRAMES} // 2:] = False  # a third of the videos are short: padded frames
"""


@pytest.fixture(scope="module")
def gallery() -> dict:
    """The method and 1,000 captions' and videos' CLIP outputs; smaller cases take the first n."""
    namespace: dict = {}
    exec(SETUP.format(n=1000), namespace)
    return namespace


def first(gallery: dict, n: int) -> tuple:
    return (gallery["method"], *(gallery[name][:n] for name in ("sentence", "words", "frames", "frame_mask")))


@torch.no_grad()
def harness_path(method, sentence, words, frames, frame_mask) -> torch.Tensor:
    text = method.text_features(sentence, words)
    video = method.video_features(frames, frame_mask)
    return score_in_chunks(method, text, video, Scoring(CPU, CHUNK))


def normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def official_similarity(method, sentence, words, frames, frame_mask) -> torch.Tensor:
    """One `get_similarity_logits` call of the official code (loose type, seqTransf), as it computes."""
    temporal = method.temporal_frames(frames, frame_mask)  # seqTransf on this block's videos, again
    weights = frame_mask.float().unsqueeze(-1)
    video = normalise((normalise(temporal) * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))
    frame_features, sentence, words = normalise(frames), normalise(sentence), normalise(words)
    scale, tau = method.backbone.logit_scale.exp(), method.params.temperature
    video_sentence = (sentence @ method.global_mat_weight) @ video.t()
    # the official expressions compute each similarity twice: once weighted, once inside the softmax
    video_word = ((words @ video.t())
                  * (torch.softmax((words @ video.t()) / tau, dim=1).permute(0, 2, 1)
                     @ method.word_logit_weight).permute(0, 2, 1)).sum(dim=1)
    sentence_frame = ((sentence @ frame_features.permute(0, 2, 1))
                      * (torch.softmax((sentence @ frame_features.permute(0, 2, 1)) / tau, dim=-1)
                         @ method.frame_logit_weight)).sum(dim=-1).t()
    n_t, n_v, dim = words.shape[0], frames.shape[0], frames.shape[-1]
    fine = ((words.reshape(-1, dim) @ method.local_mat_weight) @ frame_features.reshape(-1, dim).t()).view(
        n_t, words.shape[1], n_v, frames.shape[1])
    word_level = ((torch.softmax(fine / tau, dim=1).permute(0, 2, 3, 1) @ method.word_mat_weight).permute(0, 3, 1, 2)
                  * fine).sum(dim=1)
    frame_level = ((torch.softmax(fine / tau, dim=-1) @ method.frame_mat_weight) * fine).sum(dim=-1)
    sent2frame = ((torch.softmax(word_level / tau, dim=-1) @ method.frame_mat_weight2) * word_level).sum(dim=-1)
    video2word = ((torch.softmax(frame_level / tau, dim=1).permute(0, 2, 1) @ method.word_mat_weight2).permute(0, 2, 1)
                  * frame_level).sum(dim=1)
    frame_word = (sent2frame + video2word) / 2
    return scale * (video_sentence + video_word + sentence_frame + frame_word) / 4


@torch.no_grad()
def official_test_loop(method, sentence, words, frames, frame_mask, batch: int = OFFICIAL_BATCH) -> torch.Tensor:
    """`_run_on_single_gpu`: every cached text batch against every cached video batch."""
    rows = []
    for t0 in range(0, sentence.shape[0], batch):
        rows.append(torch.cat([official_similarity(method, sentence[t0 : t0 + batch], words[t0 : t0 + batch],
                                                   frames[v0 : v0 + batch], frame_mask[v0 : v0 + batch])
                               for v0 in range(0, frames.shape[0], batch)], dim=1))
    return torch.cat(rows)


def test_harness_path_gives_the_official_test_loop_scores(gallery):
    batch = 8  # a smaller test batch than the official 40: the blocking does not change a score
    arguments = first(gallery, 2 * batch + 3)  # partial blocks on both sides
    ours, official = harness_path(*arguments), official_test_loop(*arguments, batch=batch)
    assert ours.shape == official.shape == (2 * batch + 3, 2 * batch + 3)
    assert (ours - official).abs().max() <= 1e-4


@pytest.mark.slow
def test_xclip_1000_by_1000_gallery_against_the_official_test_loop(benchmark, gallery, monkeypatch):
    big = not benchmark.disabled
    n = 1000 if big else OFFICIAL_BATCH + 1
    arguments = first(gallery, n)
    start = time.perf_counter()
    official = official_test_loop(*arguments)
    official_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = benchmark.pedantic(harness_path, args=arguments, rounds=1, iterations=1)
    harness_s = time.perf_counter() - start
    benchmark.extra_info.update(size=n, official_loop_s=round(official_s, 2), harness_s=round(harness_s, 2),
                                official_over_harness=round(official_s / harness_s, 2))
    assert (ours - official).abs().max() <= 1e-4
    if big:  # the timings are recorded, not asserted; the official loop re-runs seqTransf 25 times per video
        features = ("with torch.no_grad():\n"
                    "    text = method.text_features(sentence, words)\n"
                    "    video = method.video_features(frames, frame_mask)\n"
                    "from harness.retrieval.tiles import Scoring, score_in_chunks\n")
        # The child's glibc maps every block over 1 MiB on its own and unmaps it when freed: the resident peak
        # is what the scoring holds at once, not what the allocator kept from the encoders or earlier chunks.
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
        statement = f"report['shape'] = list(score_in_chunks(method, text, video, Scoring(torch.device('cpu'), {CHUNK})).shape)"
        report = peak_memory_mib(SETUP.format(n=n) + features, f"with torch.no_grad():\n        {statement}")
        assert report["shape"] == [n, n]
        benchmark.extra_info["peak_scoring_memory_mib"] = round(report["peak_mib"], 1)
        # Unchunked, the fine matrix alone would be 1000 x 32 x 1000 x 12 x 4 bytes = 1465 MiB (the official
        # one-shot call holds several of them).
        assert report["peak_mib"] < 1465 / 4
