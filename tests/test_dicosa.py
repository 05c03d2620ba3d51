"""DiCoSA: official golden features, pooled videos, concept weights, scores (test and bank), the training-mode
score and every loss term through the checkpoint import; the official QB-Norm settings against the official
test loop's output; the concept MLP's text/video split, the frame softmax and the disentanglement loss by
hand; chunking, the strict import, the method contract and the ViT-B/32 cost against the hand counts.

Every shape comes from the golden files (HARNESS_GOLDEN_DIR, see conftest.py): texts, videos, frames, words
and training pairs from `dicosa_golden.pt`'s inputs; width, seqTransf depth and frame positions from the
state dict; K, temperature, alpha, beta and the QB-Norm settings from its `config`. Files of this layout come
from the official DiCoSA code (jpthu17/DiCoSA, `tvr/models/modeling.py`, `agg_module=seqTransf`) built on a
small random OpenAI-layout CLIP: its `state_dict()`; in eval mode on random `text_ids`/`text_mask` (SOT,
words, EOT, padding) and `video`/`video_mask` (normalised pixels, zero pixels in the padded frames at the
end), and on a query bank of `bank_*` pairs, the sentence features, the raw and seqTransf frames, per pair
the pooled video and the concept weights, the evaluation score matrices, and the two matrices and the
normalised rows of the official `_run_on_single_gpu` (QB-Norm); in training mode on the first
`train_pairs` pairs, the similarity its forward computes and each loss term.
"""

from __future__ import annotations

import re

import numpy as np
import open_clip
import pytest
import torch

from conftest import GOLDEN_DIR, load_golden
from harness import registry
from harness.api.backbone import Backbone, build_clip, load_clip, read_state_dict
from harness.api.testing import assert_conforms
from harness.cost.model import method_cost
from harness.errors import CheckpointError
from harness.retrieval.tiles import Scoring, score_in_chunks
from harness.report.reported import read_reported
from harness.data.synthetic_backbone import small_shape
from methods.dicosa import DiCoSA, DiCoSAParams
from methods.dicosa.interaction import frame_weights, split_concepts, unit
from methods.dicosa.losses import disentanglement_terms

GOLDEN = load_golden("dicosa_golden.pt")
OFFICIAL = read_state_dict(GOLDEN_DIR / "dicosa_official_state_dict.pt")
CONFIG = GOLDEN["config"]
TOLERANCE = 1e-5  # max abs difference to the official outputs, features, scores and loss terms alike
WORDS = GOLDEN["text_ids"].shape[1]
# Golden name -> our loss term.
LOSS_TERMS = {"loss_t2v": "t2v", "loss_v2t": "v2t", "loss_main": "main", "loss_on_diag": "on_diagonal",
              "loss_off_diag": "off_diagonal", "loss_disentangle": "disentangle", "loss_total": "total"}
# QB-Norm exponentiates beta x S: a score difference delta moves a normalised entry by about beta x delta
# relative (numerator and denominator), e.g. 70 x 3e-7: the normalised matrices are compared relatively.
QBNORM_RELATIVE_TOLERANCE = 1e-4
# The loss terms are log-sum-exps over the batch (t2v, v2t about 9.5): float32 rounding moves them by a few
# units of 1e-6 relative from one CPU to another (1.4e-5 absolute seen on 9.51), so they are compared relatively.
LOSS_RELATIVE_TOLERANCE = 5e-6


def layer_count(prefix: str) -> int:
    return len({int(m.group(1)) for key in OFFICIAL if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))})


def official_params() -> dict:
    """DiCoSAParams of the golden model: sizes from the state dict, hyper-parameters from its config."""
    return {"layers": layer_count("transformerClip.resblocks."),
            "frame_positions": OFFICIAL["frame_position_embeddings.weight"].shape[0],
            "concepts": CONFIG["center"], "temperature": CONFIG["temp"], "alpha": CONFIG["alpha"],
            "beta": CONFIG["beta"]}


@pytest.fixture(scope="module")
def dicosa_clip(tmp_path_factory):
    """The official DiCoSA state dict's clip.* weights as an OpenAI-layout CLIP file."""
    path = tmp_path_factory.mktemp("dicosa") / "clip.pt"
    torch.save({k[len("clip."):]: v for k, v in OFFICIAL.items() if k.startswith("clip.")}, path)
    return path


def build(clip_path, **params) -> DiCoSA:
    return DiCoSA(Backbone(load_clip("auto", clip_path, WORDS)), DiCoSAParams(**{**official_params(), **params}))


def imported(clip_path) -> DiCoSA:
    method = build(clip_path)
    method.load_official(OFFICIAL, "dicosa_official_state_dict.pt")
    return method


@pytest.fixture(scope="module")
def official(dicosa_clip) -> DiCoSA:
    return imported(dicosa_clip).eval()


