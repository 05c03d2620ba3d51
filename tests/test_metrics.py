"""Metrics: hand-computed cases, ties, multi-caption v2t, a plain reference, and the official golden.

The golden cases are read from `xpool_metrics_golden.pt` (HARNESS_GOLDEN_DIR, see conftest.py) and take
their sizes from it. Files of this layout come from the official metric functions: CLIP4Clip's
`compute_metrics` (ArrowLuo/CLIP4Clip, `metrics.py`) on a square score matrix without ties and on one
with ties (0-based ranks `ranks0` from its `np.where(sorted == gt)`), and, on a caption x video matrix
whose rows are grouped by video (`captions_per_video`), CLIP4Clip's multi-sentence evaluation
(`tensor_text_to_video_metrics`; v2t by `tensor_video_to_text_sim` and `compute_metrics`) and
X-Pool's `t2v_metrics`/`v2t_metrics` (layer6ai-labs/xpool, `modules/metrics.py`).

Ranks are compared exactly; R@K, MdR and MnR to a relative 1e-12 (the summation order may differ by one
unit in the last place), except the official CLIP4Clip multi-caption t2v, which computes in float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_golden
from harness.retrieval.metrics import rank_of_ground_truth, summarize, text_to_video, video_to_text


def reference_ranks(scores: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Plain loops: 1 + number of items scored strictly higher than the ground truth."""
    ranks = []
    for q in range(scores.shape[0]):
        ranks.append(1 + sum(1 for j in range(scores.shape[1]) if scores[q, j] > scores[q, gt[q]]))
    return np.array(ranks)


def test_hand_computed_square():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.7], [0.3, 0.2, 0.1]])
    ranking = rank_of_ground_truth(scores, torch.arange(3))
    assert ranking.ranks.tolist() == [1, 3, 3]
    summary = summarize(ranking, (1, 2))
    assert summary["R1"] == pytest.approx(100 / 3)
    assert summary["R2"] == pytest.approx(100 / 3)
    assert summary["MdR"] == 3.0
    assert summary["MnR"] == pytest.approx(7 / 3)
    assert summary["ties"] == 0


def test_ties_are_optimistic_and_counted():
    scores = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.4, 0.4], [0.9, 0.2, 0.3]])
    ranking = rank_of_ground_truth(scores, torch.arange(3))
    assert ranking.ranks.tolist() == [1, 1, 2]
    assert ranking.tied.tolist() == [True, True, False]
    assert ranking.ties == 2


def test_multi_caption_v2t_takes_the_best_caption_of_each_video():
    # captions 0,1 belong to video 0; caption 2 to video 1.
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.0], [0.5, 0.6]])
    owners = torch.tensor([0, 0, 1])
    ranking = video_to_text(scores, owners, 2, "max-over-captions")
    # video 0: own group max(0.1, 0.8) = 0.8 vs group 1: 0.5 -> rank 1
    # video 1: own group 0.6 vs group 0: max(0.9, 0.0) = 0.9 -> rank 2
    assert ranking.ranks.tolist() == [1, 2]
    every = video_to_text(scores, owners, 2, "all-captions")
    # video 1 against every caption: 0.9 (caption 0) is above its own 0.6 -> rank 2
    assert every.ranks.tolist() == [1, 2]
    t2v = text_to_video(scores, owners)
    assert t2v.ranks.tolist() == [2, 1, 1]


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_plain_reference_on_random_matrices(seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(37, 23)).round(1)  # rounding makes ties likely
    owners = rng.integers(0, 23, size=37)
    owners[:23] = np.arange(23)  # every video has a caption
    ranking = text_to_video(torch.tensor(scores), torch.tensor(owners))
    assert ranking.ranks.tolist() == reference_ranks(scores, owners).tolist()
    grouped = np.full((23, 23), -np.inf)
    for c, v in enumerate(owners):
        grouped[v] = np.maximum(grouped[v], scores[c])
    v2t = video_to_text(torch.tensor(scores), torch.tensor(owners), 23)
    assert v2t.ranks.tolist() == reference_ranks(grouped.T, np.arange(23)).tolist()


GOLDEN = load_golden("xpool_metrics_golden.pt")["metrics"]
METRIC_TOLERANCE = 1e-12  # relative
FLOAT32_TOLERANCE = 1e-6  # relative, for the official outputs computed in float32


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_square_without_ties_matches_official_clip4clip_exactly(direction):
    case = GOLDEN["square_no_ties"]
    scores = case["score"]
    scores = scores if direction == "t2v" else scores.t()
    ranking = rank_of_ground_truth(scores, torch.arange(scores.shape[0]))
    official = case[f"clip4clip_{direction}"]
    assert (ranking.ranks - 1).tolist() == [int(rank) for rank in official["ranks0"]]
    summary = summarize(ranking)
    for ours, theirs in (("R1", "R1"), ("R5", "R5"), ("R10", "R10"), ("MdR", "MR"), ("MnR", "MeanR")):
        assert summary[ours] == pytest.approx(float(official[theirs]), rel=METRIC_TOLERANCE, abs=0), ours
    assert summary["ties"] == 0


def test_square_with_ties_differs_from_official_only_by_the_tie_convention():
    """CLIP4Clip emits one rank per tied position (np.where(sorted == gt)); we emit one optimistic rank
    per query and count the tie. Expanding each of our tied queries to every position it ties with
    reproduces the official list exactly."""
    case = GOLDEN["square_with_ties"]
    scores = case["score"]
    ranking = rank_of_ground_truth(scores, torch.arange(scores.shape[0]))
    target = scores.diagonal().unsqueeze(1)
    equal = (scores == target).sum(dim=1).numpy()
    expanded = []
    for rank, count in zip(ranking.ranks, equal):
        expanded += list(range(rank - 1, rank - 1 + count))
    official = list(case["clip4clip_t2v"]["ranks0"])
    assert expanded == official
    assert len(ranking.ranks) == scores.shape[0] < len(official)
    assert ranking.ties > 0
    # The official R@1 divides by the number of emitted ranks, not by the number of queries.
    assert case["clip4clip_t2v"]["R1"] == pytest.approx(100 * np.mean(np.array(official) < 1))
    assert summarize(ranking)["R1"] == pytest.approx(100 * np.mean(ranking.ranks <= 1))


@pytest.mark.parametrize("code", ["clip4clip", "xpool"])
def test_multi_caption_matches_official(code):
    case = GOLDEN["multi_caption"]
    scores = case["score"]
    owners = torch.repeat_interleave(torch.arange(len(case["captions_per_video"])), case["captions_per_video"])
    t2v = summarize(text_to_video(scores, owners))
    v2t = summarize(video_to_text(scores, owners, len(case["captions_per_video"])))
    median = "MR" if code == "clip4clip" else "MedR"
    for direction, ours in (("t2v", t2v), ("v2t", v2t)):
        official = case[f"{code}_{direction}"]
        rel = FLOAT32_TOLERANCE if (code, direction) == ("clip4clip", "t2v") else METRIC_TOLERANCE
        for key, theirs in (("R1", "R1"), ("R5", "R5"), ("R10", "R10"), ("MdR", median), ("MnR", "MeanR")):
            assert ours[key] == pytest.approx(float(official[theirs]), rel=rel, abs=0), (direction, key)
