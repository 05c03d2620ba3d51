"""Evaluation: encode every gallery video and every query once, then score and rank chunk by chunk of
queries (memory O(chunk x gallery), whatever the number of queries)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.data.text import tokenize
from harness.data.video import to_pixels
from harness import distributed
from harness import index as faiss_index
from harness.errors import HarnessError
from harness.features import FeatureCache, method_identity
from harness.index import IndexSpec
from harness.api.method import Features, Method
from harness.metrics import (MULTI_CAPTION_V2T, Ranking, concat_rankings, count_true, one_caption_per_video,
                             text_to_video, videos_against_captions)


def slice_features(features: Features, start: int, end: int) -> Features:
    return {name: value[start:end] for name, value in features.items()}


def concat_features(parts: list[Features]) -> Features:
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def move_features(features: Features, device: torch.device | str) -> Features:
    return {name: value.to(device) for name, value in features.items()}


def stored(features: Features) -> Features:
    """Encoder outputs as the engine keeps them: floating tensors in float32 (bf16 under autocast) on the CPU,
    every other dtype as it is (a mask stays bool, an index integer), in every path alike (training,
    validation, evaluation, the feature cache, the conformance check)."""
    return {name: (value.float() if value.is_floating_point() else value).cpu() for name, value in features.items()}


def autocast(device: torch.device, enabled: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" else nullcontext()


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
def encode_videos(method: Method, split: Split, store: FrameStore, batch_size: int, device: torch.device,
                  mixed_precision: bool = False, quiet: bool = False) -> Features:
    parts = {}
    for start in tqdm(my_batches(len(split.videos), batch_size), desc=f"encoding {split.name} videos",
                      disable=quiet or not distributed.is_main(), leave=False):
        indices = list(range(start, min(start + batch_size, len(split.videos))))
        pixels, mask = load_frames(store, split, indices, device)
        with autocast(device, mixed_precision):
            features = method.encode_video(pixels, mask)
        parts[start] = stored(features)
    return gathered(parts)


@torch.no_grad()
def encode_queries(method: Method, captions: list[str], words: int, batch_size: int, device: torch.device,
                   mixed_precision: bool = False, quiet: bool = False) -> Features:
    tokens, mask = tokenize(captions, words)
    parts = {}
    for start in tqdm(my_batches(len(captions), batch_size), desc="encoding queries",
                      disable=quiet or not distributed.is_main(), leave=False):
        end = min(start + batch_size, len(captions))
        with autocast(device, mixed_precision):
            features = method.encode_text(tokens[start:end].to(device), mask[start:end].to(device))
        parts[start] = stored(features)
    return gathered(parts)


def refuse_nan(scores: Tensor, method: Method, what: str) -> Tensor:
    """`scores`, unless one is NaN: NaN compares false with everything, so it would rank silently wrong."""
    nan = scores.isnan()
    if nan.any():
        raise HarnessError(f"{method.name}: {int(nan.sum())} of {nan.numel()} {what} are NaN; a rank against them "
                           "would mean nothing. The method's score (or the checkpoint evaluated) is broken.")
    return scores


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
    """The items `index` (any shape) of every feature: shape (*index.shape, *feature item shape). index_select
    on the flat index: a few times faster than advanced indexing for the candidates' features."""
    flat = index.reshape(-1)
    return {name: value.index_select(0, flat).view(*index.shape, *value.shape[1:]) for name, value in features.items()}


def sides(text: Features, video: Features, direction: str) -> tuple[Features, Features]:
    """(queries, gallery) of a direction."""
    return (text, video) if direction == "t2v" else (video, text)


@torch.no_grad()
def query_blocks(score_fn: Callable, text: Features, video: Features, direction: str, chunk: int,
                 device: torch.device, mixed_precision: bool = False,
                 select: Callable[[int], bool] = lambda start: True) -> Iterator[tuple[int, Tensor]]:
    """(start, block): `chunk` queries (texts for t2v, videos for v2t) against the whole gallery, a
    (queries, gallery) float32 block on the CPU. Built from the same `chunk` x `chunk` tiles as
    `score_in_chunks`, so every score is the one the full matrix holds; no more than one block is held."""
    queries, gallery = sides(text, video, direction)
    n_queries, n_gallery = count(queries), count(gallery)
    for q0 in filter(select, range(0, n_queries, chunk)):
        query_chunk = move_features(slice_features(queries, q0, q0 + chunk), device)
        block = torch.empty(min(chunk, n_queries - q0), n_gallery)
        for g0 in range(0, n_gallery, chunk):
            gallery_chunk = move_features(slice_features(gallery, g0, g0 + chunk), device)
            with autocast(device, mixed_precision):
                tile = score_fn(query_chunk, gallery_chunk) if direction == "t2v" else \
                    score_fn(gallery_chunk, query_chunk).t()
            block[:, g0 : g0 + chunk] = tile.float().cpu()
        yield q0, block


