"""CenterCLIP: the official golden clustering, features, scores, training-mode score and loss through the
checkpoint import; the official batched k-medoids alone at the ViT-B/32 segment size; the distance form it
depends on; batch independence, masks and the all-segments-masked error; the method contract; the cost at
ViT-B/32 against the hand count.

Every shape and hyper-parameter comes from the golden files (HARNESS_GOLDEN_DIR, see conftest.py): texts,
videos, frames and words from `centerclip_golden.pt`'s inputs; the clustering block, segments, medoids,
iteration limit, threshold, Minkowski p and the official chunk size from its `config`. Files of this layout
come from the official CenterCLIP code (mzhaoshuai/CenterCLIP, `modules/clip4clip.py` with
`cluster_inter 1, cluster_algo kmediods++, sim_header meanP`) on a small random OpenAI-layout CLIP: its
`state_dict()`; on random `text_ids`/`text_mask` and `video`/`video_mask` (padded frames at the end), in eval
mode, the residual stream entering the clustering block, the segments' patch tokens, the KKZ start, the
medoid ids and assignment, the reduced sequences, the tower's tokens and segment features, the segment mask,
the pooled video, the sentence feature and the score; in training mode on the first `train_pairs` pairs, the
score and the loss; and the official `batch_fast_kmedoids_with_split` alone on redundant tokens of the
ViT-B/32 segment size (`kmedoids_case`).
"""

from __future__ import annotations

import open_clip
import pytest
import torch

from conftest import GOLDEN_DIR, load_golden
from harness.api.backbone import Backbone, ClipShape, build_clip, load_clip, read_state_dict
from harness.api.testing import assert_conforms
from harness.cost.model import method_cost
from harness.data.text import vocabulary_size
from harness.errors import CheckpointError, HarnessError
from methods.centerclip import CenterCLIP, CenterCLIPParams
from methods.centerclip import kmedoids as kmedoids_module
from methods.centerclip.kmedoids import kmedoids, pairwise_distance
from methods.centerclip.method import segment_mask

GOLDEN = load_golden("centerclip_golden.pt")
OFFICIAL = read_state_dict(GOLDEN_DIR / "centerclip_official_state_dict.pt")
CONFIG = GOLDEN["config"]
CASE = GOLDEN["kmedoids_case"]
WORDS = GOLDEN["text_ids"].shape[1]
# Max abs difference of features to the official ones; measured <= 9.6e-7 (tokens), <= 6e-7 (features).
TOLERANCE = 1e-5
# Scores carry the x100 logit scale: they are compared relative to their largest magnitude (as the method
# contract compares scores). Measured: 1.3e-5 absolute at |score| <= 24.4 (5.5e-7 relative); the golden
# file's own score and its pooled features recombined differ by 9.5e-6.
SCORE_TOLERANCE = 1e-5

# docs/cost.md and docs/methods.md, hand counts in MACs at ViT-B/32, 224 px, 12 frames, 32 words.
PLAIN_CLIP_12_FRAMES = 12 * 4.4088e9  # 52.91 G
SPEC_B6_4_49 = 35.80e9  # docs/methods.md's table: B_6 - 4, 49
TEXT_TOWER_32 = 1.2208e9


def official_params(**changes) -> CenterCLIPParams:
    """CenterCLIPParams of the golden model, from its config."""
    values = {"cluster_block": CONFIG["cluster_block_1based"] - 1, "segments": CONFIG["segments"],
              "clusters": CONFIG["clusters"], "iter_limit": CONFIG["cluster_iter_limit"],
              "threshold": CONFIG["cluster_threshold"], "norm_p": CONFIG["minkowski_norm_p"]}
    return CenterCLIPParams(**{**values, **changes})


@pytest.fixture(scope="module")
def golden_clip(tmp_path_factory):
    """The official state dict's clip.* weights (without the position_ids buffer) as an OpenAI-layout file."""
    path = tmp_path_factory.mktemp("centerclip") / "clip.pt"
    torch.save({k[len("clip."):]: v for k, v in OFFICIAL.items()
                if k.startswith("clip.") and k != "clip.visual.position_ids"}, path)
    return path


def build(clip_path, **changes) -> CenterCLIP:
    method = CenterCLIP(Backbone(load_clip("auto", clip_path, WORDS)), official_params(**changes))
    method.load_official(OFFICIAL, "centerclip_official_state_dict.pt")
    return method.eval()


@pytest.fixture(scope="module")
def official(golden_clip) -> CenterCLIP:
    return build(golden_clip)


