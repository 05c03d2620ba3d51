"""Ranks and retrieval metrics (docs/protocol.md section 3).

Rank of a query: r = 1 + #{j : S[q, j] > S[q, gt(q)]} (optimistic, 1-based). Ties are counted and
reported, never broken by sort order. R@K = 100 * mean(r <= K), MdR = median(r), MnR = mean(r).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

RECALL_AT = (1, 5, 10)
MULTI_CAPTION_V2T = "max-over-captions"


TOP_K = 5  # gallery items kept per t2v query with its rank (what a report shows of what was retrieved)


@dataclass
class Ranking:
    ranks: np.ndarray  # (n_queries,) 1-based optimistic ranks
    tied: np.ndarray  # (n_queries,) bool: the ground truth ties another item
    top: np.ndarray | None = None  # (n_queries, <= TOP_K) t2v: the highest-scored videos, best first
    top_scores: np.ndarray | None = None  # (n_queries, <= TOP_K) their scores

    @property
    def ties(self) -> int:
        return int(self.tied.sum())


def count_true(mask: Tensor, dim: int) -> Tensor:
    """How many entries along `dim` are true: summed as int32, several times faster than the default int64
    sum of a bool tensor (exact up to 2^31 items, far beyond any gallery)."""
    return mask.sum(dim=dim, dtype=torch.int32)


def rank_of_ground_truth(scores: Tensor, gt: Tensor) -> Ranking:
    """scores (n_queries, n_items), gt (n_queries,) item index of each query's ground truth."""
    rows = torch.arange(scores.shape[0])
    target = scores[rows, gt].unsqueeze(1)
    above = count_true(scores > target, dim=1)
    equal = count_true(scores == target, dim=1) - 1  # the ground truth itself is equal
    return Ranking((above + 1).numpy().astype(np.int64), (equal > 0).numpy())


def summarize(ranking: Ranking, recall_at: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    ranks = ranking.ranks
    summary = {f"R{k}": float(100.0 * np.mean(ranks <= k)) for k in recall_at}
    summary.update(MdR=float(np.median(ranks)), MnR=float(np.mean(ranks)), ties=ranking.ties)
    return summary


def text_to_video(scores: Tensor, caption_video: Tensor) -> Ranking:
    """Every caption is a query against every video (square and multi-caption alike)."""
    return rank_of_ground_truth(scores, caption_video)


def one_caption_per_video(caption_video: Tensor, n_videos: int) -> bool:
    """Caption i belongs to video i and there is no other (square and paragraph splits)."""
    return len(caption_video) == n_videos and bool((caption_video == torch.arange(n_videos)).all())


def video_to_text(scores: Tensor, caption_video: Tensor, n_videos: int, convention: str = MULTI_CAPTION_V2T) -> Ranking:
    """Every video is a query.

    max-over-captions (the field's convention): H[v, j] = max over captions c of video j of S[c, v];
    video v is ranked against the caption groups, its own group as ground truth. With one caption per
    video this is the square case, ranking rows of S^T.
    all-captions: video v against every caption; the ground truth is its best-scored own caption.
    """
    return videos_against_captions(scores.t(), torch.arange(n_videos), caption_video, n_videos, convention)


def videos_against_captions(by_video: Tensor, videos: Tensor, caption_video: Tensor, n_videos: int,
                            convention: str = MULTI_CAPTION_V2T) -> Ranking:
    """`video_to_text` for some of the videos: by_video (len(videos), n_captions) holds their rows of S^T."""
    if convention == "max-over-captions":
        if one_caption_per_video(caption_video, n_videos):
            return rank_of_ground_truth(by_video, videos)  # groups = captions
        index = caption_video.unsqueeze(0).expand_as(by_video)
        grouped = torch.full((by_video.shape[0], n_videos), -torch.inf, dtype=by_video.dtype)
        grouped = grouped.scatter_reduce(1, index, by_video, reduce="amax", include_self=True)
        return rank_of_ground_truth(grouped, videos)
    if convention == "all-captions":
        own = caption_video.unsqueeze(0) == videos.unsqueeze(1)
        best_own = by_video.masked_fill(~own, -torch.inf).amax(dim=1, keepdim=True)
        others = by_video.masked_fill(own, -torch.inf)
        above = count_true(others > best_own, dim=1)
        tied = count_true(others == best_own, dim=1) > 0
        return Ranking((above + 1).numpy().astype(np.int64), tied.numpy())
    raise ValueError(f"unknown v2t convention {convention!r}")


def concat_rankings(parts: list[Ranking]) -> Ranking:
    """The rankings of consecutive query chunks, as one."""
    tops = all(p.top is not None for p in parts) and parts
    return Ranking(np.concatenate([p.ranks for p in parts]), np.concatenate([p.tied for p in parts]),
                   np.concatenate([p.top for p in parts]) if tops else None,
                   np.concatenate([p.top_scores for p in parts]) if tops else None)


def with_top(ranking: Ranking, scores: Tensor) -> Ranking:
    """`ranking` with each row's TOP_K highest-scored items of `scores` (queries, items), best first (ties in
    torch.topk's order)."""
    values, indices = scores.topk(min(TOP_K, scores.shape[1]), dim=1)
    ranking.top, ranking.top_scores = indices.numpy(), values.double().numpy()
    return ranking


@dataclass(frozen=True)
class Truth:
    """Where each query's ground truth is, for ranking blocks of queries against the whole gallery: `owners`
    (n_captions,) the video of each caption; `direction` t2v (a query is a caption) or v2t (a video, ranked by
    `v2t_convention` on multi-caption splits)."""

    owners: Tensor
    n_videos: int
    direction: str
    v2t_convention: str = MULTI_CAPTION_V2T

    def rank(self, block: Tensor, q0: int) -> Ranking:
        """The ranks of the queries q0.. whose rows against the whole gallery `block` holds."""
        queries = torch.arange(q0, q0 + block.shape[0])
        if self.direction == "t2v":
            return with_top(text_to_video(block, self.owners[queries]), block)
        return videos_against_captions(block, queries, self.owners, self.n_videos, self.v2t_convention)

    @property
    def one_per_query(self) -> bool:
        """Each query has one ground truth item: every t2v query, and a v2t one where a video has one caption."""
        return self.direction == "t2v" or one_caption_per_video(self.owners, self.n_videos)
