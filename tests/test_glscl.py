"""GLSCL: official golden features, scores, training-mode score and losses through the checkpoint import;
each module and loss against a hand computation; masking, sharing, gradients, chunking, per-benchmark
defaults.

Every shape comes from the golden files (HARNESS_GOLDEN_DIR, see conftest.py): texts, videos, frames and
words from `glscl_golden.pt`'s inputs; width, K, seqTransf and decoder depth, feed-forward width and frame
positions from the state dict; temperature, alpha, beta and the local weight from its `config`. Files of
this layout come from the official GLSCL code (zchoi/GLSCL, `tvr/models/modeling.py`, with
`interaction=wti, agg_module=seqTransf, query_share=1, cross_att_share=1`) built on a small random
OpenAI-layout CLIP: its `state_dict()`; on random `text_ids`/`text_mask` (SOT, words, EOT, padding) and
`video`/`video_mask` (normalised pixels, padded frames at the end), in eval mode, the text encoder's
sentence and word states, the seqTransf frames, the global, local and final scores and the normalised
query outputs; in training mode with every dropout off (`nn.Dropout` and the `dropout` of each
`nn.MultiheadAttention`) on the first `train_pairs` pairs, the model's forward: the score it feeds the
loss and the three loss terms; and the official `Inter_Diversity` and `Intra_Consistency` on crafted,
nearly parallel query outputs.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from conftest import GOLDEN_DIR, load_golden
from harness.api.backbone import Backbone, load_clip, read_state_dict
from harness.errors import CheckpointError
from harness.retrieval.tiles import Scoring, score_in_chunks
from harness.suite import parse_suite
from methods.glscl import GLSCL, GLSCLParams
from methods.glscl.interaction import global_frame_weights, global_scores
from methods.glscl.losses import inter_consistency, intra_diversity

GOLDEN = load_golden("glscl_golden.pt")
OFFICIAL = read_state_dict(GOLDEN_DIR / "glscl_official_state_dict.pt")
TOLERANCE = 1e-5  # max abs difference to the official outputs; measured <= 1.4e-6 (frames), <= 5e-7 elsewhere
# The main loss sees the score times the logit scale (100): a score difference of 4e-7 moves it by about
# 1e-5 in absolute terms, so the loss terms are compared relatively (measured <= 2.4e-6).
LOSS_TOLERANCE = 1e-5
WORDS = GOLDEN["text_ids"].shape[1]


def layer_count(prefix: str) -> int:
    """Number of layers `prefix<i>.` in the official state dict."""
    return len({int(m.group(1)) for key in OFFICIAL if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))})


def official_params() -> dict:
    """GLSCLParams of the golden model: sizes from the state dict, hyper-parameters from its config. The
    decoder's head count is not in either; it is the official code's constant (the Params default)."""
    config = GOLDEN["config"]
    return {"layers": layer_count("transformerClip.resblocks."),
            "frame_positions": OFFICIAL["frame_position_embeddings.weight"].shape[0],
            "queries": OFFICIAL["spatial_queries"].shape[0],
            "decoder_layers": layer_count("transformer_decoder_noun.layers."),
            "decoder_feedforward": OFFICIAL["transformer_decoder_noun.layers.0.linear1.weight"].shape[0],
            "temperature": config["temp"], "local_weight": config["loss2_weight"], "alpha": config["alpha"],
            "beta": config["beta"]}


@pytest.fixture(scope="module")
def glscl_clip(tmp_path_factory):
    """The official GLSCL state dict's clip.* weights as an OpenAI-layout CLIP file."""
    path = tmp_path_factory.mktemp("glscl") / "clip.pt"
    torch.save({k[len("clip."):]: v for k, v in OFFICIAL.items() if k.startswith("clip.")}, path)
    return path


def build(clip_path, **params) -> GLSCL:
    return GLSCL(Backbone(load_clip("auto", clip_path, WORDS)), GLSCLParams(**{**official_params(), **params}))


@pytest.fixture(scope="module")
def official(glscl_clip) -> GLSCL:
    method = build(glscl_clip)
    method.load_official(OFFICIAL, "glscl_official_state_dict.pt")
    return method.eval()


def golden_features(method: GLSCL, pairs: int | None = None):
    n = slice(None) if pairs is None else slice(0, pairs)
    text = method.encode_text(GOLDEN["text_ids"][n], GOLDEN["text_mask"][n].bool())
    video = method.encode_video(GOLDEN["video"][n], GOLDEN["video_mask"][n].bool())
    return text, video


