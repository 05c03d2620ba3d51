"""The backbone reproduces the official CLIP4Clip text and frame features, and meanP its scores.

Shapes come from the golden files (HARNESS_GOLDEN_DIR, see conftest.py and test_clip4clip.py)."""

from __future__ import annotations

import pytest
import torch

from baselines.clip4clip import MeanP
from conftest import load_golden
from harness.backbone import Backbone, load_clip
from harness.errors import CheckpointError

TOLERANCE = 1e-5  # fp32; measured max abs differences are below 1e-6



def test_text_and_frame_features_match_official(clip_file):
    golden = load_golden("clip4clip_golden.pt")
    backbone = Backbone(load_clip("auto", clip_file, golden["text_ids"].shape[1]))
    with torch.no_grad():
        sentence, words = backbone.encode_text(golden["text_ids"])
        frames = backbone.encode_frames(golden["video"])
    assert words.shape == (*golden["text_ids"].shape, golden["meanP"]["sequence_output"].shape[-1])
    assert (sentence - golden["meanP"]["sequence_output"].squeeze(1)).abs().max() <= TOLERANCE
    assert (frames - golden["meanP"]["visual_output"]).abs().max() <= TOLERANCE


def test_meanp_scores_match_official(clip_file):
    golden = load_golden("clip4clip_golden.pt")
    backbone = Backbone(load_clip("auto", clip_file, golden["text_ids"].shape[1]))
    method = MeanP(backbone, MeanP.Params()).eval()
    with torch.no_grad():
        text = method.encode_text(golden["text_ids"], golden["text_mask"].bool())
        video = method.encode_video(golden["video"], golden["video_mask"].bool())
        scores = method.score(text, video)
    # The scores carry the logit scale 100: compared as cosines (measured 1.0e-7; 1.1e-5 on the x100 scale).
    assert ((scores - golden["meanP"]["score"]) / 100).abs().max() <= TOLERANCE


def test_meanp_ignores_padding_frames_and_frame_order(clip_file):
    golden = load_golden("clip4clip_golden.pt")
    backbone = Backbone(load_clip("auto", clip_file, golden["text_ids"].shape[1]))
    method = MeanP(backbone, MeanP.Params()).eval()
    video, mask = golden["video"], golden["video_mask"].bool()
    with torch.no_grad():
        base = method.encode_video(video, mask)["video"]
        noisy = video.clone()
        noisy[~mask] = torch.randn_like(noisy[~mask])
        assert (method.encode_video(noisy, mask)["video"] - base).abs().max() <= 1e-6
        order = torch.arange(video.shape[1]).roll(1)
        full = torch.ones_like(mask)
        assert (method.encode_video(video[:, order], full)["video"] - method.encode_video(video, full)["video"]).abs().max() <= 1e-6


def test_checkpoint_errors_are_clear(clip_file, tmp_path):
    with pytest.raises(CheckpointError, match="CLIP checkpoint not found"):
        load_clip("auto", tmp_path / "absent.pt", 12)
    state = torch.load(clip_file, weights_only=True)
    vision_width, dim = state["visual.proj"].shape
    positions = state["positional_embedding"].shape[0]
    state["visual.proj"] = state["visual.proj"][:, : dim // 2]
    del state["ln_final.bias"]
    state["extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(CheckpointError) as error:
        load_clip("auto", broken, 12)
    message = str(error.value)
    assert "missing: ln_final.bias" in message and "unexpected: extra.weight" in message
    assert f"wrong shape: visual.proj ({vision_width}, {dim // 2}) != ({vision_width}, {dim})" in message
    too_many = f"{positions + 1} words requested, the checkpoint has {positions} positions"
    with pytest.raises(CheckpointError, match=too_many):
        load_clip("auto", clip_file, positions + 1)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_clip("ViT-B-32", clip_file, 12)  # a small checkpoint is not a ViT-B/32
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read CLIP checkpoint"):
        load_clip("auto", tmp_path / "junk.pt", 12)
