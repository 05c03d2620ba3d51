"""The shared training loop's pieces and chunked evaluation, on a tiny random backbone."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.clip4clip import MeanP
from harness.api.backbone import Backbone, ClipShape, build_clip
from harness.data.benchmark import Split, Video
from harness.errors import TrainingError
from harness.retrieval.tiles import Scoring, score_in_chunks
from harness.pipeline.preflight import carve_validation
from harness.suite import TrainingSpec
from harness.pipeline.train import parameter_groups, train, warmup_cosine


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    shape = ClipShape(embed_dim=32, image_size=16, patch_size=8, vision_width=64, vision_layers=1,
                      context_length=8, vocab_size=49408, text_width=64, text_layers=1)
    return Backbone(build_clip(shape, 8))


class WithHead(MeanP):
    """meanP plus a linear head, to see both learning-rate groups."""

    name = "with-head"

    def __init__(self, backbone, params):
        super().__init__(backbone, params)
        self.head = torch.nn.Linear(32, 32)
        self.norm = torch.nn.LayerNorm(32)


def test_parameter_groups_split_lr_and_decay():
    method = WithHead(tiny_backbone(), MeanP.Params())
    spec = TrainingSpec(lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    groups = parameter_groups(method, spec)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(method.parameters()))
    assert by_id[id(method.head.weight)]["lr"] == 1e-4 and by_id[id(method.head.weight)]["weight_decay"] == 0.2
    assert by_id[id(method.head.bias)]["weight_decay"] == 0.0
    assert by_id[id(method.norm.weight)]["weight_decay"] == 0.0
    clip = method.backbone.clip
    assert by_id[id(clip.visual.conv1.weight)]["lr"] == pytest.approx(1e-7)
    assert by_id[id(clip.visual.conv1.weight)]["weight_decay"] == 0.2
    assert by_id[id(clip.ln_final.weight)]["weight_decay"] == 0.0
    assert by_id[id(clip.transformer.resblocks[0].attn.in_proj_bias)]["weight_decay"] == 0.0


def test_warmup_then_cosine():
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.5, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1) == pytest.approx(0.0)
    assert warmup_cosine(0.2, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))


class Batches:
    def __init__(self, poison: bool = False):
        self.poison = poison

    def __len__(self):
        return 2

    def __iter__(self):
        for _ in range(2):
            frames = torch.randint(0, 255, (4, 3, 16, 16, 3), dtype=torch.uint8)
            tokens = torch.randint(1, 1000, (4, 8))
            yield frames, torch.ones(4, 3, dtype=torch.bool), tokens, torch.ones(4, 8, dtype=torch.bool)


class NaNLoss(MeanP):
    name = "nan"

    def loss(self, text, video):
        total = super().loss(text, video)["total"] * float("nan")
        return {"total": total, "contrastive": total}


def test_non_finite_loss_stops_with_a_clear_error():
    method = NaNLoss(tiny_backbone(), MeanP.Params())
    with pytest.raises(TrainingError, match=r"nan: non-finite loss at epoch 1, step 1 \(total=nan"):
        train(method, Batches(), TrainingSpec(epochs=1), torch.device("cpu"), quiet=True, log=lambda *_: None)


def test_training_moves_weights_and_clamps_logit_scale():
    method = MeanP(tiny_backbone(), MeanP.Params())
    with torch.no_grad():
        method.backbone.logit_scale.fill_(math.log(200.0))
    before = method.backbone.clip.visual.conv1.weight.clone()
    record = train(method, Batches(), TrainingSpec(epochs=2, lr=1e-2, coef_lr=1.0), torch.device("cpu"), quiet=True,
                   log=lambda *_: None)
    assert record.steps == 4 and len(record.history) == 2 and "loss_contrastive" in record.history[0]
    assert not torch.equal(before, method.backbone.clip.visual.conv1.weight)
    assert method.backbone.logit_scale.exp().item() <= 100.0 + 1e-3


def test_validation_carve_is_deterministic_and_disjoint():
    videos = [Video(f"video{i}", None) for i in range(50)]
    owners = [i // 3 for i in range(150)]
    split = Split("train", "multi-caption", videos, [f"c{i}" for i in range(150)], owners)
    train_a, val_a = carve_validation(split, 10, 42)
    train_b, val_b = carve_validation(split, 10, 42)
    assert [v.id for v in val_a.videos] == [v.id for v in val_b.videos]
    assert len(val_a.videos) == 10 and val_a.shape == "square" and len(val_a.captions) == 10
    assert not {v.id for v in val_a.videos} & {v.id for v in train_a.videos}
    assert len(train_a.videos) == 40 and len(train_a.captions) == 120
    _, val_c = carve_validation(split, 10, 7)
    assert [v.id for v in val_c.videos] != [v.id for v in val_a.videos]


def test_chunked_scoring_equals_unchunked():
    method = MeanP(tiny_backbone(), MeanP.Params()).eval()
    torch.manual_seed(1)
    text = {"text": torch.nn.functional.normalize(torch.randn(203, 32), dim=-1)}
    video = {"video": torch.nn.functional.normalize(torch.randn(157, 32), dim=-1)}
    full = method.score(text, video)
    chunked = score_in_chunks(method, text, video, Scoring(torch.device("cpu"), 17))
    assert chunked.shape == (203, 157)
    assert (full - chunked).abs().max() <= 1e-5


def test_one_caption_per_video_samples_every_video_once_an_epoch_with_one_of_its_own_captions():
    from harness.pipeline.train import PairBatches

    videos = [Video(f"v{i}", None) for i in range(7)]
    owners = [0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 5, 6]  # video 4 has no caption: never sampled
    split = Split("train", "multi-caption", videos, [f"caption {i}" for i in range(len(owners))], owners)
    batches = PairBatches(split, None, 8, 2, 5, "uniform", 2, 16, rank=0, world=1, samples="one-caption-per-video")
    assert len(batches) == 3  # six captioned videos, batches of 2
    drawn = []
    for _ in range(40):
        captions = torch.cat(list(batches.shards())).tolist()
        assert sorted(owners[c] for c in captions) == [0, 1, 2, 3, 5, 6]
        drawn += captions
    assert set(drawn) == set(range(len(owners)))  # every caption of a video is drawn in some epoch
    every = PairBatches(split, None, 8, 2, 5, "uniform", 2, 16, rank=0, world=1)
    assert len(every) == 6 and sorted(torch.cat(list(every.shards())).tolist()) == list(range(12))
