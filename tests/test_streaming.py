"""Ranks computed chunk by chunk of queries equal the ranks of the full matrix, whatever the chunk size."""

from __future__ import annotations

import pytest
import torch

from harness.retrieval.ranking import rank_features
from harness.api.method import Method
from harness.retrieval.metrics import text_to_video, video_to_text
from harness.retrieval.tiles import Scoring

CPU = torch.device("cpu")


class Lookup(Method):
    """Scores read from a fixed matrix: features are item indices, so every score is the same number
    whichever chunk it is computed in."""

    name = "lookup"

    def __init__(self, matrix: torch.Tensor):
        torch.nn.Module.__init__(self)
        self.matrix = matrix

    def score(self, text, video):
        return self.matrix[text["i"]][:, video["j"]]


def planted(n_text: int, n_video: int, seed: int) -> torch.Tensor:
    """Small integers: many exact ties, the ground truth's included."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 6, (n_text, n_video), generator=generator).float()


# (videos, owner of each caption): square, multi-caption with uneven and interleaved captions, a partial
# gallery (videos kept, some captions' videos dropped: the owners skip nothing but one video has none left),
# a paragraph split (one paragraph per video: square).
SHAPES = {
    "square": (9, list(range(9))),
    "multi-caption": (7, [0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6, 1, 3, 5]),
    "interleaved": (5, [4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 2, 2]),
    "partial": (6, [0, 1, 1, 3, 4, 4, 5, 5]),  # video 2 lost its captions
    "paragraph": (4, [0, 1, 2, 3]),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_streaming_ranks_equal_the_full_matrix_ranks(shape, chunk):
    n_video, owners = SHAPES[shape]
    owners = torch.tensor(owners)
    matrix = planted(len(owners), n_video, seed=len(owners) + chunk)
    method = Lookup(matrix)
    text, video = {"i": torch.arange(len(owners))}, {"j": torch.arange(n_video)}
    for convention in ("max-over-captions", "all-captions"):
        (stage,) = rank_features(method, text, video, owners, Scoring(CPU, chunk), v2t_convention=convention)
        t2v, v2t = text_to_video(matrix, owners), video_to_text(matrix, owners, n_video, convention)
        assert stage.rankings["t2v"].ranks.tolist() == t2v.ranks.tolist()
        assert stage.rankings["t2v"].tied.tolist() == t2v.tied.tolist()
        assert stage.rankings["v2t"].ranks.tolist() == v2t.ranks.tolist()
        assert stage.rankings["v2t"].tied.tolist() == v2t.tied.tolist()
    assert stage.rankings["t2v"].ties > 0  # the planted ties are there to be counted


def test_float_scores_of_a_real_product_are_those_of_the_full_matrix():
    """Same tiles as the full-matrix path: even float32 rounding is the same, so ranks are bit-equal."""
    from harness.retrieval.tiles import score_in_chunks

    torch.manual_seed(0)

    class Dot(Lookup):
        def score(self, text, video):
            return 3.7 * text["t"] @ video["v"].t()

    text, video = {"t": torch.randn(23, 16)}, {"v": torch.randn(11, 16)}
    owners = torch.arange(23) % 11
    method = Dot(torch.empty(0))
    full = score_in_chunks(method, text, video, Scoring(CPU, 4))
    (stage,) = rank_features(method, text, video, owners, Scoring(CPU, 4))
    assert stage.rankings["t2v"].ranks.tolist() == text_to_video(full, owners).ranks.tolist()
    assert stage.rankings["v2t"].ranks.tolist() == video_to_text(full, owners, 11).ranks.tolist()


def test_a_square_split_in_one_pass_gives_the_full_matrix_ranks_of_a_real_product():
    """Square, both directions: v2t is counted in the same pass as t2v against each video's own score taken
    from the diagonal tiles; float32 ranks and ties bit-equal to the full matrix's."""
    from harness.retrieval.tiles import score_in_chunks

    class Dot(Lookup):
        def score(self, text, video):
            return 3.7 * text["t"] @ video["v"].t()

    torch.manual_seed(1)
    text, video = {"t": torch.randn(37, 16)}, {"v": torch.randn(37, 16)}
    video["v"][5] = video["v"][9]  # two identical videos: ties in t2v and v2t
    owners, method = torch.arange(37), Dot(torch.empty(0))
    for chunk in (1, 4, 37, 64):
        full = score_in_chunks(method, text, video, Scoring(CPU, chunk))
        (stage,) = rank_features(method, text, video, owners, Scoring(CPU, chunk))
        for direction, expected in (("t2v", text_to_video(full, owners)), ("v2t", video_to_text(full, owners, 37))):
            assert stage.rankings[direction].ranks.tolist() == expected.ranks.tolist()
            assert stage.rankings[direction].tied.tolist() == expected.tied.tolist()
        assert stage.rankings["t2v"].ties >= 2


def test_a_multi_caption_split_in_one_pass_gives_the_full_matrix_ranks_of_a_real_product():
    """Multi-caption, both directions, v2t by the max over each video's captions: folded from the t2v pass where the
    videos fit in one block (chunk >= videos), two passes otherwise; float32 ranks and ties bit-equal to the full
    matrix's either way."""
    from harness.retrieval.tiles import score_in_chunks

    class Dot(Lookup):
        def score(self, text, video):
            return 3.7 * text["t"] @ video["v"].t()

    torch.manual_seed(2)
    owners = torch.tensor([3, 0, 0, 1, 2, 2, 2, 4, 1, 3, 4, 0, 5, 5, 1])
    text, video = {"t": torch.randn(len(owners), 16)}, {"v": torch.randn(6, 16)}
    video["v"][2] = video["v"][4]  # two identical videos: ties in t2v
    method = Dot(torch.empty(0))
    for chunk in (2, 5, 6, 64):
        full = score_in_chunks(method, text, video, Scoring(CPU, chunk))
        (stage,) = rank_features(method, text, video, owners, Scoring(CPU, chunk))
        for direction, expected in (("t2v", text_to_video(full, owners)), ("v2t", video_to_text(full, owners, 6))):
            assert stage.rankings[direction].ranks.tolist() == expected.ranks.tolist()
            assert stage.rankings[direction].tied.tolist() == expected.tied.tolist()
        assert stage.rankings["t2v"].ties >= 2
