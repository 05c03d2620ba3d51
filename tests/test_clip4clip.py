"""CLIP4Clip heads: official golden scores through the checkpoint import, invariances, gradients."""

from __future__ import annotations

import pytest
import torch

from baselines.clip4clip import MeanP, SeqLSTM, SeqTransf, TightTransf
from baselines.clip4clip.official import load_official_clip4clip
from conftest import DATA, load_golden
from harness.backbone import Backbone, load_clip, read_state_dict
from harness.errors import CheckpointError

GOLDEN = load_golden("clip4clip_golden.pt")
TOLERANCE = 1e-5  # on cosines (loose heads carry the logit scale 100) and raw tightTransf scores; measured <= 1.2e-6
HEADS = {"meanP": (MeanP, {}), "seqLSTM": (SeqLSTM, {}), "seqTransf": (SeqTransf, {"frame_positions": 20}),
         "tightTransf": (TightTransf, {"positions": 20})}



def build(clip_file, head: str):
    cls, params = HEADS[head]
    return cls(Backbone(load_clip("auto", clip_file, GOLDEN["text_ids"].shape[1])), cls.Params(**params))


def official_state(head: str) -> dict:
    return read_state_dict(DATA / "golden" / f"clip4clip_{head}_official_state_dict.pt")


def scores(method, video=None, mask=None):
    video = GOLDEN["video"] if video is None else video
    mask = GOLDEN["video_mask"].bool() if mask is None else mask
    text = method.encode_text(GOLDEN["text_ids"], GOLDEN["text_mask"].bool())
    return method.score(text, method.encode_video(video, mask))


@pytest.mark.parametrize("head", list(HEADS))
def test_imported_official_checkpoint_reproduces_golden_scores(clip_file, head):
    method = build(clip_file, head).eval()
    load_official_clip4clip(method, official_state(head), f"{head}.bin")
    with torch.no_grad():
        ours = scores(method)
    assert ours.shape == (5, 4)
    scale = 1.0 if head == "tightTransf" else 100.0  # the cross-encoder's raw output has no logit scale
    assert ((ours - GOLDEN[head]["score"]) / scale).abs().max() <= TOLERANCE


@pytest.mark.parametrize("head", ["seqLSTM", "seqTransf", "tightTransf"])
def test_padding_frames_do_not_change_scores(clip_file, head):
    method = build(clip_file, head).eval()
    load_official_clip4clip(method, official_state(head))
    mask = GOLDEN["video_mask"].bool()
    assert (~mask).any()
    noisy = GOLDEN["video"].clone()
    noisy[~mask] = torch.randn_like(noisy[~mask])
    with torch.no_grad():
        assert (scores(method, noisy, mask) - scores(method)).abs().max() <= 1e-4  # x100 scale


@pytest.mark.parametrize("head", ["seqTransf", "tightTransf"])
def test_sequence_heads_depend_on_frame_order_and_meanp_does_not(clip_file, head):
    full = torch.ones(4, 6, dtype=torch.bool)
    shuffled = GOLDEN["video"][:, torch.tensor([5, 3, 1, 0, 2, 4])]
    with torch.no_grad():
        seq = build(clip_file, head).eval()
        load_official_clip4clip(seq, official_state(head))
        base = scores(seq, GOLDEN["video"], full)
        assert (scores(seq, shuffled, full) - base).abs().max() > 5e-4 * base.abs().max()
        mean = build(clip_file, "meanP").eval()
        base = scores(mean, GOLDEN["video"], full)
        assert (scores(mean, shuffled, full) - base).abs().max() <= 1e-6 * base.abs().max()


def test_seqtransf_starts_from_the_text_transformer(clip_file):
    method = build(clip_file, "seqTransf")
    clip = method.backbone.clip
    for i in range(4):
        for name, value in method.resblocks[i].state_dict().items():
            assert torch.equal(value, clip.transformer.resblocks[i].state_dict()[name]), name
    assert torch.equal(method.frame_position_embeddings.weight[:12], clip.positional_embedding[:12])


@pytest.mark.parametrize("head", ["seqLSTM", "seqTransf", "tightTransf"])
def test_gradients_reach_the_head(clip_file, head):
    method = build(clip_file, head).train()
    text = method.encode_text(GOLDEN["text_ids"][:4], GOLDEN["text_mask"][:4].bool())
    method.loss(text, method.encode_video(GOLDEN["video"], GOLDEN["video_mask"].bool()))["total"].backward()
    for name, parameter in method.named_parameters():
        if name.startswith("backbone.") or name == "similarity_dense.bias":
            continue  # a shift of every score leaves the contrastive loss unchanged: its gradient is exactly 0
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_import_errors_name_the_keys(clip_file):
    method = build(clip_file, "seqTransf")
    state = official_state("seqTransf")
    state["transformerClip.resblocks.0.ln_1.weight"] = torch.ones(32)
    with pytest.raises(CheckpointError, match=r"wrong shape: resblocks.0.ln_1.weight \(32,\) != \(64,\)"):
        load_official_clip4clip(method, state, "x.bin")
    state = official_state("seqTransf")
    del state["transformerClip.resblocks.3.mlp.c_proj.bias"]
    with pytest.raises(CheckpointError, match=r"missing: resblocks.3.mlp.c_proj.bias"):
        load_official_clip4clip(method, state, "x.bin")
    state = official_state("seqLSTM")  # an LSTM checkpoint into a seqTransf head
    with pytest.raises(CheckpointError, match=r"x.bin: keys unknown to clip4clip-seqtransf: lstm_visual"):
        load_official_clip4clip(method, state, "x.bin")
    state = official_state("meanP")
    del state["clip.ln_final.bias"]
    with pytest.raises(CheckpointError, match=r"x.bin \(clip.\*\) does not fit the model: missing: ln_final.bias"):
        load_official_clip4clip(build(clip_file, "meanP"), state, "x.bin")