def rank_block(block: Tensor, q0: int, owners: Tensor, n_videos: int, direction: str,
               v2t_convention: str) -> Ranking:
    """The ranks of the queries q0.. whose rows against the whole gallery `block` holds."""
    queries = torch.arange(q0, q0 + block.shape[0])
    if direction == "t2v":
        return text_to_video(block, owners[queries])
    return videos_against_captions(block, queries, owners, n_videos, v2t_convention)


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


def bytes_per_item(features: Features) -> int:
    return sum(value[0].numel() * value.element_size() for value in features.values())


@torch.no_grad()
def fine_scores(method: Method, queries: Features, gallery: Features, candidates: Tensor, direction: str,
                device: torch.device, mixed_precision: bool = False, budget: int = GATHER_BYTES,
                query_index: Tensor | None = None) -> Tensor:
    """(n, k) float64: `method.score` of query i with each of its candidates (gallery indices, (n, k)) and
    nothing else. Query i is `queries` item `query_index[i]` (default: item i). The features of the larger side
    are gathered once: where a gallery item's are the larger (t2v: a video), the pairs are grouped by gallery
    item (`fine_scores_by_item`); where a query's are (v2t: a video against its candidate captions), each query
    is scored against its k candidates at once (`fine_scores_by_query`)."""
    query_index = torch.arange(len(candidates)) if query_index is None else query_index
    by = fine_scores_by_query if bytes_per_item(queries) > bytes_per_item(gallery) else fine_scores_by_item
    fine = by(method, queries, gallery, candidates, query_index, direction, device, mixed_precision, budget)
    return refuse_nan(fine, method, f"fine scores of {direction} candidates")


def pair_scorer(method: Method, direction: str) -> Callable[[Features, Features], Tensor]:
    """score(some queries, some gallery items) -> (queries, items), whichever side is the text."""
    return method.score if direction == "t2v" else lambda queries, items: method.score(items, queries).t()


