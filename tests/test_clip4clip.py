"""CLIP4Clip heads: official golden scores through the checkpoint import, invariances, gradients.

Every shape comes from the golden files (HARNESS_GOLDEN_DIR, see conftest.py): texts, videos, frames and
words from `clip4clip_golden.pt`'s inputs; width, block counts and position tables from each head's state
dict. Files of this layout come from the official CLIP4Clip code (ArrowLuo/CLIP4Clip,
`modules/modeling.py` `CLIP4Clip`, one per `sim_header`: meanP, seqLSTM, seqTransf, tightTransf with
`loose_type` off) built on a small random OpenAI-layout CLIP: its `state_dict()` per head; in eval mode
on random `text_ids`/`text_mask` (SOT, words, EOT, padding) and `video`/`video_mask` (normalised pixels,
padded frames at the end), `get_sequence_output`, `get_visual_output` and `get_similarity_logits`.
"""

from __future__ import annotations

import re

import pytest
import torch

from baselines.clip4clip import MeanP, SeqLSTM, SeqTransf, TightTransf
from baselines.clip4clip.official import load_official_clip4clip
from conftest import GOLDEN_DIR, load_golden
from harness.api.backbone import Backbone, load_clip, read_state_dict
from harness.errors import CheckpointError

GOLDEN = load_golden("clip4clip_golden.pt")
TOLERANCE = 1e-5  # on cosines (loose heads carry the logit scale 100) and raw tightTransf scores; measured <= 1.2e-6
HEADS = {"meanP": MeanP, "seqLSTM": SeqLSTM, "seqTransf": SeqTransf, "tightTransf": TightTransf}
N_TEXTS, N_VIDEOS, FRAMES = GOLDEN["text_ids"].shape[0], *GOLDEN["video"].shape[:2]


def official_state(head: str) -> dict:
    return read_state_dict(GOLDEN_DIR / f"clip4clip_{head}_official_state_dict.pt")


def layer_count(state: dict, prefix: str) -> int:
    return len({int(m.group(1)) for key in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))})


def head_params(head: str) -> dict:
    """The head's sizes as the official state dict has them."""
    state = official_state(head)
    if head == "seqTransf":
        return {"layers": layer_count(state, "transformerClip.resblocks."),
                "frame_positions": state["frame_position_embeddings.weight"].shape[0]}
    if head == "tightTransf":
        return {"layers": layer_count(state, "cross.transformer.resblocks."),
                "positions": state["cross.embeddings.position_embeddings.weight"].shape[0]}
    return {}


def build(clip_file, head: str):
    cls = HEADS[head]
    return cls(Backbone(load_clip("auto", clip_file, GOLDEN["text_ids"].shape[1])), cls.Params(**head_params(head)))


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
    assert ours.shape == GOLDEN[head]["score"].shape == (N_TEXTS, N_VIDEOS)
    # the cross-encoder's raw output has no logit scale
    scale = 1.0 if head == "tightTransf" else official_state(head)["clip.logit_scale"].exp()
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
    full = torch.ones(N_VIDEOS, FRAMES, dtype=torch.bool)
    assert FRAMES > 1
    shuffled = GOLDEN["video"][:, torch.arange(FRAMES).flip(0)]
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
    for i, block in enumerate(method.resblocks):
        for name, value in block.state_dict().items():
            assert torch.equal(value, clip.transformer.resblocks[i].state_dict()[name]), name
    rows = min(method.frame_position_embeddings.num_embeddings, clip.positional_embedding.shape[0])
    assert torch.equal(method.frame_position_embeddings.weight[:rows], clip.positional_embedding[:rows])


@pytest.mark.parametrize("head", ["seqLSTM", "seqTransf", "tightTransf"])
def test_gradients_reach_the_head(clip_file, head):
    method = build(clip_file, head).train()
    pairs = min(N_TEXTS, N_VIDEOS)
    text = method.encode_text(GOLDEN["text_ids"][:pairs], GOLDEN["text_mask"][:pairs].bool())
    video = method.encode_video(GOLDEN["video"][:pairs], GOLDEN["video_mask"][:pairs].bool())
    method.loss(text, video)["total"].backward()
    for name, parameter in method.named_parameters():
        if name.startswith("backbone.") or name == "similarity_dense.bias":
            continue  # a shift of every score leaves the contrastive loss unchanged: its gradient is exactly 0
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_import_errors_name_the_keys(clip_file):
    method = build(clip_file, "seqTransf")
    state = official_state("seqTransf")
    width = state["transformerClip.resblocks.0.ln_1.weight"].shape[0]
    state["transformerClip.resblocks.0.ln_1.weight"] = torch.ones(width // 2)
    wrong = rf"wrong shape: resblocks.0.ln_1.weight \({width // 2},\) != \({width},\)"
    with pytest.raises(CheckpointError, match=wrong):
        load_official_clip4clip(method, state, "x.bin")
    state = official_state("seqTransf")
    last = len(method.resblocks) - 1
    del state[f"transformerClip.resblocks.{last}.mlp.c_proj.bias"]
    with pytest.raises(CheckpointError, match=rf"missing: resblocks.{last}.mlp.c_proj.bias"):
        load_official_clip4clip(method, state, "x.bin")
    state = official_state("seqLSTM")  # an LSTM checkpoint into a seqTransf head
    with pytest.raises(CheckpointError, match=r"x.bin: keys unknown to clip4clip-seqtransf: lstm_visual"):
        load_official_clip4clip(method, state, "x.bin")
    state = official_state("meanP")
    del state["clip.ln_final.bias"]
    with pytest.raises(CheckpointError, match=r"x.bin \(clip.\*\) does not fit the model: missing: ln_final.bias"):
        load_official_clip4clip(build(clip_file, "meanP"), state, "x.bin")