def encode(method: DiCoSA, prefix: str = "", pairs: int | None = None):
    n = slice(None) if pairs is None else slice(0, pairs)
    text = method.encode_text(GOLDEN[f"{prefix}text_ids"][n], GOLDEN[f"{prefix}text_mask"][n].bool())
    video = method.encode_video(GOLDEN[f"{prefix}video"][n], GOLDEN[f"{prefix}video_mask"][n].bool())
    return text, video


@pytest.fixture(scope="module")
def features(official):
    with torch.no_grad():
        return {"test": encode(official), "bank": encode(official, "bank_")}


def assert_golden(ours: dict[str, torch.Tensor]) -> None:
    for name, value in ours.items():
        assert value.shape == GOLDEN[name].shape, name
        assert (value - GOLDEN[name]).abs().max() <= TOLERANCE, name


def test_golden_model_shapes_agree_with_its_config():
    width = OFFICIAL["clip.text_projection"].shape[1]
    assert width == CONFIG["width"] and width // CONFIG["center"] == CONFIG["concept_dim"]
    assert OFFICIAL["weight_fc.0.weight"].shape == (4 * CONFIG["concept_dim"], 2 * CONFIG["concept_dim"])
    assert GOLDEN["text_tokens"].shape[1] == WORDS == CONFIG["max_words"]  # L of the disentanglement loss


def test_official_import_reproduces_golden_features(official, features):
    (text, video), (bank_text, bank_video) = features["test"], features["bank"]
    with torch.no_grad():
        raw = official.backbone.encode_frames(GOLDEN["video"])
    assert_golden({"text_cls": text["text"], "video_frames_raw": raw, "video_frames_seqtransf": video["frames"],
                   "bank_text_cls": bank_text["text"], "bank_video_frames_seqtransf": bank_video["frames"]})


def test_official_import_reproduces_pooled_videos_concept_weights_and_scores(official, features):
    (text, video), (bank_text, bank_video) = features["test"], features["bank"]
    with torch.no_grad():
        concepts, weights = official.pairs(text, video)
        ours = {"video_pooled": concepts.flatten(-2), "concept_weights": weights, "score": official.score(text, video),
                "bank_t2v_score": official.score(bank_text, video), "bank_v2t_score": official.score(text, bank_video)}
    assert_golden(ours)


def test_training_mode_score_and_every_loss_term_reproduce_the_official_ones(dicosa_clip):
    method = imported(dicosa_clip).train()  # DiCoSA has no dropout: training mode changes nothing but the loss
    with torch.no_grad():
        text, video = encode(method, pairs=GOLDEN["train_pairs"])
        score = method.score(text, video)
        terms = method.loss(text, video)
    assert_golden({"train_score": score})
    for golden, ours in LOSS_TERMS.items():
        expected = GOLDEN[golden].item()
        assert abs(terms[ours].item() - expected) <= max(TOLERANCE, LOSS_RELATIVE_TOLERANCE * abs(expected)), golden
    assert terms["total"].item() == pytest.approx((terms["main"] + terms["disentangle"]).item(), rel=1e-7)


def official_qbnorm(bank: torch.Tensor, scores: torch.Tensor, k: int, beta: float, theta: int):
    """The official test loop's QB-Norm in float32 numpy, as a reference for the settings: the items that at
    least theta bank queries have in their top k are active; a query whose top-1 item is active gets
    exp(beta S) / sum over the bank of exp(beta B) on its whole row, the other rows keep S."""
    bank, scores = bank.numpy().astype(np.float32), scores.numpy().astype(np.float32)
    items, counts = np.unique(np.argsort(-bank, axis=1)[:, :k].reshape(-1), return_counts=True)
    rows = np.isin(np.argsort(-scores, axis=1)[:, 0], items[counts >= theta])
    normalised = scores.copy()
    normalised[rows] = np.exp(beta * scores[rows]) / np.exp(beta * bank).sum(axis=0)
    return torch.from_numpy(normalised), torch.from_numpy(rows)


def test_official_qbnorm_settings_reproduce_the_official_test_loop(official, features):
    (text, video), (bank_text, bank_video) = features["test"], features["bank"]
    settings = DiCoSA.qbnorm_settings["msrvtt"]
    for direction in ("t2v", "v2t"):
        assert settings[direction] == {key: CONFIG[f"{direction}_{key}"] for key in ("k", "beta", "theta")}
    with torch.no_grad():
        score = official.score(text, video)
        bank_t2v, bank_v2t = official.score(bank_text, video), official.score(text, bank_video)
    t2v, t2v_rows = official_qbnorm(bank_t2v, score, **settings["t2v"])
    v2t, v2t_rows = official_qbnorm(bank_v2t.t(), score.t(), **settings["v2t"])
    for ours, rows, direction in ((t2v, t2v_rows, "t2v"), (v2t, v2t_rows, "v2t")):
        expected = GOLDEN[f"score_{direction}_qbnorm"]
        assert torch.equal(rows, GOLDEN[f"qbnorm_{direction}_rows"]), direction
        assert 0 < int(rows.sum()) < rows.numel(), direction  # mixed rows: both branches are exercised
        assert ((ours - expected).abs() / expected.abs()).max() <= QBNORM_RELATIVE_TOLERANCE, direction