def fine_scores_by_item(method: Method, queries: Features, gallery: Features, candidates: Tensor, query_index: Tensor,
                        direction: str, device: torch.device, mixed_precision: bool, budget: int) -> Tensor:
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
            chosen_by = move_features(take(queries, query_index[positions // k]), device)
            with autocast(device, mixed_precision):
                scores = torch.func.vmap(one_item)(chosen_by, move_features(take(gallery, items[part]), device))
            fine[positions[filled]] = scores.double().cpu()[filled]
    return fine.view(n, k)


def fine_scores_by_query(method: Method, queries: Features, gallery: Features, candidates: Tensor,
                         query_index: Tensor, direction: str, device: torch.device, mixed_precision: bool,
                         budget: int) -> Tensor:
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
        query = move_features(take(queries, query_index[rows]), device)
        with autocast(device, mixed_precision):
            scores = torch.func.vmap(one_query)(query, move_features(take(gallery, candidates[rows]), device))
        fine[rows] = scores.double().cpu()
    return fine


def rerank_block(method: Method, queries: Features, gallery: Features, block: Tensor, k: int, direction: str,
                 device: torch.device, mixed_precision: bool = False) -> Tensor:
    """Coarse-to-fine retrieval of the queries of one block (rows: queries, columns: the gallery, coarse
    scores). Each query keeps its top-k gallery items by the coarse score; only those pairs get the fine
    score (`method.score`), and they are placed above every other item, which keeps its coarse order.
    Returns the float64 block to rank; exactly k fine scores per query are computed (`fine_scores`)."""
    k = min(k, block.shape[1])
    candidates, highest_outside = top_k_and_next(block, k)
    fine = fine_scores(method, queries, gallery, candidates, direction, device, mixed_precision)
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

    def __init__(self, method: Method, queries: Features, gallery: Features, k: int, owners: Tensor,
                 n_videos: int, direction: str, v2t_convention: str, device: torch.device,
                 mixed_precision: bool = False, fine_batch: int = FINE_BATCH):
        self.method, self.queries, self.gallery, self.k = method, queries, gallery, min(k, count(gallery))
        self.owners, self.n_videos, self.direction, self.v2t_convention = owners, n_videos, direction, v2t_convention
        self.device, self.mixed_precision, self.fine_batch = device, mixed_precision, fine_batch
        self.counted = direction == "t2v" or one_caption_per_video(owners, n_videos)
        self.waiting: list[WaitingBlock] = []

    def add(self, q0: int, block: Tensor, coarse: Ranking) -> list[tuple[int, Ranking]]:
        """Take block q0.. (its coarse scores and the coarse stage's `coarse` ranks); returns the blocks
        whose two-stage ranks are now known."""
        if not self.counted:
            queries = slice_features(self.queries, q0, q0 + block.shape[0])
            reranked_block = rerank_block(self.method, queries, self.gallery, block, self.k, self.direction,
                                          self.device, self.mixed_precision)
            return [(q0, rank_block(reranked_block, q0, self.owners, self.n_videos, self.direction,
                                    self.v2t_convention))]
        self.waiting.append(self.wait(q0, block, coarse))
        if sum(len(waiting.candidates) for waiting in self.waiting) < self.fine_batch:
            return []
        return self.finish()

    def wait(self, q0: int, block: Tensor, coarse: Ranking) -> WaitingBlock:
        candidates, _ = top_k_and_next(block, self.k)
        queries_of_block = torch.arange(q0, q0 + block.shape[0])
        truth = self.owners[queries_of_block] if self.direction == "t2v" else queries_of_block
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
                           self.direction, self.device, self.mixed_precision, query_index=rows)
        done, start = [], 0
        for waiting in self.waiting:
            block_fine, start = fine[start : start + len(waiting.candidates)], start + len(waiting.candidates)
            done.append((waiting.q0, self.counted_ranks(waiting, block_fine)))
        self.waiting = []
        return done

    @staticmethod
    def counted_ranks(waiting: WaitingBlock, fine: Tensor) -> Ranking:
        inside = waiting.is_truth.any(dim=1)
        fine_truth = fine.gather(1, waiting.is_truth.to(torch.uint8).argmax(dim=1, keepdim=True))
        above = torch.where(inside, count_true(fine > fine_truth, dim=1), waiting.above_outside)
        equal = torch.where(inside, count_true(fine == fine_truth, dim=1) - 1, waiting.equal_outside)
        return Ranking((above + 1).numpy().astype(np.int64), (equal > 0).numpy())


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


def mine(start: int, chunk: int) -> bool:
    """Whether the query block starting at `start` is this process's: in a process group the blocks are dealt
    out in turn, so the rank work is split by query rows."""
    return (start // chunk) % distributed.world_size() == distributed.rank()


def stage_blocks(method: Method, text: Features, video: Features, direction: str, chunk: int,
                 device: torch.device, mixed_precision: bool, index: IndexSpec | None,
                 recall: dict[str, float]) -> Iterator[tuple[int, Tensor]]:
    """This process's query blocks of the first stage: the engine's scores, or an index's search (its recall
    stored in `recall` when it is approximate)."""
    score_fn = method.score if method.candidates() is None else method.coarse_score
    if index is None:
        return query_blocks(score_fn, text, video, direction, chunk, device, mixed_precision,
                            lambda start: mine(start, chunk))
    vectors = method.inner_product(text, video)
    if vectors is None:
        stage = "score" if method.candidates() is None else "coarse_score"
        raise HarnessError(f"evaluation.index={index.kind}: {method.name} declares no inner product for its "
                           f"{stage} (Method.inner_product returns None), so no index can search its gallery; "
                           "give evaluation.index: none for it.")
    queries, gallery = (vectors.text, vectors.video) if direction == "t2v" else (vectors.video, vectors.text)
    built = faiss_index.build(index, gallery, device)
    if index.approximate:
        exact = faiss_index.build(faiss_index.IndexSpec("exact"), gallery, device)
        recall[direction] = faiss_index.recall(built, exact, queries, chunk)
    blocks = faiss_index.index_blocks(built, queries, gallery.shape[0], faiss_index.depth(index, gallery.shape[0]),
                                      chunk)
    return ((start, block) for start, block in blocks if mine(start, chunk))


def every_ranks_blocks(blocks: list[tuple[int, Ranking]]) -> Ranking:
    """The rankings of every rank's query blocks, in query order (one process: its own)."""
    merged = [block for part in distributed.gather_objects(blocks) for block in part]
    return concat_rankings([ranking for _, ranking in sorted(merged, key=lambda item: item[0])])


@torch.no_grad()
def both_directions_in_one_pass(method: Method, text: Features, video: Features, owners: Tensor, chunk: int,
                                device: torch.device, mixed_precision: bool = False) -> dict[str, Ranking]:
    """t2v and v2t ranks of a square split from one pass over the text blocks. v2t: video v's rank is 1 + the
    captions scored above its own on column v (ties: the others scored equal), the same count the full
    matrix gives under either v2t convention. Its own caption's score is taken first from the diagonal tiles,
    the very tiles (same inputs, same call) the pass computes again, so every comparison is bitwise the full
    matrix's; that costs n x chunk extra pairs instead of a second pass of n x n, and none where one block holds
    the whole matrix (n <= chunk)."""
    n = count(video)
    own = torch.empty(n)
    one_block = n <= chunk  # the pass's one block is the whole matrix: its diagonal is the own scores
    for start in range(0, 0 if one_block else n, chunk):
        text_chunk = move_features(slice_features(text, start, start + chunk), device)
        video_chunk = move_features(slice_features(video, start, start + chunk), device)
        with autocast(device, mixed_precision):
            own[start : start + chunk] = method.score(text_chunk, video_chunk).float().cpu().diagonal()
    above, equal, blocks = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), []
    for q0, block in query_blocks(method.score, text, video, "t2v", chunk, device, mixed_precision,
                                  lambda start: mine(start, chunk)):
        refuse_nan(block, method, f"scores of captions {q0}..{q0 + len(block) - 1}")
        if one_block:
            own = block.diagonal().clone()
        blocks.append((q0, rank_block(block, q0, owners, n, "t2v", MULTI_CAPTION_V2T)))
        above += count_true(block > own, dim=0)
        equal += count_true(block == own, dim=0)
    above, equal = (sum(counts) for counts in zip(*distributed.gather_objects((above, equal))))
    v2t = Ranking((above + 1).numpy().astype(np.int64), (equal > 1).numpy())  # equal counts the own caption
    return {"t2v": every_ranks_blocks(blocks), "v2t": v2t}


def rank_features(method: Method, text: Features, video: Features, owners: Tensor, chunk: int,
                  device: torch.device, mixed_precision: bool = False, directions: tuple[str, ...] = ("t2v", "v2t"),
                  v2t_convention: str = MULTI_CAPTION_V2T, index: IndexSpec | None = None) -> list[StageRanks]:
    """Ranks of every query in each direction, `chunk` queries at a time, never holding the full matrix:
    one stage for one-stage methods; the coarse stage and the two-stage result for two-stage methods.
    `owners`: the video of each caption. In a process group every rank ranks its share of the query blocks
    and every rank ends with all the ranks."""
    n_videos, k, recall = count(video), method.candidates(), {}
    first: dict[str, Ranking] = {}
    second: dict[str, Ranking] = {}
    computed: dict[str, int] = {}
    if k is None and index is None and set(directions) == {"t2v", "v2t"} and one_caption_per_video(owners, n_videos):
        first = both_directions_in_one_pass(method, text, video, owners, chunk, device, mixed_precision)
        directions = ()
    for direction in directions:
        queries, gallery = sides(text, video, direction)
        coarse, fine, computed[direction] = [], [], 0
        ranker = None if k is None else TwoStageRanker(method, queries, gallery, k, owners, n_videos, direction,
                                                       v2t_convention, device, mixed_precision)
        for q0, block in stage_blocks(method, text, video, direction, chunk, device, mixed_precision, index,
                                      recall):
            refuse_nan(block, method, f"{direction} scores of queries {q0}..{q0 + len(block) - 1}")
            coarse_ranking = rank_block(block, q0, owners, n_videos, direction, v2t_convention)
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
                   directions: tuple[str, ...] = ("t2v", "v2t"), cache: FeatureCache | None = None,
                   v2t_convention: str = MULTI_CAPTION_V2T, index: IndexSpec | None = None) -> list[StageRanks]:
    """Every video and every query encoded exactly once (or read from `cache`), then ranked chunk by chunk
    (`rank_features`), by the engine's scores or, with `index`, by a FAISS index's search."""
    method.eval()
    video, text = encode_split(method, split, store, words, batch_size, device, mixed_precision, quiet, cache)
    owners = torch.as_tensor(split.caption_video, dtype=torch.long)
    return rank_features(method, text, video, owners, chunk, device, mixed_precision, directions, v2t_convention,
                         index)
