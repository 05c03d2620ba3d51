"""Prompt Switch: official golden encoder states, features, score, training-mode caption logits, class weights,
loss terms and prompt gradient through the checkpoint import; frame order, padding and grouping; the
captioner's padding; the method contract; MACs at ViT-B/32 against the hand counts of docs/methods.md.

Every shape comes from the golden files: texts, words, videos and frames from `promptswitch_golden.pt`'s inputs,
P from the prompt cube, F, the captioner's depth and loss weights from its `config`. The golden `video` is in
the order the official model receives it (chunk-major) with padded frames repeating the last real frame;
`video_mask` is information only (the model has no frame mask). The official model was run in eval mode on
all frames, and in training mode (dropout off) on the first F frames of the first `train_pairs` pairs.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer

from conftest import load_golden
from harness.api.backbone import Backbone, build_clip, shape_from_state_dict
from harness.api.hf_clip import hf_to_openai
from harness.api.testing import assert_conforms
from harness.cost.model import method_cost
from harness.errors import CheckpointError, HarnessError
from methods.promptswitch import PromptSwitch, PromptSwitchParams
from methods.promptswitch.captioner import FREQUENT_WORD_IDS, official_padding
from methods.promptswitch.encoder import aggregate, official_frame_order, training_selection
from methods.promptswitch.official import KEY_MAP

GOLDEN = load_golden("promptswitch_golden.pt")
OFFICIAL = load_golden("promptswitch_official_state_dict.pt")
CONFIG = GOLDEN["config"]
TOLERANCE = 1e-5  # max abs difference to the official outputs (measured <= 1.9e-6: the loss and the prompt gradient)
WORDS = GOLDEN["text_ids"].shape[1]
PROMPTS = OFFICIAL["clip.vision_model.encoder.prompt_embedding"].shape[0]
GROUP = CONFIG["num_frames"]
# The hand counts (docs/methods.md) at ViT-B/32 (d = 768, 12 layers, 49 patches, D = 512, 12 frames, P = F = 6), in MACs.
VIT_WIDTH, VIT_LAYERS, PATCHES, EMBED, TEST_FRAMES = 768, 12, 49, 512, 12
TEXT_TOWER_L32 = 1.2208e9
SPEC_PER_VIDEO = 59.3e9


def official_params(**changes) -> PromptSwitchParams:
    return PromptSwitchParams(**{"prompts": PROMPTS, "train_frames": GROUP,
                                 "caption_layers": CONFIG["num_captioner_layers"],
                                 "frequent_word_weight": CONFIG["frequent_word_weight"],
                                 "caption_loss_weight": CONFIG["caption_loss_mult"], **changes})


def build(**changes) -> PromptSwitch:
    clip, _ = hf_to_openai(OFFICIAL, "golden", "clip.", own=tuple(k for k in KEY_MAP if k.startswith("clip.")))
    method = PromptSwitch(Backbone(build_clip(shape_from_state_dict(clip), WORDS)), official_params(**changes))
    method.load_official(OFFICIAL, "promptswitch_official_state_dict.pt")
    return method.eval()


@pytest.fixture(scope="module")
def official() -> PromptSwitch:
    return build()


def time_ordered(video: torch.Tensor) -> torch.Tensor:
    """Frames in the official (chunk-major) order -> the time order the engine gives."""
    return video[:, official_frame_order(video.shape[1], PROMPTS).argsort()]


def largest(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.detach() - b).abs().max())


def test_the_derived_sizes_are_the_official_ones(official):
    decoder = official.captioner.decoder.layers[0]
    assert decoder.self_attn.num_heads == CONFIG["caption_decoder_heads"]
    assert decoder.linear1.out_features == CONFIG["caption_decoder_ffn"]
    assert official.aggregation.num_heads == official.backbone.visual_blocks[0].attn.num_heads
    assert GOLDEN["vision_hidden_states"][0].shape[1] == CONFIG["tokens_per_frame"]


def test_encoder_states_features_and_score_reproduce_the_official_ones(official):
    video = GOLDEN["video"]
    with torch.no_grad():
        states = []
        last = official.encoder_output(video.flatten(0, 1), states)
        aggregated = aggregate(official.aggregation, last, GROUP, PROMPTS)
        frames = official.frame_features(video)
        normalised = F.normalize(frames, dim=-1)
        # the public path: time-ordered frames, every frame real
        features = official.encode_video(time_ordered(video), torch.ones(video.shape[:2], dtype=torch.bool))
        text = official.encode_text(GOLDEN["text_ids"], GOLDEN["text_mask"].bool())
        sentence = official.backbone.encode_sentence(GOLDEN["text_ids"])
    assert len(states) == len(GOLDEN["vision_hidden_states"]) == len(official.backbone.visual_blocks) + 1
    for ours, theirs in zip(states, GOLDEN["vision_hidden_states"]):
        assert largest(ours, theirs) <= TOLERANCE
    assert largest(last, GOLDEN["vision_last_hidden"]) <= TOLERANCE
    assert largest(official.backbone.clip.visual.ln_post(aggregated), GOLDEN["cls_aggregated_post_ln"]) <= TOLERANCE
    assert largest(frames, GOLDEN["frame_features"]) <= TOLERANCE
    assert largest(normalised, GOLDEN["frame_features_normalised"]) <= TOLERANCE
    assert largest(normalised.mean(dim=1), GOLDEN["video_pooled"]) <= TOLERANCE
    assert largest(features["video"], F.normalize(GOLDEN["video_pooled"], dim=-1)) <= TOLERANCE
    assert largest(sentence, GOLDEN["text_features"]) <= TOLERANCE
    assert largest(text["text"], GOLDEN["text_features_normalised"]) <= TOLERANCE
    assert largest(official.score(text, features), GOLDEN["score"]) <= TOLERANCE


def test_zero_padded_frames_with_the_mask_equal_the_official_repeat_padding():
    mask = GOLDEN["video_mask"].bool()
    assert not mask.all()  # some golden videos are padded
    zeroed = GOLDEN["video"] * mask[..., None, None, None]
    given = build(frame_order="given")
    with torch.no_grad():
        assert largest(given.encode_video(zeroed, mask)["video"], F.normalize(GOLDEN["video_pooled"], dim=-1)) <= TOLERANCE
        # in the official order: zero-padded time-ordered frames against the same frames repeat-padded by hand
        official = build()
        last = mask.long().sum(dim=1) - 1
        repeated = torch.where(mask[..., None, None, None], zeroed, zeroed[torch.arange(len(last)), last][:, None])
        full = torch.ones_like(mask)
        assert largest(official.encode_video(zeroed, mask)["video"], official.encode_video(repeated, full)["video"]) == 0


def test_training_reproduces_caption_logits_weights_loss_terms_and_the_prompt_gradient():
    method = build().train()
    pairs, frames = GOLDEN["train_pairs"], GOLDEN["train_frames"]
    assert frames == GROUP
    video = time_ordered(GOLDEN["video"][:pairs, :frames])
    features = method.encode_video(video, torch.ones(video.shape[:2], dtype=torch.bool))
    text = method.encode_text(GOLDEN["text_ids"][:pairs], GOLDEN["text_mask"][:pairs].bool())
    terms = method.loss(text, features)
    terms["total"].backward()
    assert torch.equal(text["caption_ids"], GOLDEN["text_ids_official"][:pairs])  # EOT padding, as the official one
    assert largest(F.normalize(features["frames"], dim=-1), GOLDEN["train_frame_features_normalised"]) <= TOLERANCE
    assert largest(method.score(text, features), GOLDEN["train_score"]) <= TOLERANCE
    assert largest(method.caption_logits(text, features), GOLDEN["caption_logits"]) <= TOLERANCE
    assert torch.equal(method.caption_weights, GOLDEN["caption_class_weight"])
    for ours, official in (("contrastive", "loss_contrastive"), ("caption", "loss_caption"), ("total", "loss_total")):
        assert terms[ours].item() == pytest.approx(GOLDEN[official].item(), abs=TOLERANCE), ours
    assert largest(method.prompt_embedding.grad, GOLDEN["grad_prompt_embedding"]) <= TOLERANCE


def test_caption_loss_decodes_only_the_kept_prefix_and_equals_the_loss_on_every_logit():
    """The loss decodes up to the longest caption and projects only the kept positions; the official one takes the
    logits at every position and keeps the same ones. Captions of different lengths; tolerance 1e-6 relative."""
    method = build().train()
    pairs, frames = GOLDEN["train_pairs"], GOLDEN["train_frames"]
    video = method.encode_video(time_ordered(GOLDEN["video"][:pairs, :frames]), torch.ones(pairs, frames, dtype=torch.bool))
    ids = method.encode_text(GOLDEN["text_ids"][:pairs], GOLDEN["text_mask"][:pairs].bool())["caption_ids"]
    assert len(set(GOLDEN["text_mask"][:pairs].sum(dim=1).tolist())) > 1  # lengths differ: a real trim
    keep = ids[:, :-1] != ids.max(dim=1, keepdim=True).values
    every = F.cross_entropy(method.captioner(method.backbone, video["frames"], ids)[keep], ids[:, 1:][keep],
                            weight=method.caption_weights)
    trimmed = method.captioner.loss(method.backbone, video["frames"], ids, method.caption_weights)
    assert trimmed.item() == pytest.approx(every.item(), rel=1e-6)


def test_frequent_word_ids_are_the_clip_tokenizer_ids():
    tokenizer = SimpleTokenizer()
    assert {word: tokenizer.encode(word) for word in FREQUENT_WORD_IDS} == {w: [i] for w, i in FREQUENT_WORD_IDS.items()}
    method = PromptSwitch(Backbone(build_clip(shape_from_state_dict(
        hf_to_openai(OFFICIAL, "golden", "clip.", own=tuple(KEY_MAP))[0]), WORDS)), PromptSwitchParams(prompts=PROMPTS))
    weights = method.caption_weights
    assert int((weights != 1).sum()) == len(FREQUENT_WORD_IDS) + 2  # plus SOT and EOT, the last two ids
    assert weights[-2:].tolist() == [CONFIG["frequent_word_weight"]] * 2


def test_caption_loss_skips_the_eot_and_the_pads():
    """Different ids after the EOT change no loss term; a word before it does."""
    method = build().train()
    pairs, frames = GOLDEN["train_pairs"], GOLDEN["train_frames"]
    video = method.encode_video(time_ordered(GOLDEN["video"][:pairs, :frames]), torch.ones(pairs, frames, dtype=torch.bool))
    ids, mask = GOLDEN["text_ids"][:pairs], GOLDEN["text_mask"][:pairs].bool()
    loss = method.loss(method.encode_text(ids, mask), video)["caption"]
    other = torch.where(mask, ids, torch.randint(1, int(GOLDEN["sot"]), ids.shape))
    assert method.loss(method.encode_text(other, mask), video)["caption"].item() == loss.item()
    moved = ids.clone()
    moved[0, 1] = (moved[0, 1] + 1) % int(GOLDEN["sot"])
    assert method.loss(method.encode_text(moved, mask), video)["caption"].item() != pytest.approx(loss.item())
    assert official_padding(ids, mask)[~mask].eq(int(GOLDEN["eot"])).all()


def test_official_frame_order_is_chunk_major():
    assert official_frame_order(12, 6).tolist() == [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]  # docs/methods.md's example
    order = official_frame_order(12, 3)  # chunk c, segment s at c P + s: time index s C + c, C = 4
    assert all(order[c * 3 + s] == s * 4 + c for c in range(4) for s in range(3))


def test_training_keeps_f_frames_one_per_segment_and_chunk():
    torch.manual_seed(0)
    for _ in range(20):
        positions = training_selection(4 * PROMPTS, PROMPTS, GROUP)
        assert positions.shape == (GROUP,) and (positions < 4 * PROMPTS).all()
        assert (positions % PROMPTS).tolist() == list(range(PROMPTS)) * (GROUP // PROMPTS)  # segment of each
    method = build().train()
    video = GOLDEN["video"][:2]
    assert method.encode_video(video, torch.ones(video.shape[:2], dtype=torch.bool))["frames"].shape[1] == GROUP
    assert build(train_subsample=False).train().encode_video(
        video, torch.ones(video.shape[:2], dtype=torch.bool))["frames"].shape[1] == video.shape[1]


def test_a_frame_count_that_is_not_a_multiple_of_f_repeats_the_last_frame(official):
    video = time_ordered(GOLDEN["video"][:2])[:, : GROUP + 2]
    mask = torch.ones(video.shape[:2], dtype=torch.bool)
    extended = torch.cat([video, video[:, -1:].expand(-1, GROUP - 2, -1, -1, -1)], dim=1)
    with torch.no_grad():
        assert largest(official.encode_video(video, mask)["video"], official.encode_video(extended, mask.new_ones(
            extended.shape[:2]))["video"]) == 0


def test_score_is_the_inner_product_without_logit_scale(official):
    torch.manual_seed(1)
    text, video = {"text": F.normalize(torch.randn(3, 8), dim=-1)}, {"video": F.normalize(torch.randn(4, 8), dim=-1)}
    product = official.inner_product(text, video)
    assert product.scale == 1.0 and PromptSwitch.score_kind == "similarity"
    assert torch.equal(official.score(text, video), product.text @ product.video.t())


def test_params_that_cannot_group_are_refused(official):
    with pytest.raises(HarnessError, match="multiple of prompts"):
        PromptSwitch(official.backbone, PromptSwitchParams(prompts=4, train_frames=6))


def test_protocol_declares_the_deviations_and_the_official_padding(official):
    protocol = official.protocol()
    assert "deviation" in protocol["aggregation_lr"] and "CLIP group" in protocol["aggregation_lr"]
    assert "last real frame" in protocol["frame_padding"]
    assert "aggregation_init" not in protocol
    assert "deviation" in build(aggregation_out_std=0.02).protocol()["aggregation_init"]


def test_the_official_zero_init_leaves_only_the_aggregation_in_projection_without_gradient():
    """The official out_proj starts at zero: the aggregation is the identity and its in-projection gets no
    gradient on the first step; every other head parameter gets one."""
    torch.manual_seed(0)
    method = build()
    with torch.no_grad():
        method.aggregation.out_proj.weight.zero_()
        method.aggregation.out_proj.bias.zero_()
    method.train()
    pairs, frames = GOLDEN["train_pairs"], GOLDEN["train_frames"]
    video = method.encode_video(time_ordered(GOLDEN["video"][:pairs, :frames]), torch.ones(pairs, frames, dtype=torch.bool))
    method.loss(method.encode_text(GOLDEN["text_ids"][:pairs], GOLDEN["text_mask"][:pairs].bool()), video)["total"].backward()
    names = {id(p): n for n, p in method.named_parameters()}
    silent = sorted(names[id(p)] for p in method.head_parameters() if not p.grad.any())
    assert silent == ["aggregation.in_proj_bias", "aggregation.in_proj_weight"]


def test_conforms():
    """With the official zero init the loss-gradients rule would flag the aggregation's in-projection (see
    above); the contract is checked with its out_proj moved off zero."""
    assert_conforms(PromptSwitch, params={"aggregation_out_std": 0.02}, frames=12, words=16)


def test_import_rejects_unknown_missing_and_wrapped_keys(official):
    with pytest.raises(CheckpointError, match="caption_extra"):
        official.load_official({**OFFICIAL, "caption_extra.weight": torch.zeros(1)}, "ckpt")
    with pytest.raises(CheckpointError, match="aggregation.in_proj_bias"):
        official.load_official({k: v for k, v in OFFICIAL.items() if k != "clip.vision_model.attn.in_proj_bias"}, "ckpt")
    with pytest.raises(CheckpointError, match="module."):
        official.load_official({f"module.{k}": v for k, v in OFFICIAL.items()}, "ckpt")


def hand_count_per_video(frames: int, prompts: int, group: int) -> float:
    """The hand count (docs/methods.md): 12 layers of N 12 d^2 + 2 N^2 d per frame (N = 50 + P), the patch embedding, the
    aggregation per group (F d^2 q, 2 F P d^2 k/v, 2 F^2 P d attention, F d^2 out) and the projection."""
    d, tokens = VIT_WIDTH, 1 + PATCHES + prompts
    per_frame = VIT_LAYERS * (tokens * 12 * d * d + 2 * tokens * tokens * d) + PATCHES * d * 3 * 32 * 32
    per_group = group * d * d + 2 * group * prompts * d * d + 2 * group * group * prompts * d + group * d * d
    return frames * per_frame + frames // group * per_group + frames * d * EMBED


def test_macs_at_vit_b32_match_the_hand_counts_by_both_counters():
    torch.manual_seed(0)
    backbone = Backbone(open_clip.create_model("ViT-B-32", pretrained=None, force_context_length=32,
                                               force_quick_gelu=True, precision="fp32"))
    cost = method_cost(PromptSwitch(backbone, PromptSwitchParams()), TEST_FRAMES, 32, 224)
    params = PromptSwitchParams()
    hand = hand_count_per_video(TEST_FRAMES, params.prompts, params.train_frames)
    for per_video in (cost.per_video, cost.check["per_video"]):
        assert per_video == pytest.approx(hand, rel=0.01)
        assert per_video == pytest.approx(SPEC_PER_VIDEO, rel=0.01)
    for per_query in (cost.per_query, cost.check["per_query"]):
        assert per_query == pytest.approx(TEXT_TOWER_L32, rel=0.01)
    assert cost.score.per_pair == cost.check["score"]["per_pair"] == EMBED
    assert cost.score.per_text == cost.score.per_video == 0
