"""X-CLIP: official golden features, the four scores, the fine-grained intermediates, the evaluation and
training scores and the loss through the checkpoint import; the scores against a loop-by-loop
transcription of the official formulas; what reads padded positions; the strict import; chunking; the
method contract; MACs at ViT-B/32 shapes against the hand counts.

Every shape comes from the golden files (HARNESS_GOLDEN_DIR, see conftest.py): texts, videos, frames and
words from `xclip_golden.pt`'s inputs; seqTransf depth, softmax temperature and the official test loop's
block size from its `config` and `eval_block`; frame positions from the state dict. Files of this layout
come from the official X-CLIP code (class `XCLIP`, `loose_type`, `sim_header seqTransf`) built on a small
random OpenAI-layout CLIP: its `state_dict()` (the eight score matrices moved off the identity); in eval
mode on random `text_ids`/`text_mask` (SOT, words, EOT, padding) and `video`/`video_mask` (padded frames
are zero pixels), the locals of `_loose_similarity` (features, the four scaled scores), those of
`_attenion_over_fine_grained_sim_matrix` (`fine_*`) and the test loop's `score` (`_run_on_single_gpu`
over blocks of `eval_block`); in training mode on the first `train_pairs` pairs, the score the forward
feeds its loss, the four scores and the loss.
"""

from __future__ import annotations

from dataclasses import asdict

import open_clip
import pytest
import torch
import torch.nn.functional as F

from conftest import GOLDEN_DIR, load_golden
from harness.api.backbone import Backbone, load_clip, read_state_dict
from harness.api.testing import assert_conforms
from harness.cost.flops import count_macs
from harness.cost.model import method_cost
from harness.errors import CheckpointError, HarnessError
from harness.retrieval.tiles import Scoring, score_in_chunks
from harness.suite import method_params, parse_suite
from methods.xclip import XCLIP, XCLIPParams
from methods.xclip.method import FROZEN_BY_OFFICIAL
from methods.xclip.official import checkpoint_sizes
from methods.xclip.scores import EMBED_MATRICES, FRAME_MATRICES, SCORES, WORD_MATRICES, four_scores

GOLDEN = load_golden("xclip_golden.pt")
OFFICIAL = read_state_dict(GOLDEN_DIR / "xclip_official_state_dict.pt")
N_TEXTS, WORDS = GOLDEN["text_ids"].shape
N_VIDEOS, FRAMES = GOLDEN["video"].shape[:2]
# Features and the fine-grained intermediates (no logit scale): max abs difference, the golden README's
# rule (measured <= 1.6e-6 on the features, <= 5.7e-7 on the intermediates).
TOLERANCE = 1e-5
# The x100 scores, relative to the largest golden magnitude: the 0.01 temperature amplifies float32
# rounding about 30-fold, so a few 1e-6 relative (measured <= 1.2e-6, i.e. <= 3.6e-5 absolute on values
# up to 31).
SCORE_TOLERANCE = 5e-6
FEATURES = ("sequence_output", "seq_features", "visual_output", "video_frames_seqtransf", "video_feature",
            "frame_features", "sentence_feature", "word_features")
INTERMEDIATES = ("fine_sim", "fine_word_level", "fine_frame_level", "fine_sent2frame", "fine_video2word")
# Hand counts in MACs at ViT-B/32 shapes (D 512, L 32 words, T 12 frames): docs/cost.md section 3 for the towers
# (its text tower projects the EOT state only: X-CLIP projects all L, (L - 1) D^2 more) and seqTransf; the
# docs/methods.md's per-query projections t^ W_g and w^ W_l, D^2 + L D^2, and per-pair
# P = D (1 + L + T + L T) + 2 L^2 + 2 T^2 + T L^2 + L T^2.
IMAGE_TOWER, TEXT_TOWER_32, SEQ_TRANSF_12 = 4.4088e9, 1.2208e9, 0.1516e9
D, L, T = 512, 32, 12
QUERY_PROJECTIONS = D * D + L * D * D  # 8,650,752
PER_QUERY = TEXT_TOWER_32 + (L - 1) * D * D + QUERY_PROJECTIONS  # 1.2376 G
PER_VIDEO = T * IMAGE_TOWER + SEQ_TRANSF_12  # 53.06 G
PAIR = D * (1 + L + T + L * T) + 2 * L**2 + 2 * T**2 + T * L**2 + L * T**2  # 238,880


