"""The post-processed rows of an evaluation (DSL, QB-Norm): the engine's streaming ranks against the full-matrix
formulas (test_postprocess.py's references) for every split shape, both directions and several chunk sizes,
the scale each score kind implies, and the rows of a run (labelled, apart, with their settings; a bank that
cannot be formed refused before any work; a method of no score kind skipped visibly)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import write_clip, write_suite
from harness.api.method import Method
from harness.commands.cli import main
from harness.retrieval.metrics import text_to_video, videos_against_captions
from harness.retrieval.post_rows import Dsl, QbNorm
from harness.retrieval.ranking import Evaluation, post_processed_ranks
from harness.retrieval.tiles import Scoring
from test_faults import snapshot
from test_postprocess import dsl_reference, qbnorm_reference

CPU = torch.device("cpu")
OWNERS = {"square": list(range(9)), "multi-caption": [0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 5, 1, 3, 0, 6, 7, 8]}


class Planted(Method):
    """Scores read from fixed matrices (features are item indices): `scores` for the test pairs, `bank_t2v` for
    bank captions against the test videos, `bank_v2t` for test captions against the bank videos."""

    name = "planted"
    score_kind = "logits"

    def __init__(self, scores, bank_t2v, bank_v2t, logit_scale: float):
        torch.nn.Module.__init__(self)
        self.matrices = {("test", "test"): scores, ("bank", "test"): bank_t2v, ("test", "bank"): bank_v2t}
        self.backbone = type("B", (), {"logit_scale": torch.tensor(logit_scale).log()})()

    def candidates(self):
        return None

    def score(self, text, video):
        matrix = self.matrices[("bank" if "bank" in text else "test", "bank" if "bank" in video else "test")]
        return matrix[text.get("i", text.get("bank"))][:, video.get("j", video.get("bank"))]


def planted(rows: int, columns: int, seed: int, levels: int = 5) -> torch.Tensor:
    """Scores on a few levels: many exact ties."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (rows, columns), generator=generator).float() * 7.0


class BankAt(QbNorm):
    """QB-Norm whose bank features are given (the planted method reads the bank matrices by index)."""

    def bank_features(self, *args, **kwargs):
        return {"bank": torch.arange(self.bank_size)}, {"bank": torch.arange(self.bank_size)}


def reference_ranks(matrix: torch.Tensor, owners: torch.Tensor, n_videos: int, direction: str):
    if direction == "t2v":
        return text_to_video(matrix, owners).ranks
    return videos_against_captions(matrix, torch.arange(n_videos), owners, n_videos).ranks


@pytest.mark.parametrize("shape", OWNERS)
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_the_post_processed_ranks_equal_the_full_matrix_formulas(shape, chunk):
    owners = torch.tensor(OWNERS[shape])
    n_text, n_video, n_bank = len(owners), int(owners.max()) + 1, 11
    scale = 50.0  # the score is logits: DSL at temperature 1, QB-Norm's exponent over score / 50
    scores, bank_t2v, bank_v2t = planted(n_text, n_video, 1), planted(n_bank, n_video, 2), planted(n_text, n_bank, 3)
    method = Planted(scores, bank_t2v, bank_v2t, scale)
    text, video = {"i": torch.arange(n_text)}, {"j": torch.arange(n_video)}
    evaluation = Evaluation(Scoring(CPU, chunk), words=4)
    qbnorm = type("Bank", (BankAt,), {"bank_size": n_bank})(bank=SimpleNamespace(name="bank"), benchmark="msrvtt")
    dsl_stage = post_processed_ranks(method, text, video, owners, None, Dsl(), evaluation)
    qb_stage = post_processed_ranks(method, text, video, owners, None, qbnorm, evaluation)
    for direction in ("t2v", "v2t"):
        matrix = scores.double() if direction == "t2v" else scores.double().t()
        expected = reference_ranks(dsl_reference(matrix, 1.0), owners, n_video, direction)
        assert (dsl_stage.rankings[direction].ranks == expected).all(), direction
        assert dsl_stage.post == "dsl" and dsl_stage.post_settings[direction] == {"temperature": 1.0}
        settings = {"t2v": (1, 70.0, 3), "v2t": (1, 70.0, 5)}[direction]
        bank = bank_t2v.double() if direction == "t2v" else bank_v2t.double().t()
        normalised, _ = qbnorm_reference(matrix / scale, bank / scale, *settings)
        expected = reference_ranks(normalised, owners, n_video, direction)
        assert (qb_stage.rankings[direction].ranks == expected).all(), direction
        assert qb_stage.post_settings[direction]["bank_queries"] == n_bank
        assert (qb_stage.post_settings[direction]["k"], qb_stage.post_settings[direction]["beta"],
                qb_stage.post_settings[direction]["theta"]) == settings