def test_official_import_reproduces_golden_features_and_scores(official):
    with torch.no_grad():
        sentence, words = official.backbone.encode_text(GOLDEN["text_ids"],
                                                        mask_padding_keys=GOLDEN["text_mask"].bool())
        text, video = golden_features(official)
        ours = {"text_cls": sentence, "text_tokens": words, "video_frames_seqtransf": video["frames"],
                "global_score": official.global_score(text, video), "local_score": official.local_score(text, video),
                "score": official.score(text, video), "video_queries": video["queries"],
                "text_queries": text["queries"]}
    for name, value in ours.items():
        assert value.shape == GOLDEN[name].shape, name
        assert (value - GOLDEN[name]).abs().max() <= TOLERANCE, name


def test_padding_key_mask_changes_only_padded_word_states(official):
    mask = GOLDEN["text_mask"].bool()
    with torch.no_grad():
        causal_sentence, causal_words = official.backbone.encode_text(GOLDEN["text_ids"])
        masked_sentence, masked_words = official.backbone.encode_text(GOLDEN["text_ids"], mask_padding_keys=mask)
    assert (causal_sentence - masked_sentence).abs().max() <= 1e-6
    assert (causal_words[mask] - masked_words[mask]).abs().max() <= 1e-6
    assert (causal_words[~mask] - GOLDEN["text_tokens"][~mask]).abs().max() > 0.1  # the causal-only states differ


def without_dropout(method: GLSCL) -> GLSCL:
    """Training mode with every dropout off, the attention-probability dropout inside each decoder
    attention included (it is nn.MultiheadAttention's `dropout`, not an nn.Dropout module)."""
    method.train()
    for module in method.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
    return method


def test_training_forward_reproduces_the_official_training_score_and_loss_terms(glscl_clip):
    """Our training-mode forward and loss on the golden training pairs against the official ones: the
    score the loss sees (the official training forward computes the evaluation S) and each loss term."""
    method = build(glscl_clip)
    method.load_official(OFFICIAL, "glscl_official_state_dict.pt")
    pairs = GOLDEN["train_pairs"]
    with torch.no_grad():
        text, video = golden_features(without_dropout(method), pairs)
        score = method.score(text, video)
        terms = method.loss(text, video)
    assert score.shape == GOLDEN["train_score"].shape == (pairs, pairs)
    assert (score - GOLDEN["train_score"]).abs().max() <= TOLERANCE
    for ours, official in (("contrastive", "loss_main"), ("diversity", "loss_diversity"),
                           ("consistency", "loss_consistency")):
        assert terms[ours].item() == pytest.approx(GOLDEN[official].item(), rel=LOSS_TOLERANCE, abs=1e-12), ours
    assert terms["total"] == pytest.approx((terms["contrastive"] + terms["diversity"] + terms["consistency"]).item())


def test_auxiliary_losses_reproduce_the_official_values_on_crafted_queries():
    video, text = GOLDEN["crafted_video_queries"], GOLDEN["crafted_text_queries"]
    config = GOLDEN["config"]
    diversity = config["alpha"] * intra_diversity(video)
    consistency = inter_consistency(video, text, config["beta"])
    assert GOLDEN["crafted_loss_diversity"] > 0 and GOLDEN["crafted_loss_consistency"] > 0  # both margins active
    assert diversity == pytest.approx(GOLDEN["crafted_loss_diversity"].item(), rel=1e-5)
    assert consistency == pytest.approx(GOLDEN["crafted_loss_consistency"].item(), rel=1e-5)


def test_intra_diversity_by_hand():
    def pair(cosine: float) -> torch.Tensor:
        sine = (1 - cosine**2) ** 0.5
        return torch.tensor([[[1.0, 0.0], [cosine, sine]]])  # B = 1, K = 2

    # G = [[1, c], [c, 1]]: each of the two off-diagonal entries costs max(0, 0.1 + c - 1) twice (both
    # ways), over K (K - 1) = 2: 4 * 0.05 / 2 = 0.1 for c = 0.95; nothing for c = 0.5.
    assert intra_diversity(pair(0.95)) == pytest.approx(0.1, abs=1e-6)
    assert intra_diversity(pair(0.5)) == 0
    # The batch mean of the Gram matrices: one parallel and one orthogonal batch item give G_01 = 0.5.
    mixed = torch.cat([pair(1.0), pair(0.0)])
    assert intra_diversity(mixed) == 0