def golden_params(**overrides) -> XCLIPParams:
    """The golden model's sizes and hyper-parameters, read from the files."""
    config = GOLDEN["config"]
    values = {"layers": config["cross_num_hidden_layers"], "words": config["max_words"],
              "frames": config["max_frames"], "temperature": config["softmax_temperature"],
              "frame_positions": OFFICIAL["frame_position_embeddings.weight"].shape[0]}
    return XCLIPParams(**{**values, **overrides})


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """The official state dict's clip.* weights as an OpenAI-layout CLIP file."""
    path = tmp_path_factory.mktemp("xclip") / "clip.pt"
    torch.save({k[len("clip."):]: v for k, v in OFFICIAL.items() if k.startswith("clip.")}, path)
    return path


def build(clip_path, **overrides) -> XCLIP:
    return XCLIP(Backbone(load_clip("auto", clip_path, WORDS)), golden_params(**overrides))


@pytest.fixture(scope="module")
def official(clip_path) -> XCLIP:
    method = build(clip_path)
    method.load_official(OFFICIAL, "xclip_official_state_dict.pt")
    return method.eval()


def golden_features(method: XCLIP, pairs: int | None = None, video: torch.Tensor | None = None,
                    text_ids: torch.Tensor | None = None):
    n = slice(None) if pairs is None else slice(0, pairs)
    video = GOLDEN["video"] if video is None else video
    text_ids = GOLDEN["text_ids"] if text_ids is None else text_ids
    with torch.no_grad():
        return (method.encode_text(text_ids[n], GOLDEN["text_mask"][n].bool()),
                method.encode_video(video[n], GOLDEN["video_mask"][n].bool()))


def relative_difference(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours - expected).abs().max() / expected.abs().max())


def test_official_import_reproduces_the_golden_features(official):
    mask = GOLDEN["video_mask"].bool()
    with torch.no_grad():
        sentence, words = official.backbone.encode_text(GOLDEN["text_ids"])
        frames = official.backbone.encode_frames(GOLDEN["video"])
        text, video = golden_features(official)
        ours = {"sequence_output": sentence[:, None], "seq_features": words, "visual_output": frames,
                "video_frames_seqtransf": official.temporal_frames(frames, mask), "video_feature": video["video"],
                "frame_features": video["frames"], "sentence_feature": text["sentence"],
                "word_features": text["words"]}
    for name in FEATURES:
        assert ours[name].shape == GOLDEN[name].shape, name
        assert (ours[name] - GOLDEN[name]).abs().max() <= TOLERANCE, name
    assert official.backbone.logit_scale.exp().item() == pytest.approx(GOLDEN["logit_scale"], rel=1e-7)


def test_official_import_reproduces_the_four_scores_and_the_fine_grained_intermediates(official):
    text, video = golden_features(official)
    with torch.no_grad():
        scores = official.scores(text, video)
        fine = official.fine_grained(text, video)
    for name in SCORES:
        assert scores[name].shape == GOLDEN["scores"][name].shape == (N_TEXTS, N_VIDEOS), name
        assert relative_difference(scores[name], GOLDEN["scores"][name]) <= SCORE_TOLERANCE, name
    for name in INTERMEDIATES:
        assert fine[name].shape == GOLDEN[name].shape, name
        assert (fine[name] - GOLDEN[name]).abs().max() <= TOLERANCE, name


def test_evaluation_score_as_the_official_test_loop_computes_it(official):
    """The official loop scores blocks of `eval_block` texts x videos; so do the engine's chunks."""
    text, video = golden_features(official)
    with torch.no_grad():
        blocked = score_in_chunks(official, text, video, Scoring(torch.device("cpu"), GOLDEN["eval_block"]))
        whole = official.score(text, video)
    assert relative_difference(blocked, GOLDEN["score"]) <= SCORE_TOLERANCE
    assert relative_difference(whole, GOLDEN["score"]) <= SCORE_TOLERANCE
    stacked = torch.stack([GOLDEN["scores"][name] for name in SCORES]).mean(dim=0)
    assert relative_difference(whole, stacked) <= SCORE_TOLERANCE  # S is the mean of the four


def test_training_score_and_loss_reproduce_the_official_forward(official):
    pairs = GOLDEN["train_pairs"]
    official.train()
    try:
        text, video = golden_features(official, pairs)
        with torch.no_grad():
            score = official.score(text, video)
            scores = official.scores(text, video)
            terms = official.loss(text, video)
    finally:
        official.eval()
    assert score.shape == GOLDEN["train_score"].shape == (pairs, pairs)
    assert relative_difference(score, GOLDEN["train_score"]) <= SCORE_TOLERANCE
    for name in SCORES:
        assert relative_difference(scores[name], GOLDEN["train_scores"][name]) <= SCORE_TOLERANCE, name
    assert set(terms) == {"total", "contrastive"}  # symmetric cross-entropy, the only loss
    assert terms["total"].item() == pytest.approx(GOLDEN["loss"].item(), rel=1e-5)