def test_class_attributes_declare_the_official_evaluation():
    assert DiCoSA.score_kind == "similarity" and DiCoSA.post_processing == ("qbnorm",)
    reported = read_reported()
    rows = reported[reported["method"] == DiCoSA.reported_as]
    assert set(rows["post"]) >= {"none", "qbnorm"}
    names = {"msrvtt", "msvd", "didemo", "lsmdc", "activitynet", "vatex"}
    assert names <= set(registry.benchmarks()) and set(DiCoSA.qbnorm_settings) == names
    assert DiCoSA.qbnorm_settings["activitynet"]["t2v"]["beta"] == DiCoSA.qbnorm_settings["activitynet"]["v2t"][
        "beta"] == 50.0  # the ActivityNet script's --t2v_beta / --v2t_beta
    assert {benchmark for benchmark, settings in DiCoSA.qbnorm_settings.items()
            if settings == DiCoSA.qbnorm_settings["msrvtt"]} == names - {"activitynet"}


def test_text_half_of_the_concept_mlp_equals_the_linear_over_the_concatenation(official):
    torch.manual_seed(0)
    weighting, concepts = official.weighting, official.params.concepts
    dim = weighting.concept_dim
    text, video = torch.randn(3, concepts, dim), torch.randn(3, 5, concepts, dim)
    with torch.no_grad():
        joined = torch.cat([text[:, None].expand(-1, 5, -1, -1), video], dim=-1)  # [t_k ; v_k], text first
        expected = weighting.second(weighting.first(joined).relu()).squeeze(-1)
        ours = weighting(weighting.text_half(text), video)
    assert ours.shape == (3, 5, concepts)
    assert (ours - expected).abs().max() <= 1e-6


def test_concept_mlp_starts_as_the_official_initialisation(dicosa_clip):
    torch.manual_seed(0)
    weighting = build(dicosa_clip).weighting
    for layer in (weighting.first, weighting.second):
        assert 0.01 < layer.weight.std() < 0.03  # normal, std 0.02 (the official init_weights)
        assert not layer.bias.any()


def test_frame_softmax_runs_over_every_frame_and_the_mask_applies_afterwards():
    torch.manual_seed(1)
    text, frames = torch.randn(2, 8), torch.randn(1, 4, 8)
    mask = torch.tensor([[True, True, True, False]])
    weights = frame_weights(text, frames, mask, temperature=3.0)
    full = torch.softmax(torch.einsum("ad,fd->af", text, frames[0]) / 3.0, dim=-1)
    assert (weights[:, 0, :3] - full[:, :3]).abs().max() <= 1e-7  # the padded frame is in the denominator
    assert (weights[:, 0, 3] == 0).all() and (weights.sum(-1) < 1 - 1e-3).all()


def test_disentanglement_terms_by_hand_divide_by_the_text_length():
    """Two concepts, the second the negative of the first, in text and video alike: every standardised
    product sums to +-(d - 1) over the d dims, so C = (d - 1) / L [[1, -1], [-1, 1]]."""
    torch.manual_seed(2)
    batch, dim = 5, 6
    first = torch.randn(batch, 1, dim)
    concepts = torch.cat([first, -first], dim=1)
    for length in (12, 32):
        on, off = disentanglement_terms(concepts, concepts.clone(), length)
        c = (dim - 1) / length
        assert on.item() == pytest.approx(2 * (c - 1) ** 2, rel=1e-5)
        assert off.item() == pytest.approx(2 * c**2, rel=1e-5)


def test_loss_divides_by_the_padded_text_length_of_the_features(official):
    """The disentanglement loss reads L from the width of the text features' token mask."""
    pairs = GOLDEN["train_pairs"]
    with torch.no_grad():
        text, video = encode(official, pairs=pairs)
        wide = {**text, "token_mask": torch.cat([text["token_mask"], torch.zeros_like(text["token_mask"])], dim=1)}
        narrow, widened = official.loss(text, video), official.loss(wide, video)
    assert widened["main"] == narrow["main"]
    assert widened["off_diagonal"].item() == pytest.approx(narrow["off_diagonal"].item() / 4, rel=1e-5)