def test_inter_consistency_by_hand():
    e1, e2 = torch.eye(2)
    video = torch.stack([torch.stack([e1, e2]), torch.stack([e1, e2])])  # B = 2, K = 2
    text = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2])])
    # means: video [e1, e2], text [(.5, .5), (.5, .5)] -> MSE 0.25; agreement a_k = 1 / K = 0.5 for both
    # k -> beta * 2 * (0.5 - 0.75)^2 = 0.125 beta.
    assert inter_consistency(video, text, beta=0.02) == pytest.approx(0.25 + 0.02 * 0.125, abs=1e-7)


def test_consistency_divides_by_k_officially_and_by_b_in_the_batch_mean_variant():
    video = torch.zeros(3, 2, 4)
    video[..., 0] = 1  # B = 3, K = 2, every query output equal: the MSE term is 0, sum_b <.,.> = 3
    official = inter_consistency(video, video.clone(), beta=1.0, average="official-over-queries")
    batch_mean = inter_consistency(video, video.clone(), beta=1.0, average="batch-mean")
    assert official == pytest.approx(2 * (3 / 2 - 0.75) ** 2)  # 1.125
    assert batch_mean == pytest.approx(2 * (3 / 3 - 0.75) ** 2)  # 0.125
    square = torch.zeros(2, 2, 4)
    square[..., 0] = 1  # B = K: the two readings agree
    assert inter_consistency(square, square, 1.0, "official-over-queries") == inter_consistency(
        square, square, 1.0, "batch-mean")