def test_a_similarity_s_dsl_runs_at_the_trained_logit_scale_and_a_fixed_temperature_wins():
    owners = torch.arange(6)
    scores = planted(6, 6, 4) / 70.0  # cosine-like
    method = Planted(scores, scores, scores, 42.0)
    method.score_kind = "similarity"
    text, video = {"i": torch.arange(6)}, {"j": torch.arange(6)}
    evaluation = Evaluation(Scoring(CPU, 4), words=4)
    stage = post_processed_ranks(method, text, video, owners, None, Dsl(), evaluation)
    assert stage.post_settings["t2v"]["temperature"] == pytest.approx(42.0)
    expected = reference_ranks(dsl_reference(scores.double(), 42.0), owners, 6, "t2v")
    assert (stage.rankings["t2v"].ranks == expected).all()
    method.dsl_temperature = 100.0  # CLIP-ViP's official variant
    assert post_processed_ranks(method, text, video, owners, None, Dsl(), evaluation).post_settings["t2v"] == \
        {"temperature": 100.0}


@pytest.fixture
def suite_with_post(tmp_path, vatex):
    clip = write_clip(tmp_path / "clip64.pt", embed_dim=64)  # tightTransf's blocks need the text width
    return write_suite(tmp_path, vatex, clip, [{"name": "zeroshot"}, {"name": "clip4clip-tighttransf",
                                                                       "params": {"layers": 1}}],
                       evaluation={"post": ["dsl", "qbnorm"]})


def test_a_run_adds_labelled_post_processed_rows_and_skips_a_method_of_no_score_kind(tmp_path, suite_with_post,
                                                                                   capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(suite_with_post), "--output", str(run_dir), "--quiet"]) == 0
    assert "clip4clip-tighttransf: no post-processed rows: dsl: clip4clip-tighttransf declares no score kind" in \
        capsys.readouterr().out
    results = json.loads((run_dir / "results.json").read_text())
    rows = {(r["method"], r["direction"], r["post"]): r for r in results["rows"]}
    for direction in ("t2v", "v2t"):
        assert {("zeroshot", direction, post) for post in ("none", "dsl", "qbnorm")} <= rows.keys()
        assert ("clip4clip-tighttransf", direction, "dsl") not in rows
        qb = rows[("zeroshot", direction, "qbnorm")]
        assert qb["post_settings"]["bank_queries"] == 6  # one caption per training video
        assert (run_dir / qb["ranks_file"]).is_file() and qb["ranks_file"].endswith(f"zeroshot+qbnorm__test__{direction}.csv")
    assert results["methods"]["zeroshot"]["post_processing"] == ["dsl", "qbnorm"]
    assert set(results["methods"]["clip4clip-tighttransf"]["post_skipped"]) == {"dsl", "qbnorm"}


def test_qbnorm_without_a_training_split_is_refused_before_any_work(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "zeroshot"}], train_split=None,
                        evaluation={"post": ["qbnorm"]})
    before = snapshot(tmp_path)
    assert main(["run", str(suite), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "benchmark.train_split: the QB-Norm rows of zeroshot need a query bank (one caption per training video)" \
        in error
    assert snapshot(tmp_path) == before