def by_loops(t, w, v, f, weights, tau):
    """The official formulas, one text a and one video b at a time, each softmax on one vector."""
    def aosm(x, weight):  # sum_i x_i [softmax(x / tau) @ W]_i
        return (x * (torch.softmax(x / tau, dim=0) @ weight)).sum()

    out = {name: torch.zeros(t.shape[0], v.shape[0]) for name in SCORES}
    for a in range(t.shape[0]):
        for b in range(v.shape[0]):
            out["video_sentence"][a, b] = (t[a] @ weights["global_mat_weight"]) @ v[b]
            out["video_word"][a, b] = aosm(w[a] @ v[b], weights["word_logit_weight"])
            out["sentence_frame"][a, b] = aosm(f[b] @ t[a], weights["frame_logit_weight"])
            fine = (w[a] @ weights["local_mat_weight"]) @ f[b].t()  # (L, T)
            over_words = torch.stack([aosm(fine[:, j], weights["word_mat_weight"]) for j in range(f.shape[1])])
            over_frames = torch.stack([aosm(fine[i], weights["frame_mat_weight"]) for i in range(w.shape[1])])
            out["frame_word"][a, b] = (aosm(over_words, weights["frame_mat_weight2"])
                                       + aosm(over_frames, weights["word_mat_weight2"])) / 2
    return out


def test_four_scores_match_the_official_formulas_computed_loop_by_loop():
    torch.manual_seed(1)
    dim, words, frames, tau = 6, 4, 5, 0.05
    t, w = F.normalize(torch.randn(3, dim), dim=-1), F.normalize(torch.randn(3, words, dim), dim=-1)
    v, f = F.normalize(torch.randn(2, dim), dim=-1), F.normalize(torch.randn(2, frames, dim), dim=-1)
    # non-symmetric matrices: a matrix applied on the wrong side shows
    sizes = {**dict.fromkeys(EMBED_MATRICES, dim), **dict.fromkeys(WORD_MATRICES, words),
             **dict.fromkeys(FRAME_MATRICES, frames)}
    weights = {name: torch.eye(size) + 0.3 * torch.randn(size, size) for name, size in sizes.items()}
    text = {"sentence": t, "words": w, "sentence_global": t @ weights["global_mat_weight"],
            "words_local": w @ weights["local_mat_weight"]}
    ours = four_scores(text, {"video": v, "frames": f}, weights, tau)
    expected = by_loops(t, w, v, f, weights, tau)
    for name in SCORES:
        assert (ours[name] - expected[name]).abs().max() <= 1e-5, name


def test_padded_frames_enter_the_frame_scores_only_and_padded_words_the_word_scores_only(official):
    """No mask in the scores (declared in protocol()): other content in padded frames moves the two frame
    scores, not the video feature's; other ids at padded word positions move the word scores, not the
    sentence's (the causal encoder hides them from the EOT state)."""
    frame_mask, token_mask = GOLDEN["video_mask"].bool(), GOLDEN["text_mask"].bool()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(GOLDEN["video"].shape, generator=generator)
    other_frames = torch.where(frame_mask[..., None, None, None], GOLDEN["video"], noise)
    filler = torch.randint(1, int(GOLDEN["sot"]), token_mask.shape, generator=generator)
    other_ids = torch.where(token_mask, GOLDEN["text_ids"], filler)
    assert not frame_mask.all() and not token_mask.all()
    with torch.no_grad():
        base = official.scores(*golden_features(official))
        frames_moved = official.scores(*golden_features(official, video=other_frames))
        words_moved = official.scores(*golden_features(official, text_ids=other_ids))
    moved = {name: {"frames": (frames_moved[name] - base[name]).abs().max().item(),
                    "words": (words_moved[name] - base[name]).abs().max().item()} for name in SCORES}
    assert moved["video_sentence"]["frames"] <= 1e-4 and moved["video_sentence"]["words"] <= 1e-4
    assert moved["video_word"]["frames"] <= 1e-4 and moved["video_word"]["words"] > 1e-2
    assert moved["sentence_frame"]["frames"] > 1e-2 and moved["sentence_frame"]["words"] <= 1e-4
    assert moved["frame_word"]["frames"] > 1e-2 and moved["frame_word"]["words"] > 1e-2
    protocol = official.protocol()
    assert "official" in protocol["padded_frames"] and "official" in protocol["padded_words"]


