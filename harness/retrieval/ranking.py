"""Evaluation of a split: every video and every query encoded once (harness/retrieval/encoding.py), then every
query ranked block by block of queries against the whole gallery, never holding the full matrix (memory
O(chunk x gallery), whatever the number of queries): by the method's score, or its coarse score and then the
fine score of the candidates (two-stage), or by a FAISS index's search. In a process group every rank ranks its
share of the query blocks and every rank ends with all the ranks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from harness import distributed
from harness.api.method import Features, Method
from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.errors import HarnessError
from harness.progress import progress
from harness.retrieval import index as faiss_index
from harness.retrieval.encoding import encode_split
from harness.retrieval.feature_cache import FeatureCache
from harness.retrieval.features import count, move_features, slice_features
from harness.retrieval.index import IndexSpec
from harness.retrieval.metrics import (MULTI_CAPTION_V2T, Ranking, Truth, concat_rankings, count_true,
                                      rank_of_ground_truth)
from harness.retrieval.post_rows import DirectionPass, PostProcessing
from harness.retrieval.tiles import Scoring, query_blocks, refuse_nan, sides, tile
from harness.retrieval.two_stage import TwoStageRanker


@dataclass(frozen=True)
class Evaluation:
    """How a split is evaluated, besides the method and the data."""

    scoring: Scoring
    words: int
    batch_size: int = 64  # videos or queries encoded at once
    directions: tuple[str, ...] = ("t2v", "v2t")
    v2t_convention: str = MULTI_CAPTION_V2T
    index: IndexSpec | None = None  # search the gallery with a FAISS index instead of the engine's scores
    cache: FeatureCache | None = None  # encoded features, reused by a later evaluation of the same weights
    quiet: bool = False
    post: tuple[PostProcessing, ...] = ()  # post-processed rows beside the plain ones


@dataclass
class StageRanks:
    """One retrieval stage's ranks per direction. `stage` is "single" for one-stage methods; two-stage
    methods give a "coarse" stage and a "two-stage" one, whose `fine_scores` counts the fine scores
    computed per direction. `pairs`: n_text x n_video. With an index, `index` names it and, when it is
    approximate, `index_recall` holds its recall against exact search per direction."""

    stage: str
    rankings: dict[str, Ranking]
    pairs: int
    fine_scores: dict[str, int] = field(default_factory=dict)
    index: str | None = None
    index_recall: dict[str, float] = field(default_factory=dict)
    post: str = "none"  # a post-processing's name: these ranks are of its rows
    post_settings: dict[str, dict] = field(default_factory=dict)  # per direction: what the post-processing used


def mine(start: int, chunk: int) -> bool:
    """Whether the query block starting at `start` is this process's: in a process group the blocks are dealt
    out in turn, so the rank work is split by query rows."""
    return (start // chunk) % distributed.world_size() == distributed.rank()


def stage_blocks(method: Method, text: Features, video: Features, direction: str, scoring: Scoring,
                 index: IndexSpec | None, recall: dict[str, float]) -> Iterator[tuple[int, Tensor]]:
    """This process's query blocks of the first stage: the engine's scores, or an index's search (its recall
    stored in `recall` when it is approximate)."""
    score_fn = method.score if method.candidates() is None else method.coarse_score
    chunk = scoring.chunk
    if index is None:
        return query_blocks(score_fn, text, video, direction, scoring, lambda start: mine(start, chunk))
    vectors = method.inner_product(text, video)
    if vectors is None:
        stage = "score" if method.candidates() is None else "coarse_score"
        raise HarnessError(f"evaluation.index={index.kind}: {method.name} declares no inner product for its "
                           f"{stage} (Method.inner_product returns None), so no index can search its gallery; "
                           "give evaluation.index: none for it.")
    queries, gallery = (vectors.text, vectors.video) if direction == "t2v" else (vectors.video, vectors.text)
    built = faiss_index.build(index, gallery, scoring.device)
    if index.approximate:
        exact = faiss_index.build(faiss_index.IndexSpec("exact"), gallery, scoring.device)
        recall[direction] = faiss_index.recall(built, exact, queries, chunk)
    blocks = faiss_index.index_blocks(built, queries, gallery.shape[0], faiss_index.depth(index, gallery.shape[0]),
                                      chunk)
    return ((start, block) for start, block in blocks if mine(start, chunk))


def every_ranks_blocks(blocks: list[tuple[int, Ranking]]) -> Ranking:
    """The rankings of every rank's query blocks, in query order (one process: its own)."""
    merged = [block for part in distributed.gather_objects(blocks) for block in part]
    return concat_rankings([ranking for _, ranking in sorted(merged, key=lambda item: item[0])])


