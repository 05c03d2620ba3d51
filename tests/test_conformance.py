"""The method contract (harness.api.conformance): every built-in passes it, and each rule catches a planted
violation, naming the rule and showing the numbers."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import registry
from harness.api.conformance import check_backbone, check_method, failures
from harness.api.method import PADDED_FRAMES, Features, Method, masked_mean, symmetric_cross_entropy
from harness.api.testing import assert_conforms

SHAPES = {"frames": 4, "words": 16}
BUILT_INS = sorted(p.name for p in registry.methods().plugins() if p.distribution == "tvr-harness")


@pytest.fixture(scope="module")
def backbone():
    return check_backbone(SHAPES["words"])


@pytest.mark.parametrize("name", BUILT_INS)
def test_every_built_in_conforms(name, backbone):
    assert_conforms(name, backbone=backbone, **SHAPES)


@dataclass
class HeadParams:
    """A learned projection of the pooled frames."""


class ProjectedMean(Method):
    """A correct minimal head: masked mean of the frames through a learned projection."""

    name = "projected-mean"
    Params = HeadParams

    def __init__(self, backbone, params):
        super().__init__(backbone, params)
        self.projection = nn.Linear(backbone.embed_dim, backbone.embed_dim)

    def pool(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        return masked_mean(frames, frame_mask)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        return {"video": F.normalize(self.projection(self.pool(self.backbone.encode_frames(frames), frame_mask)), dim=-1)}

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        return {"text": F.normalize(self.backbone.encode_sentence(tokens), dim=-1)}

    def score(self, text: Features, video: Features) -> Tensor:
        return 10.0 * text["text"] @ video["video"].t()

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        main = symmetric_cross_entropy(self.score(text, video))
        return {"total": main, "contrastive": main}


class ChunkDependent(ProjectedMean):
    """Centres each score row on the videos it was given: the result depends on the chunking."""

    def score(self, text: Features, video: Features) -> Tensor:
        scores = super().score(text, video)
        return scores - scores.mean(dim=1, keepdim=True)


class IgnoresFrameMask(ProjectedMean):
    def pool(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        return frames.mean(dim=1)


class StaleDeclaration(ProjectedMean):
    """Declares that padded frames are read, but masks them."""

    def protocol(self) -> dict[str, str]:
        return {PADDED_FRAMES: "the official code reads padded frames"}


class NoHeadGradient(ProjectedMean):
    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        main = symmetric_cross_entropy(self.score(text, {"video": video["video"].detach()}))
        return {"total": main, "contrastive": main}


class Transposed(ProjectedMean):
    def score(self, text: Features, video: Features) -> Tensor:
        return super().score(text, video).t()


class LenientCheckpoint(ProjectedMean):
    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        self.load_state_dict(state, strict=False)


class CandidatesWithoutCoarse(ProjectedMean):
    def candidates(self) -> int:
        return 2


class CoarseChunkDependent(ProjectedMean):
    def candidates(self) -> int:
        return 2

    def coarse_score(self, text: Features, video: Features) -> Tensor:
        scores = self.score(text, video)
        return scores - scores.mean(dim=1, keepdim=True)


class PromptedTower(ProjectedMean):
    """A learned prompt token appended to every frame's tokens before the visual blocks: a parameter the method
    places inside the backbone's visual tower (as Prompt Switch and CLIP-ViP do)."""

    def __init__(self, backbone, params):
        super().__init__(backbone, params)
        width = backbone.clip.visual.conv1.out_channels
        self.backbone.clip.visual.prompt = nn.Parameter(0.02 * torch.randn(1, 1, width))

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        backbone = self.backbone
        tokens = backbone.frame_tokens(frames.flatten(0, 1))
        prompt = backbone.clip.visual.prompt.expand(tokens.shape[0], -1, -1)
        pooled = backbone.pool_frames(backbone.run_visual_blocks(torch.cat([tokens, prompt], dim=1)))
        pooled = pooled.view(*frames.shape[:2], -1)
        return {"video": F.normalize(self.projection(self.pool(pooled, frame_mask)), dim=-1)}


class PromptGroupedWithBackbone(PromptedTower):
    """The planted violation: everything under `self.backbone` counted as the backbone's (the rule before
    ownership was recorded), so the prompt would train at lr x coef_lr."""

    def head_parameters(self) -> list[nn.Parameter]:
        backbone = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]


def failed(method_cls: type, backbone) -> dict[str, str]:
    """Rule -> the details of its failures, joined."""
    details: dict[str, list[str]] = {}
    for finding in failures(check_method(method_cls, backbone=backbone, count_cost=False, **SHAPES)):
        details.setdefault(finding.rule, []).append(finding.detail)
    return {rule: " | ".join(parts) for rule, parts in details.items()}


def test_a_correct_plugin_passes_every_rule(backbone):
    findings = check_method(ProjectedMean, backbone=backbone, **SHAPES)
    assert not failures(findings)
    assert {f.rule for f in findings} >= {"interface", "output-shapes", "eval-determinism", "score-chunk-invariance",
                                          "frame-mask", "word-mask", "cost", "load-official", "loss-gradients",
                                          "parameter-ownership"}


def test_chunked_score_that_differs_is_caught_with_its_numbers(backbone):
    broken = failed(ChunkDependent, backbone)
    assert set(broken) == {"score-chunk-invariance"}
    assert "score in chunks of 1: differs by" in broken["score-chunk-invariance"]
    assert "expected" in broken["score-chunk-invariance"] and "tolerance" in broken["score-chunk-invariance"]