def largest_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    return float((ours.double() - theirs.double()).abs().max())


def per_chunk_updates(updates: torch.Tensor, videos: int) -> list[int]:
    """The official loop's update count per chunk: segments in segment-major order (row s B + b) cut into
    chunks of the official split size; a chunk iterates until its last segment settles."""
    segment_major = updates.view(videos, -1).t().reshape(-1)
    return [int(chunk.max()) for chunk in segment_major.split(CONFIG["split_size"])]


def test_official_import_reproduces_the_golden_clustering(official):
    videos, segments = GOLDEN["video"].shape[0], CONFIG["segments"]
    with torch.no_grad():
        stages = official.segment_pass(GOLDEN["video"])
    assert largest_difference(stages.tokens_before_cluster, GOLDEN["tokens_before_cluster"]) <= TOLERANCE
    assert largest_difference(stages.cluster_input, GOLDEN["cluster_input"]) <= TOLERANCE
    medoids = stages.medoids
    assert torch.equal(medoids.initial_ids.view(videos, segments, -1), GOLDEN["kkz_init_ids"])
    assert torch.equal(medoids.ids.view(videos, segments, -1), GOLDEN["medoid_ids"])
    assert torch.equal(medoids.assignment.view(videos, segments, -1), GOLDEN["cluster_assign"])
    assert per_chunk_updates(medoids.updates, videos) == list(GOLDEN["kmedoids_updates"])
    assert largest_difference(stages.tokens_after_cluster, GOLDEN["tokens_after_cluster"]) <= TOLERANCE


def test_official_import_reproduces_the_golden_features_and_scores(official):
    video, mask = GOLDEN["video"], GOLDEN["video_mask"].bool()
    with torch.no_grad():
        output = official.segment_pass(video).output_tokens
        cls, rest = official.backbone.project_tokens(output.flatten(0, 1))
        tokens = torch.cat([cls[:, None], rest], dim=1).view(*output.shape[:3], -1)
        text = official.encode_text(GOLDEN["text_ids"], GOLDEN["text_mask"].bool())
        pooled = official.encode_video(video, mask)
        ours = {"visual_tokens": tokens, "visual_output": official.segment_features(video),
                "video_pooled": pooled["video"],
                "sequence_output": official.backbone.encode_sentence(GOLDEN["text_ids"])[:, None]}
        score = official.score(text, pooled)
    for name, value in ours.items():
        assert largest_difference(value, GOLDEN[name]) <= TOLERANCE, name
    assert torch.equal(official.kept_segments(mask).long(), GOLDEN["video_mask_after_cluster"])
    assert largest_difference(score, GOLDEN["score"]) <= SCORE_TOLERANCE * float(GOLDEN["score"].abs().max())


def test_training_forward_reproduces_the_official_training_score_and_loss(golden_clip):
    method = build(golden_clip).train()
    pairs = GOLDEN["train_pairs"]
    with torch.no_grad():
        text = method.encode_text(GOLDEN["text_ids"][:pairs], GOLDEN["text_mask"][:pairs].bool())
        video = method.encode_video(GOLDEN["video"][:pairs], GOLDEN["video_mask"][:pairs].bool())
        score = method.score(text, video)
        terms = method.loss(text, video)
    assert score.shape == GOLDEN["train_score"].shape == (pairs, pairs)
    assert largest_difference(score, GOLDEN["train_score"]) <= SCORE_TOLERANCE * float(score.abs().max())
    assert GOLDEN["cluster_loss"] == 0  # the official total is the similarity loss alone
    assert terms["total"].item() == pytest.approx(GOLDEN["loss"].item(), rel=1e-5)  # measured 1.2e-6
    assert terms["contrastive"].item() == pytest.approx(GOLDEN["sim_loss"].item(), rel=1e-5)


def test_kmedoids_alone_reproduces_the_official_batched_kmedoids_at_vit_b32_segment_size():
    result = kmedoids(CASE["X"], CASE["K"], CASE["iter_limit"], CASE["threshold"], CASE["norm_p"])
    assert torch.equal(result.initial_ids, CASE["kkz_init_ids"])
    assert torch.equal(result.ids, CASE["medoid_ids"])
    assert torch.equal(result.assignment, CASE["assign"])
    chunks = [int(part.max()) for part in result.updates.split(CASE["split_size"])]
    assert chunks == list(CASE["updates_per_chunk"])
    assert (result.ids.diff(dim=1) > 0).all()  # ascending, distinct