def test_chunked_score_equals_the_unchunked_one(official):
    torch.manual_seed(3)
    dim, concepts = official.backbone.embed_dim, official.params.concepts
    sentence = torch.randn(17, dim)
    text = {"text": sentence, "text_units": unit(split_concepts(sentence, concepts)),
            "text_half": official.weighting.text_half(split_concepts(sentence, concepts)),
            "token_mask": torch.ones(17, WORDS, dtype=torch.bool)}
    frame_mask = torch.rand(23, 6) > 0.3
    frame_mask[:, 0] = True
    video = {"frames": torch.randn(23, 6, dim), "frame_mask": frame_mask}
    with torch.no_grad():
        reference = official.score(text, video)  # one block: 17 x 23 x 4D elements are under the default budget
        official.params.pair_budget = 2 * text["text_half"].numel()  # two videos per block
        try:
            budgeted = official.score(text, video)
            engine = score_in_chunks(official, text, video, Scoring(torch.device("cpu"), 5))
        finally:
            official.params.pair_budget = DiCoSAParams.pair_budget
    assert (budgeted - reference).abs().max() <= 1e-6
    assert (engine - reference).abs().max() <= 1e-6


def test_import_is_strict_and_names_the_keys(dicosa_clip):
    method = build(dicosa_clip)
    assert not method.backbone.clip.visual.conv1.weight.requires_grad  # frozen, as the official tower
    with pytest.raises(CheckpointError, match="not_a_dicosa_key"):
        method.load_official({**OFFICIAL, "not_a_dicosa_key": torch.zeros(1)}, "ckpt.bin")
    with pytest.raises(CheckpointError, match="lstm_visual"):  # a seqLSTM checkpoint is another configuration
        method.load_official({**OFFICIAL, "lstm_visual.weight_ih_l0": torch.zeros(1)}, "ckpt.bin")
    incomplete = {k: v for k, v in OFFICIAL.items() if k != "weight_fc.2.bias"}
    with pytest.raises(CheckpointError, match=r"weighting\.second\.bias"):
        method.load_official(incomplete, "ckpt.bin")
    with pytest.raises(CheckpointError, match="module."):
        method.load_official({f"module.{k}": v for k, v in OFFICIAL.items()}, "ckpt.bin")


def test_dicosa_conforms_to_the_method_contract():
    assert_conforms(DiCoSA, frames=4, words=16)  # the shapes tests/test_conformance.py checks built-ins at


def test_dicosa_conforms_on_the_synthetic_suite_backbone():
    torch.manual_seed(0)
    backbone = Backbone(build_clip(small_shape(), 32))
    assert_conforms(DiCoSA, backbone=backbone, params={"layers": len(backbone.text_blocks)}, frames=12, words=32)


# Hand counts at ViT-B/32 (D 512, 12 frames, 32 words, K 8, d 64), in MACs. The towers as docs/cost.md section 3
# counts them (tests/test_cost.py); the rest as docs/methods.md counts it.
D, T, K = 512, 12, 8
IMAGE_TOWER, TEXT_TOWER = 4.4088e9, 1.2208e9
SEQTRANSF = 4 * (T * 12 * D**2 + 2 * T**2 * D)  # 4 blocks: 12 D^2 per frame, QK and AV over T frames
TEXT_HALF = 4 * D**2 // K  # K x 4d x d, the text half of the first concept layer
OFFICIAL_PAIR = 2 * T * D + 8 * D**2 // K + 6 * D + K  # 277,512 as the official code computes a pair
PER_PAIR = OFFICIAL_PAIR - TEXT_HALF  # 146,440 with the text half once per query


def test_cost_at_vit_b32_matches_the_hand_counts_by_both_counters():
    torch.manual_seed(0)
    backbone = Backbone(open_clip.create_model("ViT-B-32", pretrained=None, force_context_length=32,
                                               force_quick_gelu=True, precision="fp32"))
    cost = method_cost(DiCoSA(backbone, DiCoSAParams()), T, 32, 224)  # both counters, agreeing within 1%
    check = cost.check
    for counted, hand in ((cost.per_video, T * IMAGE_TOWER + SEQTRANSF), (check["per_video"], T * IMAGE_TOWER + SEQTRANSF),
                          (cost.per_query, TEXT_TOWER + TEXT_HALF), (check["per_query"], TEXT_TOWER + TEXT_HALF),
                          (cost.score.per_pair, PER_PAIR), (check["score"]["per_pair"], PER_PAIR)):
        assert counted == pytest.approx(hand, rel=0.01)
    # Nothing in score is paid once per text or per video (fvcore's floor of halved einsum counts aside).
    for split in (cost.score, check["score"]):
        parts = split if isinstance(split, dict) else vars(split)
        assert parts["per_text"] + parts["per_video"] + parts["fixed"] <= 1e-3 * PER_PAIR
