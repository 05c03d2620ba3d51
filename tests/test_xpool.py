"""X-Pool head: official golden features and scores, its formula by hand, masking, chunking, import.

The golden test takes its shapes from the golden files (HARNESS_GOLDEN_DIR, see conftest.py): texts,
videos, frames and width from `xpool_metrics_golden.pt`'s features, the head count from each case's
`config`. Files of this layout come from the official X-Pool code (layer6ai-labs/xpool, `modules/transformer.py`
`Transformer` with `embed_dim`, `num_mha_heads` and `transformer_dropout=0`), its weights moved off their
identity initialisation: the head's `state_dict()` under `pool_frames.` and, in eval mode on random text
features (n_texts, D) and frame features (n_videos, T, D), its output `pooled` (n_videos, n_texts, D) and
the cosine of each text with its own pooled video.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.xpool import XPool, XPoolParams
from conftest import load_golden
from harness.api.backbone import Backbone, ClipShape, build_clip
from harness.errors import CheckpointError

GOLDEN = load_golden("xpool_metrics_golden.pt")["xpool"]
TOLERANCE = 1e-5  # measured: pooled <= 1e-6, scores <= 2e-7


def backbone(dim: int = 64) -> Backbone:
    torch.manual_seed(0)
    return Backbone(build_clip(ClipShape(dim, 16, 8, 64, 1, 8, 1000, 64, 1), 8))


def features(text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor | None = None):
    mask = torch.ones(frames.shape[:2], dtype=torch.bool) if mask is None else mask
    return {"text": text}, {"frames": frames, "frame_mask": mask}


@pytest.mark.parametrize("config_key, state_file, pooled_key, score_key", [
    ("config", "xpool_head_official_state_dict.pt", "pooled", "score"),
    ("config_heads4", "xpool_head4_official_state_dict.pt", "pooled_heads4", "score_heads4"),
])
def test_official_head_reproduces_golden(config_key, state_file, pooled_key, score_key):
    config = GOLDEN[config_key]
    assert config["embed_dim"] == GOLDEN["text"].shape[1] == GOLDEN["frames"].shape[2]
    method = XPool(backbone(config["embed_dim"]), XPoolParams(num_heads=config["num_mha_heads"], dropout=0.0)).eval()
    method.load_official_head(load_golden(state_file))
    text, video = features(GOLDEN["text"], GOLDEN["frames"])
    with torch.no_grad():
        pooled, score = method.pooled(text, video), method.score(text, video)
    assert pooled.shape == GOLDEN[pooled_key].shape and score.shape == GOLDEN[score_key].shape
    assert (pooled - GOLDEN[pooled_key]).abs().max() <= TOLERANCE
    assert (score - GOLDEN[score_key]).abs().max() <= TOLERANCE


def test_identity_initialisation_matches_the_formula_by_hand():
    method = XPool(backbone(), XPoolParams(num_heads=1, dropout=0.0)).eval()
    torch.manual_seed(3)
    text, frames = torch.randn(3, 64), torch.randn(2, 5, 64)

    def layer_norm(x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)

    t, f = layer_norm(text), layer_norm(frames)
    expected = torch.empty(3, 2)
    for i in range(3):
        for j in range(2):
            weights = torch.softmax(f[j] @ t[i] / math.sqrt(64), dim=0)
            r = layer_norm(weights @ f[j])
            z = layer_norm(r + r)  # identity linear_proj, dropout off
            expected[i, j] = F.cosine_similarity(text[i], z, dim=0)
    with torch.no_grad():
        assert (method.score(*features(text, frames)) - expected).abs().max() <= 1e-5


def test_padding_frames_do_not_change_scores():
    method = XPool(backbone(), XPoolParams(dropout=0.0)).eval()
    torch.manual_seed(4)
    text, frames = torch.randn(4, 64), torch.randn(3, 6, 64)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    noisy = frames.clone()
    noisy[~mask] = 100 * torch.randn_like(noisy[~mask])
    with torch.no_grad():
        a = method.score(*features(text, frames, mask))
        b = method.score(*features(text, noisy, mask))
        trimmed = method.score(*features(text, frames[2:3, :2]))
    assert (a - b).abs().max() == 0
    assert (a[:, 2] - trimmed[:, 0]).abs().max() <= 1e-6


def test_chunked_pooling_equals_unchunked_and_gradients_reach_the_head():
    torch.manual_seed(5)
    text, frames = torch.randn(7, 64), torch.randn(9, 4, 64)
    whole = XPool(backbone(), XPoolParams(dropout=0.0, pair_budget=1 << 30)).eval()
    chunked = XPool(backbone(), XPoolParams(dropout=0.0, pair_budget=7 * 64 * 2)).eval()  # 2 videos at a time
    chunked.load_state_dict(whole.state_dict())
    with torch.no_grad():
        assert (whole.score(*features(text, frames)) - chunked.score(*features(text, frames))).abs().max() <= 1e-5
    method = XPool(backbone(), XPoolParams(dropout=0.0))
    loss = method.loss(*features(torch.randn(4, 64), torch.randn(4, 3, 64)))["total"]
    loss.backward()
    for name, parameter in method.pool.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_import_rejects_missing_and_misshapen_keys():
    state = load_golden("xpool_head_official_state_dict.pt")
    dim = state["pool_frames.linear_proj.weight"].shape[1]
    state["pool_frames.linear_proj.weight"] = state["pool_frames.linear_proj.weight"][: dim // 2]
    del state["pool_frames.layer_norm3.bias"]
    state["pool_frames.extra"] = torch.zeros(1)
    method = XPool(backbone(dim), XPoolParams())
    with pytest.raises(CheckpointError) as error:
        method.load_official_head(state, "xpool.pth")
    message = str(error.value)
    assert "xpool.pth" in message and "missing: layer_norm3.bias" in message and "unexpected: extra" in message
    assert f"wrong shape: linear_proj.weight ({dim // 2}, {dim}) != ({dim}, {dim})" in message
