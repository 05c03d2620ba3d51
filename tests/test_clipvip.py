"""CLIP-ViP: official golden encoder states, video and text features, the "simple" and DSL scores, the
interpolated-temporal-embedding variant and the summed NCE loss through the checkpoint import, for both ways of
computing the proxy-guided attention; padding, the mask, the interpolation; the method contract; MACs at
ViT-B/32 against the hand counts of docs/methods.md.

Every shape comes from the golden files: texts, words, videos and frames from `clipvip_golden.pt`'s inputs, the
proxy count and temporal size from the state dict, the logit-scale initialisation and the interpolation frame
count from the golden file. The golden `video` repeats each video's last real frame in its padded positions
(the official loader's padding; the model has no frame mask, `video_mask` is information only).
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from conftest import load_golden
from harness.api.backbone import Backbone, build_clip, shape_from_state_dict
from harness.api.conformance import check_backbone
from harness.api.hf_clip import hf_to_openai
from harness.api.testing import assert_conforms
from harness.cost.flops import count_macs
from harness.cost.model import method_cost
from harness.errors import CheckpointError
from methods.clipvip import CLIPViP, CLIPViPParams
from methods.clipvip.encoder import proxy_attention_mask, temporal_embedding_for
from methods.clipvip.official import KEY_MAP

GOLDEN = load_golden("clipvip_golden.pt")
OFFICIAL = load_golden("clipvip_official_state_dict.pt")
CONFIG = GOLDEN["config"]
TOLERANCE = 1e-5  # max abs difference to the official outputs (measured <= 1.9e-6, the loss; states <= 1.4e-6)
WORDS = GOLDEN["text_ids"].shape[1]
PROXIES = OFFICIAL["clipmodel.vision_model.embeddings.added_cls"].shape[0]
TEMPORAL = OFFICIAL["clipmodel.vision_model.embeddings.temporal_embedding"].shape[1]
ATTENTION = ("blocks", "mask")
# The hand counts (docs/methods.md) at ViT-B/32 (d = 768, 12 layers, 49 patches, D = 512, 12 frames), in MACs.
VIT_WIDTH, VIT_LAYERS, PATCHES, EMBED, TEST_FRAMES = 768, 12, 49, 512, 12
TEXT_TOWER_L32 = 1.2208e9
SPEC_PER_VIDEO = 52.3e9


def build(attention: str = "blocks") -> CLIPViP:
    clip, _ = hf_to_openai(OFFICIAL, "golden", "clipmodel.", own=tuple(KEY_MAP))
    params = CLIPViPParams(proxies=PROXIES, temporal_size=TEMPORAL, logit_scale_init=CONFIG["logit_scale_init_value"],
                           attention=attention)
    method = CLIPViP(Backbone(build_clip(shape_from_state_dict(clip), WORDS)), params)
    method.load_official(OFFICIAL, "clipvip_official_state_dict.pt")
    return method.eval()


@pytest.fixture(scope="module", params=ATTENTION)
def official(request) -> CLIPViP:
    return build(request.param)


def largest(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.detach() - b).abs().max())


def zero_padded() -> tuple[torch.Tensor, torch.Tensor]:
    """The golden videos as the engine gives them: padded frames zero, with the mask."""
    mask = GOLDEN["video_mask"].bool()
    return GOLDEN["video"] * mask[..., None, None, None], mask


def test_encoder_states_and_features_reproduce_the_official_ones(official):
    video = GOLDEN["video"]
    with torch.no_grad():
        states = []
        last = official.encoder_output(video, states)
        features = official.video_features(video)
        text = official.encode_text(GOLDEN["text_ids"], GOLDEN["text_mask"].bool())
        sentence = official.backbone.encode_sentence(GOLDEN["text_ids"])
    assert len(states) == len(GOLDEN["vision_hidden_states"]) == len(official.backbone.visual_blocks) + 1
    for ours, theirs in zip(states, GOLDEN["vision_hidden_states"]):
        assert ours.shape[1] == 1 + PROXIES + video.shape[1] * CONFIG["patches_per_frame"]
        assert largest(ours, theirs) <= TOLERANCE
    assert largest(official.backbone.clip.visual.ln_post(last[:, 0]), GOLDEN["video_cls_post_ln"]) <= TOLERANCE
    assert largest(features, GOLDEN["video_features"]) <= TOLERANCE
    assert largest(sentence, GOLDEN["text_features"]) <= TOLERANCE
    assert largest(text["text"], GOLDEN["text_features_normalised"]) <= TOLERANCE


def test_scores_from_zero_padded_frames_reproduce_the_official_simple_and_dsl_scores(official):
    frames, mask = zero_padded()
    assert not mask.all()
    with torch.no_grad():
        video = official.encode_video(frames, mask)
        score = official.score(official.encode_text(GOLDEN["text_ids"], GOLDEN["text_mask"].bool()), video)
    assert largest(video["video"], GOLDEN["video_features_normalised"]) <= TOLERANCE
    assert largest(score, GOLDEN["score"]) <= TOLERANCE
    # the official DSL: score x softmax over the queries of dsl_temperature x score
    assert largest(score * torch.softmax(CLIPViP.dsl_temperature * score, dim=0), GOLDEN["score_dsl"]) <= TOLERANCE
    assert CLIPViP.post_processing == ("dsl",) and CLIPViP.score_kind == "similarity"


def test_fewer_frames_interpolate_the_temporal_embedding_as_the_official_code(official):
    frames, mask = zero_padded()
    count = GOLDEN["interp_frames"]
    assert count != TEMPORAL
    with torch.no_grad():
        video = official.encode_video(frames[:, :count], mask[:, :count])
        score = official.score(official.encode_text(GOLDEN["text_ids"], GOLDEN["text_mask"].bool()), video)
    assert largest(video["video"], GOLDEN["video_features_normalised_interp"]) <= TOLERANCE
    assert largest(score, GOLDEN["score_interp"]) <= TOLERANCE


def test_training_loss_is_the_summed_two_way_cross_entropy(official):
    pairs = GOLDEN["train_pairs"]
    official.train()
    try:
        video = official.encode_video(GOLDEN["video"][:pairs], torch.ones(GOLDEN["video"][:pairs].shape[:2], dtype=torch.bool))
        text = official.encode_text(GOLDEN["text_ids"][:pairs], GOLDEN["text_mask"][:pairs].bool())
        terms = official.loss(text, video)
    finally:
        official.eval()
    assert largest(video["video"], GOLDEN["train_video_features_normalised"]) <= TOLERANCE
    assert largest(text["text"], GOLDEN["train_text_features_normalised"]) <= TOLERANCE
    assert terms["total"].item() == pytest.approx(GOLDEN["loss_nce"].item(), abs=TOLERANCE)
    logits = official.backbone.logit_scale.exp() * official.score(text, video)
    mean = 0.5 * (F.cross_entropy(logits, torch.arange(pairs)) + F.cross_entropy(logits.t(), torch.arange(pairs)))
    assert terms["total"].item() == pytest.approx(2 * mean.item(), rel=1e-6)  # summed, not averaged


def test_the_logit_scale_starts_at_the_official_initialisation():
    backbone = check_backbone(16)
    assert backbone.logit_scale.item() != pytest.approx(CONFIG["logit_scale_init_value"])
    method = CLIPViP(backbone, CLIPViPParams())
    assert method.backbone.logit_scale.item() == pytest.approx(CONFIG["logit_scale_init_value"])
    assert CLIPViPParams().logit_scale_init == CONFIG["logit_scale_init_value"]
    assert method.backbone.owns(method.backbone.logit_scale)  # still the CLIP parameter
    width = backbone.clip.visual.class_embedding.shape[0]
    assert (method.temporal_embedding == 0).all() and method.added_cls.shape == (CLIPViPParams().proxies, width)


def test_the_mask_lets_patches_see_their_frame_and_the_proxies_and_the_proxies_everything():
    proxies, frames, patches = 1 + PROXIES, 3, 4
    mask = proxy_attention_mask(proxies, frames, patches, torch.float32, "cpu")
    tokens = proxies + frames * patches
    allowed = mask == 0
    assert mask.shape == (tokens, tokens) and set(mask.unique().tolist()) == {0.0, float("-inf")}
    assert allowed[:proxies].all() and allowed[:, :proxies].all()
    assert int(allowed.sum()) == proxies * tokens + frames * patches * (proxies + patches)  # the hand count (docs/methods.md)
    first = slice(proxies, proxies + patches)
    assert allowed[first, first].all() and not allowed[first, proxies + patches:].any()


def test_mask_and_blocks_compute_the_same_attention():
    torch.manual_seed(0)
    video = torch.randn(2, 5, 3, 16, 16)
    with torch.no_grad():
        features = {}
        for attention in ATTENTION:
            torch.manual_seed(1)
            features[attention] = CLIPViP(check_backbone(16), CLIPViPParams(attention=attention)).eval().video_features(video)
    assert largest(features["mask"], features["blocks"]) <= 1e-5


@pytest.mark.parametrize("frames", [1, 5, 8, 12, 32])
def test_temporal_interpolation_equals_torch_linear_interpolation(frames):
    torch.manual_seed(2)
    embedding = torch.randn(1, TEMPORAL, 16)
    expected = F.interpolate(embedding.transpose(1, 2), size=frames, mode="linear").transpose(1, 2)
    assert largest(temporal_embedding_for(embedding, frames), expected) <= 2e-6


@pytest.mark.parametrize("attention", ATTENTION)
def test_conforms(attention):
    assert_conforms(CLIPViP, params={"attention": attention}, frames=8, words=16)


def test_import_rejects_unknown_missing_and_misshapen_keys():
    method = build()
    with pytest.raises(CheckpointError, match="clipmodel.vision_model.embeddings.extra_cls"):
        method.load_official({**OFFICIAL, "clipmodel.vision_model.embeddings.extra_cls": torch.zeros(1)}, "ckpt")
    with pytest.raises(CheckpointError, match="temporal_embedding"):
        method.load_official({k: v for k, v in OFFICIAL.items() if not k.endswith("temporal_embedding")}, "ckpt")
    key = "clipmodel.vision_model.embeddings.added_cls"
    with pytest.raises(CheckpointError, match="added_cls"):
        method.load_official({**OFFICIAL, key: torch.zeros(PROXIES + 1, OFFICIAL[key].shape[1])}, "ckpt")


def hand_count_per_video(frames: int, proxies: int, attention: str) -> float:
    """The hand count (docs/methods.md): 12 layers of N 12 d^2 (N = M + T 49) plus the attention products, the patch embedding
    and the projection. Proxy-guided ("blocks"): 2 d (T 49 (M + 49) + M N); masked: every pair, 2 d N^2."""
    d, tokens = VIT_WIDTH, proxies + frames * PATCHES
    products = (frames * PATCHES * (proxies + PATCHES) + proxies * tokens) if attention == "blocks" else tokens**2
    return VIT_LAYERS * (tokens * 12 * d * d + 2 * d * products) + frames * PATCHES * d * 3 * 32 * 32 + d * EMBED


@pytest.fixture(scope="module")
def vit_b32() -> Backbone:
    torch.manual_seed(0)
    return Backbone(open_clip.create_model("ViT-B-32", pretrained=None, force_context_length=32,
                                           force_quick_gelu=True, precision="fp32"))


def test_macs_at_vit_b32_match_the_spec_hand_counts_by_both_counters(vit_b32):
    params = CLIPViPParams()
    cost = method_cost(CLIPViP(vit_b32, params), TEST_FRAMES, 32, 224)
    hand = hand_count_per_video(TEST_FRAMES, 1 + params.proxies, params.attention)
    for per_video in (cost.per_video, cost.check["per_video"]):
        assert per_video == pytest.approx(hand, rel=0.01)
        assert per_video == pytest.approx(SPEC_PER_VIDEO, rel=0.01)
    for per_query in (cost.per_query, cost.check["per_query"]):
        assert per_query == pytest.approx(TEXT_TOWER_L32, rel=0.01)
    assert cost.score.per_pair == cost.check["score"]["per_pair"] == EMBED
    assert cost.score.per_text == cost.score.per_video == 0


def test_the_masked_variant_also_pays_for_the_masked_out_products(vit_b32):
    params = CLIPViPParams(attention="mask")
    method = CLIPViP(vit_b32, params).eval()
    pixels = torch.randn(1, TEST_FRAMES, 3, 224, 224)
    mask = torch.ones(1, TEST_FRAMES, dtype=torch.bool)
    count = count_macs(lambda p, m: method.encode_video(p, m)["video"].sum(), (pixels, mask), method, "clipvip mask")
    hand = hand_count_per_video(TEST_FRAMES, 1 + params.proxies, "mask")
    assert count.macs == pytest.approx(hand, rel=0.01) and count.check_macs == pytest.approx(hand, rel=0.01)
    assert hand > 1.1 * SPEC_PER_VIDEO