def test_fp16_clip_weights_are_cast_to_float32(official, clip_path):
    """The official checkpoints hold fp16 CLIP weights (convert_weights; logit_scale stays fp32)."""
    half = {k: (v.half() if k.startswith("clip.") and k != "clip.logit_scale" else v) for k, v in OFFICIAL.items()}
    method = build(clip_path)
    method.load_official(half, "xclip fp16 checkpoint")
    method.eval()
    assert all(p.dtype == torch.float32 for p in method.parameters())
    with torch.no_grad():  # the small CLIP is fp16-exact: the same model
        assert torch.equal(method.score(*golden_features(method)), official.score(*golden_features(official)))


def test_every_tensor_of_the_official_state_dict_is_used(official):
    """The strict import puts every official key into a parameter (none skipped, none left over); each
    head parameter so loaded moves the score (clip.* ones are the backbone's towers)."""
    mask = GOLDEN["video_mask"].bool()
    with torch.no_grad():
        sentence, words = official.backbone.encode_text(GOLDEN["text_ids"])
        frames = official.backbone.encode_frames(GOLDEN["video"])
    score = official.score(official.text_features(sentence, words), official.video_features(frames, mask))
    head = {name: p for name, p in official.named_parameters() if not name.startswith("backbone.")}
    gradients = torch.autograd.grad(score.sum(), list(head.values()))
    assert len(head) == sum(1 for key in OFFICIAL if not key.startswith("clip."))
    assert [name for name, g in zip(head, gradients) if not g.abs().sum() > 0] == []


def test_import_refuses_unknown_missing_and_wrapped_keys(clip_path):
    method = build(clip_path)
    with pytest.raises(CheckpointError, match="not_an_xclip_key"):
        method.load_official({**OFFICIAL, "not_an_xclip_key": torch.zeros(1)}, "ckpt.bin")
    with pytest.raises(CheckpointError, match="frame_mat_weight2"):
        method.load_official({k: v for k, v in OFFICIAL.items() if k != "frame_mat_weight2"}, "ckpt.bin")
    with pytest.raises(CheckpointError, match="transformerClip.resblocks.3.ln_2.bias|resblocks.3.ln_2.bias"):
        method.load_official({k: v for k, v in OFFICIAL.items() if k != "transformerClip.resblocks.3.ln_2.bias"},
                             "ckpt.bin")
    with pytest.raises(CheckpointError, match="module."):
        method.load_official({f"module.{k}": v for k, v in OFFICIAL.items()}, "ckpt.bin")


@pytest.mark.parametrize("param, tensor", [("words", "word_logit_weight"), ("frames", "frame_logit_weight"),
                                           ("frame_positions", "frame_position_embeddings.weight"),
                                           ("layers", "transformerClip.resblocks")])
def test_import_refuses_a_checkpoint_of_other_sizes_naming_tensor_size_and_param(clip_path, param, tensor):
    size = checkpoint_sizes(OFFICIAL)[param][1]
    method = build(clip_path, **{param: size - 1})
    with pytest.raises(CheckpointError, match=rf"{tensor} is sized for {param}={size}.*params\.{param}"):
        method.load_official(OFFICIAL, "ckpt.bin")


def test_sizes_are_checked_at_encoding(official):
    with pytest.raises(HarnessError, match="params.frames"):
        official.encode_video(GOLDEN["video"][:, :-1], GOLDEN["video_mask"][:, :-1].bool())
    with pytest.raises(HarnessError, match="params.words"):
        official.encode_text(GOLDEN["text_ids"][:, :-1], GOLDEN["text_mask"][:, :-1].bool())


def test_chunked_scoring_equals_the_unchunked_reference(official):
    torch.manual_seed(3)
    dim = official.backbone.embed_dim
    with torch.no_grad():
        text = official.text_features(torch.randn(7, dim), torch.randn(7, WORDS, dim))
        video = official.video_features(torch.randn(9, FRAMES, dim), torch.rand(9, FRAMES) > 0.3)
        reference = official.score(text, video)  # one block: under the default budget
        official.params.pair_budget = 7 * WORDS * FRAMES * 2  # two videos per block
        try:
            budgeted = official.score(text, video)
            engine = score_in_chunks(official, text, video, Scoring(torch.device("cpu"), 4))
        finally:
            official.params.pair_budget = XCLIPParams.pair_budget
    assert (budgeted - reference).abs().max() <= 1e-5
    assert (engine - reference).abs().max() <= 1e-5