def test_distance_is_torch_cdist_bit_for_bit_and_its_matmul_form_decides_the_medoids(monkeypatch):
    x = CASE["X"]
    assert torch.equal(pairwise_distance(x), torch.cdist(x, x, p=2.0))  # matmul form (N > 25)
    small = x[:, :12]
    assert torch.equal(pairwise_distance(small), torch.cdist(small, small, p=2.0))  # direct path
    manhattan = (small[:, :, None] - small[:, None]).abs().sum(-1)
    assert torch.allclose(pairwise_distance(small, p=1.0), manhattan, rtol=1e-6, atol=0)
    self_distance = torch.diagonal(pairwise_distance(x), dim1=1, dim2=2)
    assert self_distance.max() > 1e-3  # the matmul form's diagonal is not 0

    def exact(points: torch.Tensor, p: float = 2.0) -> torch.Tensor:
        return (points[:, :, None] - points[:, None]).pow(2).sum(-1).sqrt()

    monkeypatch.setattr(kmedoids_module, "pairwise_distance", exact)
    with_exact = kmedoids(x, CASE["K"], CASE["iter_limit"], CASE["threshold"], CASE["norm_p"])
    assert (with_exact.ids != CASE["medoid_ids"]).any(dim=1).sum() > 0  # exact distances miss official medoids


def test_each_video_is_clustered_on_its_own(official):
    video = GOLDEN["video"]
    with torch.no_grad():
        together = official.segment_pass(video)
        alone = [official.segment_pass(video[i : i + 1]) for i in range(video.shape[0])]
    assert torch.equal(together.medoids.ids, torch.cat([part.medoids.ids for part in alone]))
    assert largest_difference(together.output_tokens, torch.cat([part.output_tokens for part in alone])) <= 1e-6
    official.params.cluster_budget = together.cluster_input.shape[2] ** 2  # one segment per k-medoids call
    try:
        with torch.no_grad():
            grouped = official.segment_pass(video).medoids
    finally:
        official.params.cluster_budget = CenterCLIPParams.cluster_budget
    assert torch.equal(grouped.ids, together.medoids.ids) and torch.equal(grouped.updates, together.medoids.updates)


def test_segment_mask_is_each_segments_last_frame():
    mask = torch.tensor([[True] * 12, [True] * 10 + [False] * 2, [True] * 3 + [False] * 9])
    expected = torch.tensor([[True] * 4, [True, True, True, False], [True, False, False, False]])
    assert torch.equal(segment_mask(mask, 4), expected)  # 10 real frames: the 4th segment (9, 10, 11) is dropped


def test_a_video_with_every_segment_masked_is_an_error_not_a_nan(official):
    frames = GOLDEN["video"].shape[1]
    per_segment = frames // CONFIG["segments"]
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, per_segment - 1 :] = False  # fewer real frames than a segment holds
    video = GOLDEN["video"][:2] * mask[..., None, None, None]
    with pytest.raises(HarnessError, match=rf"1 of 2 videos have fewer than {per_segment} real frames.*"
                                           rf"segments={CONFIG['segments']}"):
        official.encode_video(video, mask)
    mask[1, per_segment - 1] = True  # one full segment left: a finite feature
    with torch.no_grad():
        features = official.encode_video(video * mask[..., None, None, None], mask)["video"]
    assert torch.isfinite(features).all()


def test_settings_that_do_not_fit_are_errors(golden_clip):
    blocks = len(build(golden_clip).backbone.visual_blocks)
    with pytest.raises(HarnessError, match=f"cluster_block={blocks}.*{blocks} blocks"):
        build(golden_clip, cluster_block=blocks)
    method = build(golden_clip, segments=5)
    with pytest.raises(HarnessError, match="cannot be cut into segments=5"):
        method.encode_video(GOLDEN["video"], GOLDEN["video_mask"].bool())
    method = build(golden_clip, clusters=1000)
    with pytest.raises(HarnessError, match="clusters=1000 medoids"):
        method.encode_video(GOLDEN["video"], GOLDEN["video_mask"].bool())
    patches = OFFICIAL["clip.visual.positional_embedding"].shape[0] - 1
    assert build(golden_clip, clusters=None).clusters == patches  # K defaults to the patches per frame


