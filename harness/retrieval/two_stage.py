"""Two-stage (coarse-to-fine) retrieval: each query's top k gallery items by the coarse score get the fine
score (`Method.score`) and are placed above every other item, which keeps its coarse order. The fine scores
are computed for exactly those pairs, batched over queries and gathered from the larger side once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from harness.api.method import Features, Method
from harness.retrieval.features import bytes_per_item, count, move_features, slice_features, take
from harness.retrieval.metrics import Ranking, Truth, count_true, with_top
from harness.retrieval.tiles import Scoring, autocast, refuse_nan


def top_k(scores: Tensor, k: int) -> Tensor:
    """(n, k) column indices of each row's k highest scores, ascending; among items tied with the k-th
    highest, those of lowest index (torch.topk leaves that choice unspecified)."""
    return top_k_and_next(scores, k)[0]


def top_k_and_next(scores: Tensor, k: int) -> tuple[Tensor, Tensor | None]:
    """`top_k`, and each row's (k+1)-th highest score, (n, 1) (None when k is the row's length): the highest
    score outside the k, whether tied with the k-th or not."""
    n = scores.shape[1]
    values, indices = scores.topk(min(k + 1, n), dim=1)
    candidates = indices[:, :k].sort(dim=1).values
    if k == n:
        return candidates, None
    crossing = (values[:, k - 1] == values[:, k]).nonzero()[:, 0]  # a tie across the k-th place (rare)
    if len(crossing):
        candidates[crossing] = lowest_index_top_k(scores[crossing], k)
    return candidates, values[:, k:]


def lowest_index_top_k(scores: Tensor, k: int) -> Tensor:
    """`top_k` by counting: every item above the k-th highest score, then the tied ones of lowest index."""
    kth = scores.topk(k, dim=1).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    first = tied.cumsum(dim=1) <= (k - count_true(above, dim=1)).unsqueeze(1)
    return (above | (tied & first)).nonzero()[:, 1].view(scores.shape[0], k)


GATHER_BYTES = 256 * 2**20  # features gathered for one fine-score call, at most


@torch.no_grad()
def fine_scores(method: Method, queries: Features, gallery: Features, candidates: Tensor, direction: str,
                scoring: Scoring, budget: int = GATHER_BYTES, query_index: Tensor | None = None) -> Tensor:
    """(n, k) float64: `method.score` of query i with each of its candidates (gallery indices, (n, k)) and
    nothing else. Query i is `queries` item `query_index[i]` (default: item i). The features of the larger side
    are gathered once: where a gallery item's are the larger (t2v: a video), the pairs are grouped by gallery
    item (`fine_scores_by_item`); where a query's are (v2t: a video against its candidate captions), each query
    is scored against its k candidates at once (`fine_scores_by_query`)."""
    query_index = torch.arange(len(candidates)) if query_index is None else query_index
    by = fine_scores_by_query if bytes_per_item(queries) > bytes_per_item(gallery) else fine_scores_by_item
    fine = by(method, queries, gallery, candidates, query_index, direction, scoring, budget)
    return refuse_nan(fine, method, f"fine scores of {direction} candidates")


def pair_scorer(method: Method, direction: str) -> Callable[[Features, Features], Tensor]:
    """score(some queries, some gallery items) -> (queries, items), whichever side is the text."""
    return method.score if direction == "t2v" else lambda queries, items: method.score(items, queries).t()


def fine_scores_by_item(method: Method, queries: Features, gallery: Features, candidates: Tensor, query_index: Tensor,
                        direction: str, scoring: Scoring, budget: int) -> Tensor:
    """The pairs grouped by gallery item: each chosen item's features are gathered once, with the queries that
    chose it (a gallery item's features are the large ones: gathering them once per pair was most of the time).
    Items chosen by alike numbers of queries are scored together, that number padded to a power of two, as many
    per call as `budget` bytes of gathered features allow."""
    n, k = candidates.shape
    item_bytes, query_bytes = bytes_per_item(gallery), bytes_per_item(queries)
    flat = candidates.reshape(-1)
    order = torch.argsort(flat, stable=True)  # pair positions, grouped by gallery item
    items, counts = torch.unique_consecutive(flat[order], return_counts=True)
    starts = counts.cumsum(0) - counts
    width = counts.double().log2().ceil().long()  # 2**width >= count (exact: log2 of a power of two is whole)
    fine = torch.empty(n * k, dtype=torch.float64)
    scorer = pair_scorer(method, direction)

    def one_item(chosen_by: Features, item: Features) -> Tensor:
        return scorer(chosen_by, {name: value.unsqueeze(0) for name, value in item.items()})[:, 0]

    for bits in width.unique().tolist():
        group = (width == bits).nonzero()[:, 0]
        size = 2 ** bits
        per_call = max(1, budget // (item_bytes + size * query_bytes))
        for g0 in range(0, len(group), per_call):
            part = group[g0 : g0 + per_call]
            slots = torch.arange(size)
            filled = slots < counts[part].unsqueeze(1)
            # padding slots repeat the item's first pair; their scores are dropped
            positions = order[starts[part].unsqueeze(1) + torch.where(filled, slots, 0)]
            chosen_by = move_features(take(queries, query_index[positions // k]), scoring.device)
            with autocast(scoring.device, scoring.mixed_precision):
                items_of_part = move_features(take(gallery, items[part]), scoring.device)
                scores = torch.func.vmap(one_item)(chosen_by, items_of_part)
            fine[positions[filled]] = scores.double().cpu()[filled]
    return fine.view(n, k)


def fine_scores_by_query(method: Method, queries: Features, gallery: Features, candidates: Tensor,
                         query_index: Tensor, direction: str, scoring: Scoring, budget: int) -> Tensor:
    """Each query's features taken once and scored against its k candidates, gathered (the small side), as many
    queries per call as `budget` bytes of features allow."""
    n, k = candidates.shape
    per_call = max(1, budget // (bytes_per_item(queries) + k * bytes_per_item(gallery)))
    fine = torch.empty(n, k, dtype=torch.float64)
    scorer = pair_scorer(method, direction)

    def one_query(query: Features, items: Features) -> Tensor:
        return scorer({name: value.unsqueeze(0) for name, value in query.items()}, items)[0]

    for q0 in range(0, n, per_call):
        rows = slice(q0, q0 + per_call)
        query = move_features(take(queries, query_index[rows]), scoring.device)
        with autocast(scoring.device, scoring.mixed_precision):
            chosen = move_features(take(gallery, candidates[rows]), scoring.device)
            scores = torch.func.vmap(one_query)(query, chosen)
        fine[rows] = scores.double().cpu()
    return fine


def rerank_block(method: Method, queries: Features, gallery: Features, block: Tensor, k: int, direction: str,
                 scoring: Scoring) -> Tensor:
    """Coarse-to-fine retrieval of the queries of one block (rows: queries, columns: the gallery, coarse
    scores). Each query keeps its top-k gallery items by the coarse score; only those pairs get the fine
    score (`method.score`), and they are placed above every other item, which keeps its coarse order.
    Returns the float64 block to rank; exactly k fine scores per query are computed (`fine_scores`)."""
    k = min(k, block.shape[1])
    candidates, highest_outside = top_k_and_next(block, k)
    fine = fine_scores(method, queries, gallery, candidates, direction, scoring)
    return reranked(block, candidates, fine, highest_outside)


def reranked(block: Tensor, candidates: Tensor, fine: Tensor, highest_outside: Tensor | None) -> Tensor:
    """The float64 block with the candidates' fine scores, every other item shifted below the lowest of them."""
    # on the block as given (float32): the order and the values are the float64 copy's
    scores = block.double()
    if highest_outside is None:  # every item is a candidate
        return scores.scatter_(1, candidates, fine)
    highest_outside = highest_outside.double()
    # every non-candidate strictly below the lowest candidate, order kept (-inf: not returned by an index)
    shift = torch.where(highest_outside.isfinite(), highest_outside - fine.amin(dim=1, keepdim=True) + 1.0, 0.0)
    return scores.sub_(shift).scatter_(1, candidates, fine)  # the candidates' own shifted scores overwritten


FINE_BATCH = 8192  # query blocks wait until they hold this many queries, then their candidates are fine-scored at once


@dataclass
class WaitingBlock:
    """A query block whose coarse stage is done and whose candidates wait for their fine scores: what its
    two-stage ranks need from the coarse block, which is not kept (one ground truth per query)."""

    q0: int
    candidates: Tensor  # (n, k) gallery indices
    is_truth: Tensor  # (n, k) bool: the candidate is the query's ground truth
    above_outside: Tensor  # (n,) items above a ground truth that is not a candidate: the k, then coarse order
    equal_outside: Tensor  # (n,) items tied with it


class TwoStageRanker:
    """The two-stage ranks (after `rerank_block`) of one direction's query blocks, given one at a time with
    their coarse scores. Where each query has one ground truth (t2v, and v2t with one caption per video) the
    ranks are counted from the candidates and the coarse stage's ranks, without building the reranked block:
    a ground truth among the candidates is ranked among them by the fine score (every other item is below
    them all); one outside is below all k and then in coarse order among the rest. Those blocks' candidates
    are fine-scored together, `fine_batch` queries or more per call (a waiting block keeps only its (n, k)
    candidates and counts): a gallery item chosen by more queries is gathered once for all of them (EERCF,
    5,000 queries: its fine scores take 15-20% less time than in calls of 1,024 queries). A video against
    caption groups ranks its reranked block itself, block by block."""

    def __init__(self, method: Method, queries: Features, gallery: Features, k: int, truth: Truth, scoring: Scoring,
                 fine_batch: int = FINE_BATCH):
        self.method, self.queries, self.gallery, self.k = method, queries, gallery, min(k, count(gallery))
        self.truth, self.scoring, self.fine_batch = truth, scoring, fine_batch
        self.waiting: list[WaitingBlock] = []

    def add(self, q0: int, block: Tensor, coarse: Ranking) -> list[tuple[int, Ranking]]:
        """Take block q0.. (its coarse scores and the coarse stage's `coarse` ranks); returns the blocks
        whose two-stage ranks are now known."""
        if not self.truth.one_per_query:
            queries = slice_features(self.queries, q0, q0 + block.shape[0])
            reranked_block = rerank_block(self.method, queries, self.gallery, block, self.k, self.truth.direction,
                                          self.scoring)
            return [(q0, self.truth.rank(reranked_block, q0))]
        self.waiting.append(self.wait(q0, block, coarse))
        if sum(len(waiting.candidates) for waiting in self.waiting) < self.fine_batch:
            return []
        return self.finish()

    def wait(self, q0: int, block: Tensor, coarse: Ranking) -> WaitingBlock:
        candidates, _ = top_k_and_next(block, self.k)
        queries_of_block = torch.arange(q0, q0 + block.shape[0])
        truth = self.truth.owners[queries_of_block] if self.truth.direction == "t2v" else queries_of_block
        coarse_truth = block.gather(1, truth.unsqueeze(1))
        candidate_coarse = block.gather(1, candidates)
        coarse_above = torch.from_numpy(coarse.ranks - 1).to(torch.int32)
        # the coarse ties of the ground truth, counted only where the coarse stage saw one
        coarse_equal = torch.zeros_like(coarse_above)
        tied = torch.from_numpy(coarse.tied).nonzero()[:, 0]
        coarse_equal[tied] = count_true(block[tied] == coarse_truth[tied], dim=1) - 1
        return WaitingBlock(q0, candidates, candidates == truth.unsqueeze(1),
                            self.k + coarse_above - count_true(candidate_coarse > coarse_truth, dim=1),
                            coarse_equal - count_true(candidate_coarse == coarse_truth, dim=1))

    def finish(self) -> list[tuple[int, Ranking]]:
        """The ranks of every waiting block, their candidates fine-scored in one call."""
        if not self.waiting:
            return []
        rows = torch.cat([torch.arange(w.q0, w.q0 + len(w.candidates)) for w in self.waiting])
        fine = fine_scores(self.method, self.queries, self.gallery, torch.cat([w.candidates for w in self.waiting]),
                           self.truth.direction, self.scoring, query_index=rows)
        done, start = [], 0
        for waiting in self.waiting:
            block_fine, start = fine[start : start + len(waiting.candidates)], start + len(waiting.candidates)
            done.append((waiting.q0, self.counted_ranks(waiting, block_fine)))
        self.waiting = []
        return done

    def counted_ranks(self, waiting: WaitingBlock, fine: Tensor) -> Ranking:
        inside = waiting.is_truth.any(dim=1)
        fine_truth = fine.gather(1, waiting.is_truth.to(torch.uint8).argmax(dim=1, keepdim=True))
        above = torch.where(inside, count_true(fine > fine_truth, dim=1), waiting.above_outside)
        equal = torch.where(inside, count_true(fine == fine_truth, dim=1) - 1, waiting.equal_outside)
        ranking = Ranking((above + 1).numpy().astype(np.int64), (equal > 0).numpy())
        if self.truth.direction != "t2v":
            return ranking
        # the first of the reranked order are the candidates by their fine scores: above every other item
        ranking = with_top(ranking, fine)
        ranking.top = np.take_along_axis(waiting.candidates.numpy(), ranking.top, axis=1)
        return ranking
