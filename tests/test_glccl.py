"""GLCCL: the four scores against a loop-by-loop transcription of the official formulas, the CSC loss
by hand, chunking, and the official-checkpoint key map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.api.backbone import Backbone, ClipShape, build_clip
from harness.errors import CheckpointError
from methods.glccl import GLCCL, GLCCLParams
from methods.glccl.interaction import four_scores, score_consistency
from methods.glccl.method import EMBED_MATRICES, WORD_MATRICES

WORDS = 8


def method(**params) -> GLCCL:
    torch.manual_seed(0)
    backbone = Backbone(build_clip(ClipShape(64, 16, 8, 64, 1, WORDS, 1000, 64, 1), WORDS))
    return GLCCL(backbone, GLCCLParams(layers=1, words=WORDS, **params))


def softmax(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(x / temperature, dim=0)


def by_loops(t, w, frames, weights):
    """The official formulas, one text a and one video b at a time, one vector at a time."""
    n_t, length, _ = w.shape
    out = {k: torch.zeros(n_t, frames.shape[0]) for k in ("video_sentence", "video_word", "sentence_frame", "frame_word")}
    for a in range(n_t):
        t_hat, w_hat = F.normalize(t[a], dim=0), F.normalize(w[a], dim=-1)
        for b in range(frames.shape[0]):
            f = frames[b]
            v = F.normalize(softmax(f @ t[a], 5.0) @ f, dim=0)
            phi = torch.stack([F.normalize(softmax(f @ w[a, l], 5.0) @ f, dim=0) for l in range(length)])
            out["video_sentence"][a, b] = (t_hat @ weights["global_mat_weight"]) @ v
            x = w_hat @ v  # (L,)
            out["video_word"][a, b] = (x * (softmax(x, 0.01) @ weights["word_logit_weight"])).sum()
            y = phi @ t_hat  # (L,)
            out["sentence_frame"][a, b] = (y * (softmax(y, 0.01) @ weights["word_frame_logit_weight"])).sum()
            m = (w_hat @ weights["local_mat_weight"]) @ phi.t()  # M[t, l]
            word_level = torch.stack([(m[:, l] * (softmax(m[:, l], 0.01) @ weights["word_mat_weight"])).sum()
                                      for l in range(length)])
            frame_level = torch.stack([(m[s] * (softmax(m[s], 0.01) @ weights["word_frame_mat_weight"])).sum()
                                       for s in range(length)])
            s2f = (word_level * (softmax(word_level, 0.01) @ weights["word_frame_mat_weight2"])).sum()
            v2w = (frame_level * (softmax(frame_level, 0.01) @ weights["word_mat_weight2"])).sum()
            out["frame_word"][a, b] = (s2f + v2w) / 2
    return out


def test_four_scores_match_the_official_formulas_computed_loop_by_loop():
    torch.manual_seed(1)
    dim, length, frames = 6, 4, 5
    t, w, video = torch.randn(2, dim), torch.randn(2, length, dim), torch.randn(3, frames, dim)
    weights = {name: torch.eye(dim) + 0.3 * torch.randn(dim, dim) for name in EMBED_MATRICES}
    weights |= {name: torch.eye(length) + 0.3 * torch.randn(length, length) for name in WORD_MATRICES}
    ours = four_scores(F.normalize(t, dim=-1), F.normalize(w, dim=-1), t, w, video, weights)
    expected = by_loops(t, w, video, weights)
    for name in expected:
        assert (ours[name] - expected[name]).abs().max() <= 1e-5, name


def test_score_consistency_by_hand():
    stacked = torch.zeros(4, 2, 2)
    stacked[:, 0, 0] = stacked[:, 1, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # unbiased variance 5/3
    stacked[:, 0, 1] = stacked[:, 1, 0] = torch.tensor([0.0, 0.0, 0.0, 4.0])  # unbiased variance 4
    # mean of the diagonal 5/3, over (sum of the off-diagonal 8 / B^2 = 4) = 2
    assert score_consistency(stacked) == pytest.approx((5 / 3) / 2, rel=1e-6)


def test_loss_is_contrastive_plus_lambda_csc_and_lambda_defaults_to_half():
    model = method().eval()
    torch.manual_seed(2)
    text = {"sentence": torch.randn(4, 64), "words": torch.randn(4, WORDS, 64)}
    video = {"frames": torch.randn(4, 5, 64)}
    with torch.no_grad():
        terms = model.loss(text, video)
        stacked = torch.stack(list(model.scores(text, video).values()))
        score = model.score(text, video)
    assert GLCCLParams.csc_weight == 0.5
    assert terms["total"] == pytest.approx((terms["contrastive"] + 0.5 * terms["score_consistency"]).item(), rel=1e-6)
    assert terms["score_consistency"] == pytest.approx(score_consistency(stacked).item(), rel=1e-6)
    assert torch.allclose(score, stacked.mean(dim=0))


def test_chunked_scoring_equals_the_unchunked_reference():
    model = method().eval()
    torch.manual_seed(3)
    text = {"sentence": torch.randn(5, 64), "words": torch.randn(5, WORDS, 64)}
    video = {"frames": torch.randn(7, 4, 64)}
    with torch.no_grad():
        reference = model.score(text, video)
        model.params.pair_budget = 5 * WORDS * 64 * 2  # two videos per block
        chunked = model.score(text, video)
    assert (chunked - reference).abs().max() <= 1e-5


def official_layout(model: GLCCL) -> dict:
    """The model's weights under the official GLCCL key names (plus the unused visual_logit_weight)."""
    state = {f"clip.{k[len('backbone.clip.'):]}": v for k, v in model.state_dict().items()
             if k.startswith("backbone.clip.")}
    state |= {f"transformerClip.{k}": v for k, v in model.state_dict().items() if k.startswith("resblocks.")}
    state["frame_position_embeddings.weight"] = model.frame_position_embeddings.weight.detach()
    state |= {name: getattr(model, name).detach() + 0.1 for name in EMBED_MATRICES + WORD_MATRICES}
    state["visual_logit_weight"] = torch.eye(12)
    return state


def test_official_import_maps_every_key_and_skips_only_the_unused_one():
    source = method()
    state = official_layout(source)
    target = method()
    target.load_official(state, "glccl.bin")
    for name in EMBED_MATRICES + WORD_MATRICES:
        assert torch.equal(getattr(target, name), state[name])
    with pytest.raises(CheckpointError, match="weight_fc"):
        target.load_official({**state, "weight_fc.0.weight": torch.zeros(1)}, "glccl.bin")
    with pytest.raises(CheckpointError, match="word_mat_weight2"):
        target.load_official({k: v for k, v in state.items() if k != "word_mat_weight2"}, "glccl.bin")
