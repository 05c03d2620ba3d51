"""Two-stage (coarse-to-fine) retrieval in the engine, on a toy method with known coarse and fine scores."""

from __future__ import annotations

import pytest
import torch

from harness.evaluate import two_stage_scores
from harness.method import Method

CPU = torch.device("cpu")


class Toy(Method):
    """Coarse: a_i * b_j. Fine: sin(3 a_i + 7 b_j), counting every pair it is asked for."""

    name = "toy"

    def __init__(self, k: int):
        torch.nn.Module.__init__(self)
        self.k, self.fine_pairs = k, 0

    def candidates(self) -> int:
        return self.k

    def coarse_score(self, text, video):
        return text["a"][:, None] * video["b"][None, :]

    def score(self, text, video):
        self.fine_pairs += text["a"].shape[0] * video["b"].shape[0]
        return torch.sin(3 * text["a"][:, None] + 7 * video["b"][None, :])


@pytest.fixture
def features():
    torch.manual_seed(0)
    return {"a": torch.rand(9) + 0.1}, {"b": torch.randn(13)}


def order(scores: torch.Tensor) -> torch.Tensor:
    return torch.argsort(scores, dim=1, descending=True)


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_k_equal_to_the_gallery_ranks_by_the_fine_score(features, direction):
    text, video = features
    method = Toy(k=13 if direction == "t2v" else 9)
    coarse = method.coarse_score(text, video)
    result, computed = two_stage_scores(method, text, video, coarse, method.k, direction, CPU)
    fine = torch.sin(3 * text["a"][:, None] + 7 * video["b"][None, :]).double()
    if direction == "v2t":
        result, fine = result.t(), fine.t()
    assert torch.equal(order(result), order(fine))
    assert computed == 9 * 13


@pytest.mark.parametrize("direction, queries, gallery", [("t2v", 9, 13), ("v2t", 13, 9)])
def test_small_k_computes_exactly_k_fine_scores_per_query_and_candidates_outrank_the_rest(
        features, direction, queries, gallery):
    text, video = features
    method = Toy(k=4)
    coarse = method.coarse_score(text, video)
    result, computed = two_stage_scores(method, text, video, coarse, 4, direction, CPU)
    assert computed == method.fine_pairs == 4 * queries  # not queries x gallery = 117
    rows = result.t() if direction == "v2t" else result
    by_coarse = coarse.t() if direction == "v2t" else coarse
    for q in range(queries):
        candidates = torch.topk(by_coarse[q], 4).indices
        outside = torch.ones(gallery, dtype=torch.bool)
        outside[candidates] = False
        assert rows[q, candidates].min() > rows[q, outside].max()
        # the rest keeps its coarse order
        assert torch.equal(torch.argsort(rows[q, outside], descending=True),
                           torch.argsort(by_coarse[q, outside], descending=True))


def test_k_larger_than_the_gallery_is_capped(features):
    text, video = features
    method = Toy(k=100)
    result, computed = two_stage_scores(method, text, video, method.coarse_score(text, video), 100, "t2v", CPU)
    assert computed == 9 * 13 and result.shape == (9, 13)