def test_matrix_sizes_follow_the_official_scripts_and_otherwise_the_suite(clip_path):
    def params(benchmark: str, split: str, given: dict) -> dict:
        suite = parse_suite({"name": "s", "benchmark": {"name": benchmark, "test_splits": [split]},
                             "backbone": {"arch": "synthetic-small"}, "methods": [{"name": "zeroshot"}]}, "s.yaml")
        return method_params(XCLIP, suite, given, "xclip params")

    assert (params("didemo", "test", {})["words"], params("didemo", "test", {})["frames"]) == (64, 64)
    assert (params("msrvtt", "test-1kA", {})["words"], params("msrvtt", "test-1kA", {})["frames"]) == (32, 12)
    assert params("synthetic", "test-1kA", {"frames": None})["frames"] == 12  # the suite's protocol.frames
    assert params("msrvtt", "test-1kA", {"frames": None})["frames"] == 12
    with pytest.raises(HarnessError, match="params.words"):
        build(clip_path, words=None)
    method = build(clip_path)
    assert method.word_logit_weight.shape == (WORDS, WORDS) and method.frame_mat_weight2.shape == (FRAMES, FRAMES)
    assert XCLIP.score_kind == "logits" and XCLIP.reported_as == "X-CLIP"


def test_embeddings_conv1_and_ln_pre_are_frozen_as_the_official_freeze_layer_num_0(clip_path):
    frozen = {f"backbone.clip.{name}" for name in FROZEN_BY_OFFICIAL}
    method = build(clip_path)
    trainable = {name for name, p in method.named_parameters() if p.requires_grad}
    assert frozen.isdisjoint(trainable) and frozen <= {name for name, _ in method.named_parameters()}
    assert {"backbone.clip.logit_scale", "backbone.clip.visual.proj", "backbone.clip.text_projection"} <= trainable
    assert all(p.requires_grad for p in build(clip_path, freeze_embeddings=False).parameters())
    assert "official" in method.protocol()["frozen_embeddings"]


def test_conforms_to_the_method_contract():
    assert_conforms(XCLIP, frames=FRAMES, words=WORDS)


@pytest.fixture(scope="module")
def vit_b32() -> XCLIP:
    torch.manual_seed(0)
    backbone = Backbone(open_clip.create_model("ViT-B-32", pretrained=None, force_context_length=L,
                                               force_quick_gelu=True, precision="fp32"))
    return XCLIP(backbone, XCLIPParams(words=L, frames=T)).eval()


def test_macs_per_pair_query_and_video_at_vit_b32_shapes_match_the_hand_counts_by_both_counters(vit_b32):
    cost = method_cost(vit_b32, T, L, 224)
    for split in (asdict(cost.score), cost.check["score"]):
        assert split["per_pair"] == pytest.approx(PAIR, rel=0.01)  # 238,880: the formula, each product once
        assert split["per_text"] == split["per_video"] == 0  # score does per-pair work only
    assert cost.per_query == pytest.approx(PER_QUERY, rel=0.01)  # fvcore adds the LayerNorms
    assert cost.check["per_query"] == pytest.approx(PER_QUERY, rel=0.01)
    assert cost.per_video == pytest.approx(PER_VIDEO, rel=0.01)
    assert cost.check["per_video"] == pytest.approx(PER_VIDEO, rel=0.01)


def test_per_query_and_per_video_head_macs_match_the_hand_counts(vit_b32):
    """The head's own work on the CLIP outputs: the two projections per query, seqTransf per video."""
    torch.manual_seed(0)
    query = count_macs(lambda t, w: sum(v.sum() for v in vit_b32.text_features(t, w).values()),
                       (torch.randn(1, D), torch.randn(1, L, D)), vit_b32, "xclip text head")
    video = count_macs(lambda f, m: sum(v.sum() for v in vit_b32.video_features(f, m).values()),
                       (torch.randn(1, T, D), torch.ones(1, T, dtype=torch.bool)), vit_b32, "xclip video head")
    assert query.macs == query.check_macs == QUERY_PROJECTIONS  # 8,650,752
    assert video.macs == pytest.approx(SEQ_TRANSF_12, rel=0.01)  # fvcore adds the LayerNorms
    assert video.check_macs == pytest.approx(SEQ_TRANSF_12, rel=0.01)
