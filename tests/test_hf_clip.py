"""The Hugging Face CLIP key map (harness.api.hf_clip) both ways, on the official Prompt Switch and CLIP-ViP state
dicts (both save CLIP in the HF layout, under `clip.` and `clipmodel.`), and its strictness.

`promptswitch_clip_openai_layout.pt` is the OpenAI-layout CLIP both official models were built from (the
generator's input); the CLIP tensors of both official state dicts are that CLIP in the HF layout (CLIP-ViP with
its own logit-scale initialisation).
"""

from __future__ import annotations

import pytest
import torch

from conftest import load_golden
from harness.api.backbone import ClipShape, build_clip
from harness.api.hf_clip import hf_to_openai, openai_to_hf
from harness.errors import CheckpointError

CLIP = load_golden("promptswitch_clip_openai_layout.pt")
PROMPTSWITCH = load_golden("promptswitch_official_state_dict.pt")
CLIPVIP = load_golden("clipvip_official_state_dict.pt")
PROMPTSWITCH_OWN = ("clip.vision_model.encoder.prompt_embedding", "clip.vision_model.attn.")
CLIPVIP_OWN = ("clipmodel.vision_model.embeddings.added_cls", "clipmodel.vision_model.embeddings.temporal_embedding")


def assert_same_tensors(ours: dict, expected: dict) -> None:
    assert sorted(ours) == sorted(expected)
    for key, value in expected.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_promptswitch_clip_maps_to_the_openai_layout_exactly():
    clip, own = hf_to_openai(PROMPTSWITCH, "promptswitch", "clip.", own=PROMPTSWITCH_OWN)
    assert_same_tensors(clip, CLIP)
    assert sorted(own) == sorted(k for k in PROMPTSWITCH if k.startswith(PROMPTSWITCH_OWN))
    assert all(torch.equal(own[k], PROMPTSWITCH[k]) for k in own)


def test_clipvip_clip_maps_to_the_openai_layout_with_its_own_logit_scale():
    clip, own = hf_to_openai(CLIPVIP, "clipvip", "clipmodel.", own=CLIPVIP_OWN)
    assert_same_tensors({k: v for k, v in clip.items() if k != "logit_scale"},
                        {k: v for k, v in CLIP.items() if k != "logit_scale"})
    config = load_golden("clipvip_golden.pt")["config"]
    assert clip["logit_scale"].item() == pytest.approx(config["logit_scale_init_value"])
    assert sorted(own) == sorted(CLIPVIP_OWN)


def test_openai_layout_maps_back_to_the_official_hf_tensors_exactly():
    hf = openai_to_hf(CLIP, prefix="clip.")
    official = {k: v for k, v in PROMPTSWITCH.items() if k.startswith("clip.") and not k.startswith(PROMPTSWITCH_OWN)}
    assert_same_tensors(hf, official)  # position_ids buffers included, as transformers saves them


@pytest.mark.parametrize("widths", [(32, 128, 64), (64, 64, 64)])
def test_backbone_to_hf_and_back_round_trips_exactly(widths):
    """Embedding, vision and text widths that differ show any transposition slip."""
    embed, vision, text = widths
    torch.manual_seed(0)
    shape = ClipShape(embed_dim=embed, image_size=32, patch_size=8, vision_width=vision, vision_layers=2,
                      context_length=16, vocab_size=500, text_width=text, text_layers=3)
    state = build_clip(shape, 16).state_dict()
    hf = openai_to_hf(state, prefix="model.")
    assert hf["model.visual_projection.weight"].shape == (embed, vision)
    assert hf["model.text_projection.weight"].shape == (embed, text)
    back, own = hf_to_openai(hf, "round trip", "model.")
    assert own == {}
    assert_same_tensors(back, state)


def test_position_ids_are_skipped_by_name():
    without = {k: v for k, v in PROMPTSWITCH.items() if not k.endswith("position_ids")}
    altered = {k: (v + 7 if k.endswith("position_ids") else v) for k, v in PROMPTSWITCH.items()}
    for state in (without, altered):
        clip, _ = hf_to_openai(state, "ckpt", "clip.", own=PROMPTSWITCH_OWN)
        assert_same_tensors(clip, CLIP)


def test_an_unknown_key_is_refused_by_name():
    with pytest.raises(CheckpointError, match=r"unknown: clip\.vision_model\.encoder\.not_a_clip_key"):
        hf_to_openai({**PROMPTSWITCH, "clip.vision_model.encoder.not_a_clip_key": torch.zeros(1)}, "ckpt", "clip.",
                     own=PROMPTSWITCH_OWN)
    # the method's own tensors are unknown unless the caller claims them
    with pytest.raises(CheckpointError, match=r"clip\.vision_model\.encoder\.prompt_embedding"):
        hf_to_openai(PROMPTSWITCH, "ckpt", "clip.")


def test_a_missing_key_is_refused_by_name():
    key = "clip.vision_model.encoder.layers.1.self_attn.v_proj.bias"
    with pytest.raises(CheckpointError, match=r"missing: " + key.replace(".", r"\.")):
        hf_to_openai({k: v for k, v in PROMPTSWITCH.items() if k != key}, "ckpt", "clip.", own=PROMPTSWITCH_OWN)
    with pytest.raises(CheckpointError, match=r"missing: .*clip\.text_projection\.weight"):
        hf_to_openai({k: v for k, v in PROMPTSWITCH.items() if k != "clip.text_projection.weight"}, "ckpt",
                     "clip.", own=PROMPTSWITCH_OWN)


@pytest.mark.parametrize("key", ["clip.text_model.encoder.layers.2.mlp.fc1.weight", "clip.visual_projection.weight",
                                 "clip.vision_model.encoder.layers.0.self_attn.k_proj.bias"])
def test_a_misshapen_key_is_refused_by_name(key):
    value = PROMPTSWITCH[key]
    bad = value.t().contiguous() if value.dim() == 2 else torch.cat([value, value[:1]])
    with pytest.raises(CheckpointError, match=r"wrong shape: " + key.replace(".", r"\.")):
        hf_to_openai({**PROMPTSWITCH, key: bad}, "ckpt", "clip.", own=PROMPTSWITCH_OWN)


def test_keys_outside_the_prefix_are_left_to_the_caller_and_openai_keys_are_checked_too():
    clip, own = hf_to_openai(PROMPTSWITCH, "ckpt", "clip.", own=PROMPTSWITCH_OWN)
    assert not any(k.startswith("caption_") for k in (*clip, *own))
    with pytest.raises(CheckpointError, match="not_openai"):
        openai_to_hf({**CLIP, "not_openai": torch.zeros(1)})
