"""Two-stage (coarse-to-fine) retrieval in the engine: batched fine scores equal the per-query loop."""

from __future__ import annotations

import pytest
import torch

from conftest import rerank_row
from harness.retrieval.ranking import rank_features
from harness.retrieval.two_stage import TwoStageRanker, rerank_block, top_k
from harness.api.method import Method
from harness.retrieval.metrics import Truth, text_to_video, video_to_text
from harness.retrieval.tiles import Scoring

CPU = torch.device("cpu")


class Toy(Method):
    """Coarse and fine scores read from fixed matrices (features are item indices); records the shapes of
    the pairs it is asked to fine-score (one record per vmap call: the shapes of one mapped call)."""

    name = "toy"

    def __init__(self, coarse: torch.Tensor, fine: torch.Tensor, k: int):
        torch.nn.Module.__init__(self)
        self.coarse, self.fine, self.k, self.asked = coarse, fine, k, []

    def candidates(self) -> int:
        return self.k

    def coarse_score(self, text, video):
        return self.coarse[text["i"]][:, video["j"]]

    def score(self, text, video):
        self.asked.append((text["i"].shape[0], video["j"].shape[0]))
        return self.fine[text["i"]][:, video["j"]]


def reference(method: Toy, coarse: torch.Tensor, k: int, direction: str) -> torch.Tensor:
    """The per-query loop the engine replaced: each query's top-k by the coarse score (ties at the k-th
    place: lowest index first) get the fine score and are placed above the rest, which keeps its coarse
    order. Returns the (n_text, n_video) float64 matrix to rank in that direction."""
    scores = coarse.double().t().clone() if direction == "v2t" else coarse.double().clone()
    k = min(k, scores.shape[1])
    candidates = torch.argsort(-scores, dim=1, stable=True)[:, :k]
    for q in range(scores.shape[0]):
        fine = (method.fine[:, q][candidates[q]] if direction == "v2t" else method.fine[q][candidates[q]]).double()
        rerank_row(scores[q], candidates[q], fine)
    return scores.t() if direction == "v2t" else scores


def planted(n_text: int, n_video: int, seed: int, levels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n_text, n_video), generator=generator).float()


SHAPES = {"square": (10, list(range(10))), "multi-caption": (6, [0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 5, 1, 3, 0])}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3, 6, 50])
@pytest.mark.parametrize("chunk", [1, 4, 32])
def test_batched_two_stage_equals_the_per_query_reference(shape, k, chunk):
    n_video, owners = SHAPES[shape]
    owners = torch.tensor(owners)
    coarse = planted(len(owners), n_video, seed=k, levels=4)  # ties at the k-th place too
    fine = planted(len(owners), n_video, seed=100 + k, levels=5)
    method = Toy(coarse, fine, k)
    text, video = {"i": torch.arange(len(owners))}, {"j": torch.arange(n_video)}
    for convention in ("max-over-captions", "all-captions"):
        first, second = rank_features(method, text, video, owners, Scoring(CPU, chunk), v2t_convention=convention)
        expected = {"t2v": text_to_video(reference(method, coarse, k, "t2v"), owners),
                    "v2t": video_to_text(reference(method, coarse, k, "v2t"), owners, n_video, convention)}
        for direction, ranking in expected.items():
            assert second.rankings[direction].ranks.tolist() == ranking.ranks.tolist(), (direction, convention)
            assert second.rankings[direction].tied.tolist() == ranking.tied.tolist(), (direction, convention)
        assert first.rankings["t2v"].ranks.tolist() == text_to_video(coarse, owners).ranks.tolist()
        # exactly k fine scores per query, each asked as one gallery item with the queries that chose it
        # (padded to a power of two): never a query with items it did not choose
        assert second.fine_scores == {"t2v": len(owners) * min(k, n_video), "v2t": n_video * min(k, len(owners))}
        assert all(min(shape) == 1 and max(shape) & (max(shape) - 1) == 0 for shape in method.asked)
        assert max(max(shape) for shape in method.asked) < 2 * max(len(owners), n_video)


def test_top_k_takes_the_lowest_indices_among_ties_at_the_kth_place():
    scores = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 2, 3], [0, 1, 2]]
    assert top_k(scores, 4).tolist() == [[1, 2, 3, 4], [0, 1, 2, 3]]


@pytest.mark.parametrize("larger", ["video", "text"])  # grouped by the side whose features are the larger
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_fine_scores_are_each_querys_own_candidates_whatever_the_gather_budget(direction, larger):
    from harness.retrieval.two_stage import fine_scores

    coarse, fine = planted(30, 12, seed=5, levels=3), planted(30, 12, seed=6, levels=7)
    method = Toy(coarse, fine, 4)
    text, video = {"i": torch.arange(30)}, {"j": torch.arange(12)}
    (video if larger == "video" else text)["padding"] = torch.zeros(30 if larger == "text" else 12, 16)
    queries, gallery, by_query = (text, video, fine) if direction == "t2v" else (video, text, fine.t())
    candidates = top_k((coarse if direction == "t2v" else coarse.t()).double(), 4)  # items chosen by many queries
    expected = by_query.double().gather(1, candidates)
    for budget in (1, 64, 2**28):  # one item per call ... every item of a width in one call
        assert torch.equal(fine_scores(method, queries, gallery, candidates, direction, Scoring(CPU), budget=budget),
                           expected)


