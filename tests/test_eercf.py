"""EERCF: official golden scores, training-mode scores and Pearson terms through the checkpoint import;
the two-stage ranking against the official rerank rule; the Pearson constraint and the loss by hand.

Every shape comes from the golden files (HARNESS_GOLDEN_DIR, see conftest.py): texts, videos, frames,
words and the training pairs from `eercf_golden.pt`; block count and frame positions from the state dict;
the rerank weights from its `rerank` entry. Files of this layout come from the official EERCF code
(`sim_header=seqTransf`) built on a small random OpenAI-layout CLIP: its `state_dict()`; in eval mode on
random `text_ids`/`text_mask` and `video`/`video_mask` (padded frames at the end), the text, word, frame
and patch features and the five evaluation score matrices of its evaluation loop; in training mode with
dropout off on the first `train_pairs` pairs, the forward's five score matrices and its three
Pearson-constraint terms before their weights.
"""

from __future__ import annotations

import re

import pytest
import torch

from conftest import GOLDEN_DIR, load_golden
from harness.api.backbone import Backbone, load_clip, read_state_dict
from harness.errors import CheckpointError
from harness.retrieval.tiles import Scoring
from harness.retrieval.two_stage import rerank_block
from methods.eercf import EERCF, EERCFParams
from methods.eercf.scores import frame_softmax, pearson_constraint

GOLDEN = load_golden("eercf_golden.pt")
OFFICIAL = read_state_dict(GOLDEN_DIR / "eercf_official_state_dict.pt")
# On cosines (every official score carries the logit scale, 100.003 here); measured <= 3.1e-7, i.e.
# <= 3.1e-5 on the scaled scores, whose values reach 34.
TOLERANCE = 1e-5
SCORES = ("video", "weak_frame", "strong_frame", "weak_patch", "strong_patch")  # the official order
N_TEXTS, N_VIDEOS, FRAMES = GOLDEN["text_ids"].shape[0], *GOLDEN["video"].shape[:2]
SEQ_LAYERS = len({m.group(1) for key in OFFICIAL if (m := re.match(r"transformerClip\.resblocks\.(\d+)\.", key))})


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> EERCF:
    path = tmp_path_factory.mktemp("eercf") / "clip.pt"
    torch.save({k[len("clip."):]: v for k, v in OFFICIAL.items() if k.startswith("clip.")}, path)
    params = EERCFParams(layers=SEQ_LAYERS, frames=FRAMES,
                         frame_positions=OFFICIAL["frame_position_embeddings.weight"].shape[0])
    method = EERCF(Backbone(load_clip("auto", path, GOLDEN["text_ids"].shape[1])), params)
    method.load_official(OFFICIAL, "eercf_official_state_dict.pt")
    return method.eval()


@pytest.fixture(scope="module")
def features(official):
    with torch.no_grad():
        return (official.encode_text(GOLDEN["text_ids"], GOLDEN["text_mask"].bool()),
                official.encode_video(GOLDEN["video"], GOLDEN["video_mask"].bool()))


@pytest.fixture(scope="module")
def train_features(official):
    """Features of the first `train_pairs` (text, video) pairs, the official training batch."""
    pairs = GOLDEN["train_pairs"]
    with torch.no_grad():
        return (official.encode_text(GOLDEN["text_ids"][:pairs], GOLDEN["text_mask"][:pairs].bool()),
                official.encode_video(GOLDEN["video"][:pairs], GOLDEN["video_mask"][:pairs].bool()))


def test_official_import_reproduces_the_five_evaluation_scores(official, features):
    with torch.no_grad():
        ours = official.evaluation_scores(*features)
        scale = official.scale()
    for name in SCORES:
        assert ours[name].shape == GOLDEN[f"score_{name}"].shape == (N_TEXTS, N_VIDEOS), name
        assert ((ours[name] - GOLDEN[f"score_{name}"]) / scale).abs().max() <= TOLERANCE, name
    assert (official.coarse_score(*features) - GOLDEN["score_video"]).abs().max() / scale <= TOLERANCE


def test_training_mode_scores_and_pearson_terms_reproduce_the_official_ones(official, train_features):
    with torch.no_grad():
        logits, pearson = official.training_scores(*train_features)
        scale = official.scale()
    for name, expected in zip(SCORES, GOLDEN["train_logits"], strict=True):
        assert logits[name].shape == expected.shape, name
        assert ((logits[name] - expected) / scale).abs().max() <= TOLERANCE, name
    for name, expected in zip(("video", "frame", "patch"), GOLDEN["train_pearson_terms"]):
        assert pearson[name].item() == pytest.approx(expected.item(), rel=1e-5), name