def test_ignoring_the_frame_mask_is_caught(backbone):
    broken = failed(IgnoresFrameMask, backbone)
    assert set(broken) == {"frame-mask"}
    assert "differs by" in broken["frame-mask"] and "protocol()['padded_frames']" in broken["frame-mask"]


def test_a_declared_padding_behaviour_must_be_real(backbone):
    broken = failed(StaleDeclaration, backbone)
    assert set(broken) == {"frame-mask"}
    assert "changes no score" in broken["frame-mask"]


def test_a_loss_without_gradient_to_the_head_is_caught(backbone):
    broken = failed(NoHeadGradient, backbone)
    assert set(broken) == {"loss-gradients"}
    assert "no gradient reaches projection.weight, projection.bias" in broken["loss-gradients"]


def test_a_transposed_score_is_caught(backbone):
    assert "returned shape (3, 4), expected (n_text, n_video) = (4, 3)" in failed(Transposed, backbone)["output-shapes"]


def test_a_lenient_official_loader_is_caught(backbone):
    assert "was accepted" in failed(LenientCheckpoint, backbone)["load-official"]


def test_two_stage_contract(backbone):
    assert "coarse_score is not defined" in failed(CandidatesWithoutCoarse, backbone)["two-stage"]
    assert "coarse_score in chunks of 2: differs by" in failed(CoarseChunkDependent, backbone)["two-stage"]


def test_the_pytest_helper_reports_rule_and_numbers(backbone):
    with pytest.raises(AssertionError, match=r"FAIL score-chunk-invariance: score in chunks of 1: differs by"):
        assert_conforms(ChunkDependent, backbone=backbone, count_cost=False, **SHAPES)


def test_glscl_without_the_official_word_padding_must_mask_words(backbone):
    findings = {f.rule: f for f in check_method(registry.methods()["glscl"], backbone=backbone,
                                                 params={"text_padding": "memory-mask"}, count_cost=False,
                                                 **SHAPES)}
    assert findings["word-mask"].passed and "largest difference" in findings["word-mask"].detail
    assert findings["frame-mask"].passed and "confirmed" in findings["frame-mask"].detail


def test_a_parameter_added_inside_the_tower_is_a_head_parameter_and_trains_at_the_full_rate(backbone):
    from harness.suite import TrainingSpec
    from harness.pipeline.train import parameter_groups

    findings = {f.rule: f for f in check_method(PromptedTower, backbone=backbone, count_cost=False, **SHAPES)}
    assert not failures(list(findings.values()))
    assert "inside the backbone (backbone.clip.visual.prompt)" in findings["parameter-ownership"].detail
    assert "gradient reaches all 3 head parameters" in findings["loss-gradients"].detail  # prompt + projection
    method = PromptedTower(copy.deepcopy(backbone), HeadParams())
    spec = TrainingSpec(lr=1e-4, coef_lr=1e-3)
    groups = parameter_groups(method, spec)
    group_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert group_of[id(method.backbone.clip.visual.prompt)] == spec.lr
    assert group_of[id(method.backbone.clip.visual.conv1.weight)] == spec.lr * spec.coef_lr
    assert group_of[id(method.projection.weight)] == spec.lr


def test_a_parameter_of_the_method_grouped_with_the_backbone_is_caught(backbone):
    broken = failed(PromptGroupedWithBackbone, backbone)
    assert set(broken) == {"parameter-ownership"}
    assert "added by the method but grouped with the backbone" in broken["parameter-ownership"]
    assert "backbone.clip.visual.prompt" in broken["parameter-ownership"]


class InvertedMask(ProjectedMean):
    """Keeps the frame mask among its video features and inverts it in `score` (`~mask`, as a plugin author
    writes it), recording the dtype it arrives in."""

    seen: list = []

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        return {**super().encode_video(frames, frame_mask), "frame_mask": frame_mask}

    def score(self, text: Features, video: Features) -> Tensor:
        self.seen.append(video["frame_mask"].dtype)
        padded = (~video["frame_mask"]).sum(dim=1)
        return super().score(text, video) + 0.0 * padded.unsqueeze(0)


def test_masks_reach_score_as_bool_in_the_check_and_in_the_engine_s_evaluation(backbone, tmp_path, videos):
    from harness.data.benchmark import Split, Video
    from harness.data.frames import FrameStore
    from harness.retrieval.ranking import Evaluation, evaluate_split
    from harness.retrieval.tiles import Scoring

    InvertedMask.seen = []
    assert not failures(check_method(InvertedMask, backbone=backbone, count_cost=False, **SHAPES))
    ids = ["test0", "test1", "test2"]
    split = Split("test", "square", [Video(i, videos / f"{i}.mp4") for i in ids], [f"a clip {i}" for i in ids],
                  [0, 1, 2])
    store = FrameStore(tmp_path / "cache", SHAPES["frames"], "fps1-linspace", backbone.image_size, quiet=True)
    store.prepare(split.videos)
    method = InvertedMask(copy.deepcopy(backbone), HeadParams())
    evaluation = Evaluation(Scoring(torch.device("cpu"), 2), SHAPES["words"], batch_size=2, quiet=True)
    (stage,) = evaluate_split(method, split, store, evaluation)
    assert len(stage.rankings["t2v"].ranks) == 3
    assert set(InvertedMask.seen) == {torch.bool}  # in the check (every rule) and in the evaluation