@torch.no_grad()
def both_directions_in_one_pass(method: Method, text: Features, video: Features, owners: Tensor,
                                scoring: Scoring) -> dict[str, Ranking]:
    """t2v and v2t ranks of a square split from one pass over the text blocks. v2t: video v's rank is 1 + the
    captions scored above its own on column v (ties: the others scored equal), the same count the full
    matrix gives under either v2t convention. Its own caption's score is taken first from the diagonal tiles,
    the very tiles (same inputs, same call) the pass computes again, so every comparison is bitwise the full
    matrix's; that costs n x chunk extra pairs instead of a second pass of n x n, and none where one block holds
    the whole matrix (n <= chunk)."""
    n, chunk = count(video), scoring.chunk
    own = torch.empty(n)
    one_block = n <= chunk  # the pass's one block is the whole matrix: its diagonal is the own scores
    for start in range(0, 0 if one_block else n, chunk):
        text_chunk = move_features(slice_features(text, start, start + chunk), scoring.device)
        own[start : start + chunk] = tile(method.score, text_chunk, slice_features(video, start, start + chunk), "t2v",
                                          scoring).diagonal()
    truth = Truth(owners, n, "t2v")
    above, equal, blocks = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), []
    for q0, block in query_blocks(method.score, text, video, "t2v", scoring, lambda start: mine(start, chunk)):
        refuse_nan(block, method, f"scores of captions {q0}..{q0 + len(block) - 1}")
        if one_block:
            own = block.diagonal().clone()
        blocks.append((q0, truth.rank(block, q0)))
        above += count_true(block > own, dim=0)
        equal += count_true(block == own, dim=0)
    above, equal = (sum(counts) for counts in zip(*distributed.gather_objects((above, equal))))
    v2t = Ranking((above + 1).numpy().astype(np.int64), (equal > 1).numpy())  # equal counts the own caption
    return {"t2v": every_ranks_blocks(blocks), "v2t": v2t}


@torch.no_grad()
def multi_caption_directions_in_one_pass(method: Method, text: Features, video: Features, owners: Tensor,
                                         scoring: Scoring) -> dict[str, Ranking]:
    """t2v and v2t ranks of a multi-caption split (v2t by the max over each video's captions) from one pass over
    the caption blocks: each block is folded into best (videos x videos), best[u, v] the highest score of video
    u's captions against video v; video v's v2t rank is then its own group's rank in column v, as
    videos_against_captions ranks the full S^T (the same scores, the pass's tiles being the full matrix's). best
    holds n_videos^2 scores, no more than one block where n_videos <= chunk, which is when it is used."""
    n = count(video)
    truth = Truth(owners, n, "t2v")
    best, blocks = torch.full((n, n), -torch.inf), []
    for q0, block in query_blocks(method.score, text, video, "t2v", scoring, lambda start: mine(start, scoring.chunk)):
        refuse_nan(block, method, f"scores of captions {q0}..{q0 + len(block) - 1}")
        blocks.append((q0, truth.rank(block, q0)))
        groups = owners[q0 : q0 + len(block)].unsqueeze(1).expand_as(block)
        best = best.scatter_reduce(0, groups, block, reduce="amax", include_self=True)
    best = torch.stack(distributed.gather_objects(best)).amax(dim=0)  # every rank folded its share of the blocks
    return {"t2v": every_ranks_blocks(blocks), "v2t": rank_of_ground_truth(best.t(), torch.arange(n))}


