"""The backbone reproduces the official CLIP4Clip text and frame features, and meanP its scores.

Shapes come from the golden files (HARNESS_GOLDEN_DIR, see conftest.py and test_clip4clip.py)."""

from __future__ import annotations

import pytest
import torch

from baselines.clip4clip import MeanP
from conftest import load_golden
from harness.api.backbone import Backbone, ClipShape, build_clip, load_clip
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


VIT_B_32 = ClipShape(embed_dim=512, image_size=224, patch_size=32, vision_width=768, vision_layers=12,
                     context_length=77, vocab_size=49408, text_width=512, text_layers=12)


@pytest.mark.parametrize("shape", ["synthetic", "ViT-B/32"])
def test_the_staged_encoders_compose_to_open_clip_s_whole_towers_bit_equal(shape):
    from harness.data.synthetic_backbone import small_shape

    clip_shape = small_shape() if shape == "synthetic" else VIT_B_32
    torch.manual_seed(0)
    backbone = Backbone(build_clip(clip_shape, 32)).eval()
    size = clip_shape.image_size
    frames = torch.randn(1, 2, 3, size, size)
    tokens = torch.randint(1, 400, (2, 32))
    tokens[:, -1] = 49407  # EOT, the largest id
    visual = backbone.clip.visual
    with torch.no_grad():
        whole = visual(frames.flatten(0, 1))
        visual.output_tokens = True
        whole_pooled, whole_tokens = visual(frames.flatten(0, 1))
        visual.output_tokens = False
        staged = backbone.encode_frames(frames)
        staged_pooled, patches = backbone.encode_frames_and_patches(frames)
        blocks = backbone.frame_tokens(frames.flatten(0, 1))
        for index in range(len(backbone.visual_blocks)):  # one block at a time, as a method inserting work would
            blocks = backbone.run_visual_blocks(blocks, index, index + 1)
        sentence, words = backbone.encode_text(tokens)
        whole_text = backbone.clip.encode_text(tokens)
    assert torch.equal(staged.flatten(0, 1), whole) and torch.equal(staged_pooled.flatten(0, 1), whole)
    assert torch.equal(patches.flatten(0, 1), whole_tokens @ visual.proj)
    assert torch.equal(backbone.pool_frames(blocks), whole)
    assert patches.shape[2] == (size // clip_shape.patch_size) ** 2
    # all tokens projected, then sliced, against the sliced tokens projected: MKL's AVX2 branch on one thread
    # rounds a product's row by its place in the matrix (seen on an Intel Xeon), so float32 rounding apart
    theirs = whole_tokens @ visual.proj
    assert (backbone.project_tokens(blocks)[1] - theirs).abs().max() <= 1e-6 * theirs.abs().max()
    assert (sentence - whole_text).abs().max() <= 1e-6 * whole_text.abs().max()  # the EOT row projected alone there
    assert torch.equal(words, backbone.project_text(backbone.text_states(tokens)))


def test_the_backbone_records_the_checkpoint_s_parameters_through_copies():
    torch.manual_seed(0)
    backbone = Backbone(build_clip(ClipShape(64, 16, 8, 64, 1, 16, 1000, 64, 1), 16))
    copy_of = __import__("copy").deepcopy(backbone)
    assert len(copy_of.clip_parameters) == len(list(copy_of.clip.parameters()))
    assert all(copy_of.owns(p) for p in copy_of.clip.parameters())
    assert not any(copy_of.owns(p) for p in backbone.clip.parameters())  # the copy's own objects, not the original's