def test_global_module_on_identical_frames_is_the_cosine_with_the_frame():
    torch.manual_seed(0)
    text, frame = torch.randn(3, 16), torch.randn(2, 16)
    frames = frame[:, None, :].expand(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    expected = F.normalize(text, dim=-1) @ F.normalize(frame, dim=-1).t()
    assert (global_scores(text, frames, mask, temperature=3.0) - expected).abs().max() <= 1e-6


def test_padded_frames_are_zeroed_after_the_softmax_without_renormalising():
    torch.manual_seed(1)
    text, frames = torch.randn(2, 8), torch.randn(1, 4, 8)
    mask = torch.tensor([[True, True, True, False]])
    weights = global_frame_weights(text, frames, mask, temperature=3.0)
    full = torch.softmax(torch.einsum("ad,fd->af", text, frames[0]) / 3.0, dim=-1)
    assert (weights[:, 0, :3] - full[:, :3]).abs().max() <= 1e-7  # the padded frame stays in the denominator
    assert (weights[:, 0, 3] == 0).all()
    assert (weights.sum(-1) < 1 - 1e-3).all()
    # the cosine is scale-free, so the padded frame's content never reaches s_g
    noisy = frames.clone()
    noisy[0, 3] = 100 * torch.randn(8)
    assert (global_scores(text, frames, mask, 3.0) - global_scores(text, noisy, mask, 3.0)).abs().max() <= 1e-6


def test_queries_and_decoder_are_one_parameter_set_shared_by_both_modalities(official):
    names = [name for name, _ in official.named_parameters() if not name.startswith("backbone.")]
    assert [n for n in names if "queries" in n] == ["local.queries"]
    assert {n.split(".")[0] for n in names} == {"resblocks", "frame_position_embeddings", "local"}
    text, video = golden_features(official)
    shared = [official.local.queries, official.local.decoder.layers[0].multihead_attn.in_proj_weight]
    for side in (text["queries"], video["queries"]):
        grads = torch.autograd.grad((side * torch.randn_like(side)).sum(), shared, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads)


def test_queries_initialise_uniform_in_zero_one(glscl_clip):
    torch.manual_seed(0)
    queries = build(glscl_clip, queries=12).local.queries
    assert queries.shape == (12, OFFICIAL["spatial_queries"].shape[1])
    assert queries.min() >= 0 and queries.max() < 1 and queries.std() > 0.2


def test_gradients_reach_queries_and_decoder_from_every_loss_term(glscl_clip):
    torch.manual_seed(2)
    method = build(glscl_clip, alpha=1.0)
    method.load_official(OFFICIAL, "glscl_official_state_dict.pt")
    with torch.no_grad():  # nearly parallel queries make the diversity margin active
        method.local.queries.copy_(method.local.queries[:1] + 1e-3 * torch.randn_like(method.local.queries))
    text, video = golden_features(without_dropout(method), GOLDEN["train_pairs"])  # dropout would split them
    terms = method.loss(text, video)
    decoder_weight = method.local.decoder.layers[0].linear1.weight
    for name in ("contrastive", "diversity", "consistency"):
        assert terms[name] > 0, name
        queries_grad, decoder_grad = torch.autograd.grad(terms[name], [method.local.queries, decoder_weight],
                                                         retain_graph=True)
        assert queries_grad.abs().sum() > 0 and decoder_grad.abs().sum() > 0, name


def test_chunked_scoring_equals_the_unchunked_reference(official):
    torch.manual_seed(3)
    dim, queries = official.backbone.embed_dim, official.params.queries
    video = {"frames": torch.randn(23, 6, dim), "frame_mask": torch.rand(23, 6) > 0.3,
             "queries": F.normalize(torch.randn(23, queries, dim), dim=-1)}
    text = {"text": torch.randn(17, dim), "queries": F.normalize(torch.randn(17, queries, dim), dim=-1)}
    with torch.no_grad():
        reference = official.score(text, video)  # one block: 17 x 23 x dim elements is under the budget
        official.params.pair_budget = 17 * dim * 2  # two videos per block
        try:
            budgeted = official.score(text, video)
            engine = score_in_chunks(official, text, video, Scoring(torch.device("cpu"), 5))
        finally:
            official.params.pair_budget = GLSCLParams.pair_budget
    assert (budgeted - reference).abs().max() <= 1e-6
    assert (engine - reference).abs().max() <= 1e-6


def test_memory_mask_variant_hides_padded_positions_from_the_decoder(glscl_clip):
    """Other ids at the padded positions: the memory-mask variant's text queries do not move; the official
    variant's do (its decoder reads the padded states)."""
    ids, mask = GOLDEN["text_ids"], GOLDEN["text_mask"].bool()
    other = ids.clone()
    other[~mask] = torch.randint(1, int(GOLDEN["sot"]), (int((~mask).sum()),))
    moved = {}
    for padding in ("memory-mask", "mask-keys"):
        method = build(glscl_clip, text_padding=padding)
        method.load_official(OFFICIAL, "glscl_official_state_dict.pt")
        method.eval()
        with torch.no_grad():
            moved[padding] = (method.encode_text(ids, mask)["queries"] - method.encode_text(other, mask)["queries"])
        moved[padding] = moved[padding].abs().max()
    assert moved["memory-mask"] <= 1e-6
    assert moved["mask-keys"] > 1e-3
    assert "deviation" in build(glscl_clip, text_padding="memory-mask").protocol()["text_padding"]
    assert "official" in build(glscl_clip).protocol()["text_padding"]


def test_import_skips_known_unused_keys_and_rejects_unknown_or_missing_ones(glscl_clip):
    method = build(glscl_clip)
    with pytest.raises(CheckpointError, match="not_a_glscl_key"):
        method.load_official({**OFFICIAL, "not_a_glscl_key": torch.zeros(1)}, "ckpt.bin")
    incomplete = {k: v for k, v in OFFICIAL.items() if k != "spatial_queries"}
    with pytest.raises(CheckpointError, match="local.queries"):
        method.load_official(incomplete, "ckpt.bin")
    wrapped = {f"module.{k}": v for k, v in OFFICIAL.items()}
    with pytest.raises(CheckpointError, match="module."):
        method.load_official(wrapped, "ckpt.bin")
    # the unused tensors really are unused: changing them changes nothing
    altered = {k: (v + 1 if k.startswith(("weight_fc.", "noun_queries", "transformer_decoder_spatial.")) else v)
               for k, v in OFFICIAL.items()}
    method.load_official(altered, "ckpt.bin")
    method.eval()
    with torch.no_grad():
        assert (method.score(*golden_features(method)) - GOLDEN["score"]).abs().max() <= TOLERANCE


def test_per_benchmark_defaults_apply_under_the_suite_params(monkeypatch):
    monkeypatch.setattr(GLSCL, "benchmark_defaults", {"synthetic": {"temperature": 5.0, "alpha": 0.01}})
    suite = {"name": "s", "benchmark": {"name": "synthetic", "test_splits": ["test-1kA"]},
             "backbone": {"arch": "synthetic-small"}, "methods": [{"name": "glscl", "params": {"alpha": 0.5}}]}
    params = parse_suite(suite, "s.yaml").methods[0].params
    assert params["temperature"] == 5.0  # the benchmark's official value
    assert params["alpha"] == 0.5  # the suite's own value wins
    assert params["beta"] == GLSCLParams.beta
    assert GLSCL.benchmark_defaults["synthetic"] == {"temperature": 5.0, "alpha": 0.01}