@pytest.mark.parametrize("levels", [2, 5, 10**6])  # many ties across the k-th place ... almost none
def test_top_k_equals_choosing_by_counting_on_every_row(levels):
    from harness.retrieval.two_stage import lowest_index_top_k, top_k_and_next

    scores = planted(200, 40, seed=levels, levels=levels)
    for k in (1, 7, 39, 40):
        candidates, following = top_k_and_next(scores, k)
        assert torch.equal(candidates, lowest_index_top_k(scores, k))
        if k < 40:  # the (k+1)-th highest score is the highest outside the k
            outside = torch.ones_like(scores, dtype=torch.bool).scatter_(1, candidates, False)
            assert torch.equal(following, scores.masked_fill(~outside, -torch.inf).amax(dim=1, keepdim=True))
        else:
            assert following is None


@pytest.mark.parametrize("fine_batch", [1, 100])  # each block's candidates fine-scored alone, or both blocks'
@pytest.mark.parametrize("depth", [2, 5, 9, 12])  # an index returning fewer items than k, about k, and all
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_two_stage_ranks_counted_from_the_candidates_equal_the_reranked_blocks_ranks(direction, depth, fine_batch):
    """The counting path (one ground truth per query) against ranking the reranked float64 block, with
    planted ties and the -inf an index gives the items it does not return; the blocks' candidates
    fine-scored block by block or together."""
    n, k = 12, 5
    coarse = planted(n, n, seed=depth, levels=3)
    generator = torch.Generator().manual_seed(depth)
    unreturned = torch.rand(n, n, generator=generator).argsort(dim=1) >= depth
    coarse = coarse.masked_fill(unreturned, -torch.inf)
    method = Toy(coarse if direction == "t2v" else coarse.t(), planted(n, n, seed=50 + depth, levels=3), k)
    text, video = {"i": torch.arange(n)}, {"j": torch.arange(n)}
    queries, gallery = (text, video) if direction == "t2v" else (video, text)
    owners = torch.arange(n)
    truth = Truth(owners, n, direction, "max-over-captions")
    ranker = TwoStageRanker(method, queries, gallery, k, truth, Scoring(CPU), fine_batch=fine_batch)
    counted, expected = [], []
    for q0, rows in ((0, slice(0, 7)), (7, slice(7, n))):
        block = coarse[rows]
        part = {name: value[rows] for name, value in queries.items()}
        done = ranker.add(q0, block, truth.rank(block, q0))
        assert len(done) == (1 if fine_batch == 1 else 0)  # a block waits until fine_batch queries are in
        counted += done
        expected.append(truth.rank(rerank_block(method, part, gallery, block, k, direction, Scoring(CPU)), q0))
    counted += ranker.finish()
    assert [q0 for q0, _ in counted] == [0, 7]
    for (_, ranking), reference in zip(counted, expected):
        assert ranking.ranks.tolist() == reference.ranks.tolist() and ranking.tied.tolist() == reference.tied.tolist()


def test_each_video_query_s_features_are_gathered_once_in_v2t(monkeypatch):
    """v2t: a query is a video, whose features (EERCF: every patch token) are the large side; the fine scores take
    each query's once, with its k candidate captions, instead of once per pair."""
    import harness.retrieval.two_stage as engine

    n, k = 24, 5
    method = Toy(planted(n, n, seed=7, levels=4), planted(n, n, seed=8, levels=9), k)
    text, video = {"i": torch.arange(n)}, {"j": torch.arange(n), "patches": torch.zeros(n, 64)}
    gathered = []
    real_take = engine.take

    def counting_take(features, index):
        if "patches" in features:
            gathered.append(index.numel())
        return real_take(features, index)

    monkeypatch.setattr(engine, "take", counting_take)
    coarse, two_stage = rank_features(method, text, video, torch.arange(n), Scoring(CPU, 8), directions=("v2t",))
    assert sum(gathered) == n  # once per query; before, once per (query, candidate) pair: n x k
    expected = reference(method, method.coarse, k, "v2t")
    assert (two_stage.rankings["v2t"].ranks == video_to_text(expected, torch.arange(n), n).ranks).all()


class CountingScore(Method):
    name = "counting"

    def __init__(self):
        torch.nn.Module.__init__(self)
        self.pairs = 0

    def score(self, text, video):
        self.pairs += text["t"].shape[0] * video["v"].shape[0]
        return text["t"] @ video["v"].t()


@pytest.mark.parametrize("n, chunk", [(20, 32), (20, 20), (40, 16)])
def test_a_square_split_is_scored_once_where_one_chunk_holds_it(n, chunk):
    torch.manual_seed(3)
    method = CountingScore()
    text, video = {"t": torch.randn(n, 8)}, {"v": torch.randn(n, 8)}
    (stage,) = rank_features(method, text, video, torch.arange(n), Scoring(CPU, chunk))
    # the diagonal tiles, taken first where several blocks make the matrix
    extra = 0 if n <= chunk else sum(min(chunk, n - start) ** 2 for start in range(0, n, chunk))
    assert method.pairs == n * n + extra
    full = text["t"] @ video["v"].t()
    assert (stage.rankings["t2v"].ranks == text_to_video(full, torch.arange(n)).ranks).all()
    assert (stage.rankings["v2t"].ranks == video_to_text(full, torch.arange(n), n).ranks).all()