def test_gradients_reach_the_tower_through_the_medoids_and_the_class_tokens(golden_clip):
    method = build(golden_clip).train()
    pairs = GOLDEN["train_pairs"]
    terms = method.loss(method.encode_text(GOLDEN["text_ids"][:pairs], GOLDEN["text_mask"][:pairs].bool()),
                        method.encode_video(GOLDEN["video"][:pairs], GOLDEN["video_mask"][:pairs].bool()))
    terms["total"].backward()
    blocks = method.backbone.visual_blocks
    below, above = blocks[method.cluster_block - 1], blocks[method.cluster_block]
    assert below.mlp.c_fc.weight.grad.abs().sum() > 0  # through the gathered medoids and the averaged CLS
    assert above.mlp.c_fc.weight.grad.abs().sum() > 0
    assert method.head_parameters() == []  # no parameters added


def test_the_official_freeze_rule_leaves_embeddings_conv1_and_ln_pre_untrained(golden_clip):
    frozen = {"token_embedding.weight", "positional_embedding", "visual.class_embedding",
              "visual.positional_embedding", "visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_pre.bias"}
    trained = {name for name, p in build(golden_clip).backbone.clip.named_parameters() if p.requires_grad}
    everything = {name for name, _ in build(golden_clip).backbone.clip.named_parameters()}
    assert trained == everything - frozen
    unfrozen = build(golden_clip, freeze_embeddings=False)
    assert all(p.requires_grad for p in unfrozen.backbone.clip.parameters())
    assert "deviation" in unfrozen.protocol()["frozen_embeddings"]


def test_import_skips_position_ids_and_rejects_unknown_or_missing_keys(golden_clip):
    method = build(golden_clip)
    method.load_official({k: v for k, v in OFFICIAL.items() if k != "clip.visual.position_ids"}, "ckpt.bin")
    with pytest.raises(CheckpointError, match="cluster_embed"):
        method.load_official({**OFFICIAL, "cluster_embed": torch.zeros(4, 128)}, "ckpt.bin")
    with pytest.raises(CheckpointError, match="visual.proj"):
        method.load_official({k: v for k, v in OFFICIAL.items() if k != "clip.visual.proj"}, "ckpt.bin")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_conforms_at_the_synthetic_suite_shapes():
    """The synthetic suite's backbone (embed and widths 64, 3 vision blocks, 32 px, patch 8: 16 patches) at 12
    frames: 48 tokens per segment, the matmul-form distance."""
    torch.manual_seed(0)
    shape = ClipShape(embed_dim=64, image_size=32, patch_size=8, vision_width=64, vision_layers=3,
                      context_length=32, vocab_size=vocabulary_size(), text_width=64, text_layers=3)
    assert_conforms(CenterCLIP, backbone=Backbone(build_clip(shape, 32)), params={"cluster_block": 1}, frames=12,
                    words=32)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_cost_at_vit_b32_matches_the_hand_count_and_saves_a_third():
    torch.manual_seed(0)
    backbone = Backbone(open_clip.create_model("ViT-B-32", pretrained=None, force_context_length=32,
                                               force_quick_gelu=True, precision="fp32")).eval()
    method = CenterCLIP(backbone, CenterCLIPParams())
    assert method.cluster_block == 6  # the middle of the 12 blocks: the official B_6
    params, frames = method.params, 12
    width, blocks, patches = backbone.clip.visual.conv1.weight.shape[0], len(backbone.visual_blocks), method.patches
    per_segment = frames // params.segments

    def block(tokens: int) -> int:  # QKV, output and MLP projections, plus QK^T and AV
        return 12 * tokens * width**2 + 2 * tokens**2 * width

    hand = (frames * patches * 3 * 32**2 * width + method.cluster_block * frames * block(1 + patches)
            + (blocks - method.cluster_block) * params.segments * block(1 + method.clusters)
            + params.segments * width * backbone.embed_dim + params.segments * (per_segment * patches) ** 2 * width)
    assert hand == pytest.approx(SPEC_B6_4_49, rel=1e-3)
    cost = method_cost(method, frames, 32, 224)
    assert cost.per_video == pytest.approx(hand, rel=0.01)  # fvcore, norms included: +0.11%
    assert cost.check["per_video"] == pytest.approx(hand, rel=0.01)  # FlopCounterMode: +5e-6 (cdist's 2 extra columns)
    assert 1 - cost.per_video / PLAIN_CLIP_12_FRAMES == pytest.approx(1 - SPEC_B6_4_49 / PLAIN_CLIP_12_FRAMES, abs=0.01)
    assert cost.per_query == pytest.approx(TEXT_TOWER_32, rel=0.01)
    assert cost.score.per_pair == backbone.embed_dim  # meanP's one dot product
    assert cost.score.per_text == cost.score.per_video == cost.score.fixed == 0