def rank_features(method: Method, text: Features, video: Features, owners: Tensor, scoring: Scoring,
                  directions: tuple[str, ...] = ("t2v", "v2t"), v2t_convention: str = MULTI_CAPTION_V2T,
                  index: IndexSpec | None = None, quiet: bool = True) -> list[StageRanks]:
    """Ranks of every query in each direction, `scoring.chunk` queries at a time, never holding the full
    matrix: one stage for one-stage methods; the coarse stage and the two-stage result for two-stage methods.
    `owners`: the video of each caption."""
    n_videos, k, recall = count(video), method.candidates(), {}
    first: dict[str, Ranking] = {}
    second: dict[str, Ranking] = {}
    computed: dict[str, int] = {}
    if k is None and index is None and set(directions) == {"t2v", "v2t"}:
        if Truth(owners, n_videos, "v2t").one_per_query:
            first, directions = both_directions_in_one_pass(method, text, video, owners, scoring), ()
        elif v2t_convention == "max-over-captions" and n_videos <= scoring.chunk:
            first, directions = multi_caption_directions_in_one_pass(method, text, video, owners, scoring), ()
    for direction in directions:
        queries, gallery = sides(text, video, direction)
        truth = Truth(owners, n_videos, direction, v2t_convention)
        coarse, fine, computed[direction] = [], [], 0
        ranker = None if k is None else TwoStageRanker(method, queries, gallery, k, truth, scoring)
        n_blocks = -(-count(queries) // scoring.chunk)  # this process ranks every world_size-th of them
        for q0, block in progress(stage_blocks(method, text, video, direction, scoring, index, recall),
                                  f"ranking {direction} queries in blocks of {scoring.chunk}",
                                  quiet or not distributed.is_main(), total=-(-n_blocks // distributed.world_size())):
            refuse_nan(block, method, f"{direction} scores of queries {q0}..{q0 + len(block) - 1}")
            coarse_ranking = truth.rank(block, q0)
            coarse.append((q0, coarse_ranking))
            if ranker is not None:
                fine.extend(ranker.add(q0, block, coarse_ranking))
                computed[direction] += block.shape[0] * ranker.k
        first[direction] = every_ranks_blocks(coarse)
        if ranker is not None:
            fine.extend(ranker.finish())
            second[direction] = every_ranks_blocks(fine)
            computed[direction] = sum(distributed.gather_objects(computed[direction]))
    pairs, kind = count(text) * n_videos, index.kind if index is not None else None
    if k is None:
        return [StageRanks("single", first, pairs, index=kind, index_recall=recall)]
    return [StageRanks("coarse", first, pairs, index=kind, index_recall=recall),
            StageRanks("two-stage", second, pairs, computed, index=kind, index_recall=recall)]


def evaluate_split(method: Method, split: Split, store: FrameStore, evaluation: Evaluation) -> list[StageRanks]:
    """Every video and every query encoded exactly once (or read from the feature cache), then ranked block by
    block (`rank_features`), by the engine's scores or, with an index, by a FAISS index's search; then the
    post-processed rows (`post_processed_ranks`)."""
    method.eval()
    video, text = encode_split(method, split, store, evaluation.words, evaluation.batch_size, evaluation.scoring,
                               evaluation.quiet, evaluation.cache)
    owners = torch.as_tensor(split.caption_video, dtype=torch.long)
    stages = rank_features(method, text, video, owners, evaluation.scoring, evaluation.directions,
                           evaluation.v2t_convention, evaluation.index, evaluation.quiet)
    for post in evaluation.post:
        stages.append(post_processed_ranks(method, text, video, owners, store, post, evaluation))
    return stages


def post_processed_ranks(method: Method, text: Features, video: Features, owners: Tensor, store: FrameStore,
                         post: PostProcessing, evaluation: Evaluation) -> StageRanks:
    """The ranks of one post-processing's rows in each direction, from the method's first-stage score (a
    two-stage method's coarse score: a similarity over the whole gallery). Two passes over the query blocks:
    the column normalisers (DSL) or the query bank (QB-Norm) first, then each block post-processed and ranked."""
    scoring, two_stage = evaluation.scoring, method.candidates() is not None
    score_fn = method.coarse_score if two_stage else method.score
    bank = post.bank_features(method, store, evaluation.words, evaluation.batch_size, scoring, evaluation.directions,
                              evaluation.quiet, evaluation.cache)
    rankings, settings = {}, {}
    for direction in evaluation.directions:
        truth = Truth(owners, count(video), direction, evaluation.v2t_convention)

        def blocks(direction: str = direction) -> Iterator[tuple[int, Tensor]]:
            for q0, block in query_blocks(score_fn, text, video, direction, scoring, lambda s: mine(s, scoring.chunk)):
                yield q0, refuse_nan(block, method, f"{direction} scores of queries {q0}..{q0 + len(block) - 1}")

        transform, settings[direction] = post.prepare(DirectionPass(method, score_fn, direction, text, video, scoring,
                                                                    blocks, bank))
        rankings[direction] = every_ranks_blocks([(q0, truth.rank(transform(block), q0)) for q0, block in blocks()])
    return StageRanks("coarse" if two_stage else "single", rankings, count(text) * count(video), post=post.name,
                      post_settings=settings)