def official_rule(k: int) -> torch.Tensor:
    """The released evaluation: per query, the top k videos by score_video get the offset (100) plus the
    rerank mix, with the weights the golden file records."""
    final = GOLDEN["score_video"].clone()
    weights = GOLDEN["rerank"]["weights"]
    rerank = GOLDEN["rerank"]["offset"] + sum(weight * GOLDEN[f"score_{name}"] for name, weight in weights.items())
    top = torch.argsort(GOLDEN["score_video"], dim=1)[:, -k:]
    for q in range(final.shape[0]):
        final[q, top[q]] = rerank[q, top[q]]
    return final


@pytest.mark.parametrize("k", range(1, N_VIDEOS + 1))
def test_two_stage_ranking_equals_the_official_rule_for_every_k(official, features, k):
    text, video = features
    with torch.no_grad():
        ours = rerank_block(official, text, video, official.coarse_score(text, video), k, "t2v",
                            Scoring(torch.device("cpu")))
    expected = official_rule(k)
    assert torch.equal(torch.argsort(ours, dim=1, descending=True), torch.argsort(expected, dim=1, descending=True))


def test_frame_softmax_is_softmax_over_the_last_dimension_values_and_gradients():
    torch.manual_seed(0)
    x = (torch.randn(4, 5, 12, dtype=torch.float64) * 40).requires_grad_()  # cosines / 0.01: large logits
    weights = torch.randn(4, 5, 12, dtype=torch.float64)
    ours, reference = frame_softmax(x), x.softmax(dim=-1)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-15)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), x)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=0, atol=1e-12)


def test_pearson_constraint_by_hand():
    torch.manual_seed(0)
    a = torch.randn(5, 3)
    # Standardising with the unbiased std gives C_dd = (B - 1) / B for identical inputs, not 1.
    assert pearson_constraint(a, a, 0.14, 0.0) == pytest.approx(0.14 * 3 * (1 / 5) ** 2, rel=1e-5)
    assert pearson_constraint(a, -a, 0.14, 0.0) == pytest.approx(0.14 * 3 * (1 + 4 / 5) ** 2, rel=1e-5)
    twins = torch.cat([a[:, :1], a[:, :1]], dim=1)  # two identical dimensions: C is all (B - 1) / B
    assert pearson_constraint(twins, twins, 0.0, 1.0) == pytest.approx(2 * (4 / 5) ** 2, rel=1e-5)


def test_loss_combines_the_official_weights(official, train_features):
    with torch.no_grad():
        terms = official.loss(*train_features)
        logits, pearson = official.training_scores(*train_features)
    weak = torch.nn.functional.cross_entropy  # symmetric cross-entropy by hand
    target = torch.arange(GOLDEN["train_pairs"])

    def sym(x):
        return 0.5 * (weak(x, target) + weak(x.t(), target))

    expected_weak = sym(0.5 * logits["video"] + 0.5 * logits["weak_frame"] + 0.05 * logits["weak_patch"])
    expected_strong = sym(logits["strong_frame"])
    expected_pearson = pearson["video"] + pearson["frame"]
    assert terms["weak"] == pytest.approx(expected_weak.item(), rel=1e-6)
    assert terms["strong"] == pytest.approx(expected_strong.item(), rel=1e-6)
    assert terms["pearson"] == pytest.approx(expected_pearson.item(), rel=1e-6)
    assert terms["total"] == pytest.approx((0.8 * expected_weak + 0.2 * expected_strong
                                            + 0.001 * expected_pearson).item(), rel=1e-6)


def test_import_rejects_unknown_and_missing_keys(official):
    with pytest.raises(CheckpointError, match="cross.pooler"):
        official.load_official({**OFFICIAL, "cross.pooler.dense.weight": torch.zeros(1)}, "ckpt.bin")
    with pytest.raises(CheckpointError, match="global_mat_weight"):
        official.load_official({k: v for k, v in OFFICIAL.items() if k != "global_mat_weight"}, "ckpt.bin")
    official.load_official(OFFICIAL, "ckpt.bin")
