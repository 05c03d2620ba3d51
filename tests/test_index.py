"""The FAISS index: exact search gives the engine's ranks; approximate rows are labelled with the recall."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import write_clip
from baselines.clip4clip.meanp import MeanP
from baselines.clip4clip.sequential import SeqLSTM, SeqTransf
from baselines.zeroshot import ZeroShot
from harness.api.backbone import Backbone, load_clip
from harness.errors import HarnessError
from harness.retrieval.ranking import rank_features
from harness.retrieval.index import IndexSpec
from harness.api.method import InnerProduct, Method
from harness.pipeline.run import stage_rows
from methods.eercf import EERCF
from harness.retrieval.tiles import Scoring

CPU = torch.device("cpu")


class Dot(Method):
    """score = 2 <t, v> on small-integer vectors: exact in float32, with planted ties."""

    name = "dot"

    def __init__(self, k: int | None = None):
        torch.nn.Module.__init__(self)
        self.k = k

    def candidates(self):
        return self.k

    def score(self, text, video):
        return 2.0 * text["t"] @ video["v"].t() + (0.5 * video["v"][:, 0] if self.k else 0.0)

    def coarse_score(self, text, video):
        return 2.0 * text["t"] @ video["v"].t()

    def inner_product(self, text, video):
        return InnerProduct(text["t"], video["v"], 2.0)


def integer_features(n_text: int, n_video: int, dim: int = 4):
    generator = torch.Generator().manual_seed(n_text)
    return ({"t": torch.randint(-2, 3, (n_text, dim), generator=generator).float()},
            {"v": torch.randint(-2, 3, (n_video, dim), generator=generator).float()})


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("convention", ["max-over-captions", "all-captions"])
def test_exact_index_gives_the_engines_ranks(k, convention):
    owners = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 4, 5, 6, 7, 7, 1])
    text, video = integer_features(len(owners), 8)
    method = Dot(k)
    engine = rank_features(method, text, video, owners, Scoring(CPU, 5), v2t_convention=convention)
    searched = rank_features(method, text, video, owners, Scoring(CPU, 5), v2t_convention=convention,
                             index=IndexSpec("exact"))
    assert engine[0].rankings["t2v"].ties > 0
    for ours, theirs in zip(searched, engine):
        assert ours.index == "exact" and ours.index_recall == {}
        for direction in ("t2v", "v2t"):
            assert ours.rankings[direction].ranks.tolist() == theirs.rankings[direction].ranks.tolist()
            assert ours.rankings[direction].tied.tolist() == theirs.rankings[direction].tied.tolist()


@pytest.mark.parametrize("kind, params", [("ivf", {"nlist": 8, "nprobe": 1, "depth": 20}),
                                          ("hnsw", {"M": 4, "ef_search": 4, "depth": 20})])
def test_approximate_rows_are_labelled_and_carry_the_index_recall(tmp_path, kind, params):
    torch.manual_seed(0)
    text, video = {"t": torch.randn(300, 16)}, {"v": torch.randn(300, 16)}
    owners = torch.arange(300)
    (stage,) = rank_features(Dot(), text, video, owners, Scoring(CPU, 64), index=IndexSpec(kind, params))
    assert set(stage.index_recall) == {"t2v", "v2t"}
    assert all(0.0 < r < 1.0 for r in stage.index_recall.values())  # nprobe 1 of 8 lists misses some
    split = SimpleNamespace(videos=[SimpleNamespace(id=f"v{i}") for i in range(300)], name="test",
                            captions=[f"c{i}" for i in range(300)], caption_video=owners.tolist(), coverage="300/300",
                            shape="square")
    suite = SimpleNamespace(protocol=SimpleNamespace(multi_caption_v2t="max-over-captions"),
                            benchmark=SimpleNamespace(name="bench", limit=None))
    rows = stage_rows(tmp_path, suite, "dot", split, stage, None, {"distribution": None, "version": None, "digest": "d"})
    assert [(r["index"], r["approximate"], r["index_recall"]) for r in rows] == [
        (kind, True, stage.index_recall["t2v"]), (kind, True, stage.index_recall["v2t"])]


def test_an_index_for_a_method_without_inner_product_is_refused_by_name():
    class Cross(Dot):
        name = "cross"
        inner_product = Method.inner_product

    text, video = integer_features(4, 4)
    with pytest.raises(HarnessError, match="cross declares no inner product"):
        rank_features(Cross(), text, video, torch.arange(4), Scoring(CPU, 2), index=IndexSpec("exact"))


def test_bad_index_parameters_are_refused():
    with pytest.raises(HarnessError, match="nprobes is not a parameter of the ivf index"):
        IndexSpec("ivf", {"nprobes": 3})
    with pytest.raises(HarnessError, match="depth=0"):
        IndexSpec("hnsw", {"depth": 0})


@pytest.fixture(scope="module")
def square_clip(tmp_path_factory):
    """A tiny CLIP whose text width is its embedding width, as the sequential heads need."""
    return write_clip(tmp_path_factory.mktemp("clip") / "square_clip.pt", embed_dim=64)


@pytest.mark.parametrize("cls", [ZeroShot, MeanP, SeqLSTM, SeqTransf, EERCF])
def test_declared_inner_product_equals_the_methods_own_score(square_clip, cls):
    torch.manual_seed(0)
    params = {EERCF: lambda: EERCF.Params(frames=2, layers=1), SeqTransf: lambda: SeqTransf.Params(layers=1)}.get(
        cls, cls.Params)()
    method = cls(Backbone(load_clip("auto", square_clip, 12)), params).eval()
    frames, mask = torch.randn(3, 2, 3, 16, 16), torch.tensor([[True, True], [True, False], [True, True]])
    tokens = torch.randint(1, 1000, (4, 12))
    with torch.no_grad():
        video, text = method.encode_video(frames, mask), method.encode_text(tokens, torch.ones_like(tokens).bool())
        own = method.coarse_score(text, video) if method.candidates() else method.score(text, video)
        vectors = method.inner_product(text, video)
    assert torch.allclose(vectors.scale * vectors.text @ vectors.video.t(), own, rtol=1e-6, atol=1e-6)
