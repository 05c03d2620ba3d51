"""EERCF: efficient coarse-to-fine text-video retrieval (AAAI 2024; official code adxcreative/EERCF).

Two-stage: the coarse score s_v = s <t W_g, v> (v: the text-agnostic, indexable video vector) ranks the
whole gallery; only each query's top `candidates` are rescored with the fine score
    0.5 s_v + 0.8 s_wf + 0.2 s_sf + 0.2 s_wp        (the official rerank rule)
and placed above the rest. The engine does the two stages (`coarse_score`, `candidates`); `score` is the
fine score of the pairs it is given.

Training: L = 0.8 symCE(0.5 s_v + 0.5 s_wf + 0.05 s_wp) + 0.2 symCE(s_sf + 0 s_sp)
          + 0.001 (P(t, v) + P(t, v~) + 0 P(t, v~_patch)), the text-gated block using each video's own
caption (see scores.py). Every weight is a parameter with the official default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import (PADDED_FRAMES, Features, HarnessError, InnerProduct, Method, masked_mean,
                         symmetric_cross_entropy, temporal_transformer, text_blocks, text_positions)
from methods.eercf import scores
from methods.eercf.scores import pearson_constraint


@dataclass
class EERCFParams:
    layers: int = 4  # seqTransf blocks, initialised from the backbone's first text blocks
    frame_positions: int = 77
    frames: int | None = None  # size of the weak frame score's T x T matrix; None: the suite's frames
    candidates: int = 50  # k: pairs per query that get the fine score
    # fine (rerank) score of the candidates
    rerank_video: float = 0.5
    rerank_weak_frame: float = 0.8
    rerank_strong_frame: float = 0.2
    rerank_weak_patch: float = 0.2
    # training loss (official argument defaults)
    video_weight: float = 0.5
    weak_frame_weight: float = 0.5
    weak_patch_weight: float = 0.05
    strong_frame_weight: float = 1.0
    strong_patch_weight: float = 0.0
    weak_loss_weight: float = 0.8
    strong_loss_weight: float = 0.2
    pearson_video_weight: float = 1.0
    pearson_frame_weight: float = 1.0
    pearson_patch_weight: float = 0.0
    pearson_loss_weight: float = 0.001
    pearson_on_diagonal: float = 0.14
    pearson_off_diagonal: float = 0.0


class EERCF(Method):
    """EERCF: coarse video score for recall, weak/strong frame and patch scores to rerank the top k."""

    name = "eercf"
    score_kind = "logits"  # both stages include the logit scale
    Params = EERCFParams

    def __init__(self, backbone, params: EERCFParams):
        super().__init__(backbone, params)
        if params.frames is None:
            raise HarnessError("eercf: params.frames is unset; it takes the suite's protocol.frames when run "
                               "from a suite, or give it explicitly.")
        if params.candidates < 1:
            raise HarnessError(f"eercf: candidates={params.candidates}; give at least 1.")
        dim = backbone.embed_dim
        self.resblocks = text_blocks(backbone, params.layers, self.name)
        self.frame_position_embeddings = text_positions(backbone, params.frame_positions)
        self.global_mat_weight = nn.Parameter(torch.eye(dim))
        self.frame_logit_weight = nn.Parameter(torch.eye(params.frames))

    def candidates(self) -> int:
        return self.params.candidates

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        if frames.shape[1] != self.params.frames:
            raise HarnessError(f"eercf: {frames.shape[1]} frames per video, but the weak frame score was built "
                               f"for frames={self.params.frames}.")
        raw, patches = self.backbone.encode_frames_and_patches(frames)
        temporal = F.normalize(temporal_transformer(self.resblocks, self.frame_position_embeddings, raw, frame_mask,
                                                    self.name), dim=-1)
        return {
            "video": F.normalize(masked_mean(temporal, frame_mask), dim=-1),  # coarse, indexable
            "frames": F.normalize(raw, dim=-1),
            "temporal": temporal,
            "patches": F.normalize(patches, dim=-1).flatten(1, 2),
        }

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        sentence = F.normalize(self.backbone.encode_sentence(tokens), dim=-1)
        return {"text": sentence, "text_global": sentence @ self.global_mat_weight}

    def scale(self) -> Tensor:
        return self.backbone.logit_scale.exp()

    def coarse_score(self, text: Features, video: Features) -> Tensor:
        return self.scale() * text["text_global"] @ video["video"].t()

    def inner_product(self, text: Features, video: Features) -> InnerProduct | None:
        """The coarse score s <t W_g, v>: the video vector is indexable."""
        return InnerProduct(text["text_global"], video["video"], float(self.scale()))

    def evaluation_scores(self, text: Features, video: Features) -> dict[str, Tensor]:
        """The official evaluation's five (n_t, n_v) score matrices, each x the logit scale."""
        t = text["text"]
        return {name: self.scale() * value for name, value in {
            "video": text["text_global"] @ video["video"].t(),
            "weak_frame": scores.weak_frame(t, video["frames"], self.frame_logit_weight),
            "strong_frame": scores.strong_frame(t, video["frames"], video["temporal"]),
            "weak_patch": scores.weak_patch(t, video["patches"]),
            "strong_patch": scores.strong_patch(t, video["patches"]),
        }.items()}

    def score(self, text: Features, video: Features) -> Tensor:
        """The fine (rerank) score of every given pair; the engine gives it only the candidates."""
        t, p = text["text"], self.params
        return self.scale() * (p.rerank_video * (text["text_global"] @ video["video"].t())
                               + p.rerank_weak_frame * scores.weak_frame(t, video["frames"], self.frame_logit_weight)
                               + p.rerank_strong_frame * scores.strong_frame(t, video["frames"], video["temporal"])
                               + p.rerank_weak_patch * scores.weak_patch(t, video["patches"]))

    def training_scores(self, text: Features, video: Features) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """On aligned pairs: the five training-mode score matrices (x the logit scale; the gated blocks use
        each video's own caption) and the three Pearson-constraint terms before their weights."""
        t, p = text["text"], self.params
        gated_frames = scores.own_caption_gated(t, video["frames"], video["temporal"], scores.GATE)
        gated_patches = scores.own_caption_gated(t, video["patches"], video["patches"], scores.SHARP)
        logits = {name: self.scale() * value for name, value in {
            "video": text["text_global"] @ video["video"].t(),
            "weak_frame": scores.weak_frame(t, video["frames"], self.frame_logit_weight),
            "strong_frame": t @ gated_frames.t(),
            "weak_patch": scores.weak_patch(t, video["patches"]),
            "strong_patch": t @ gated_patches.t(),
        }.items()}
        pearson = {name: pearson_constraint(t, other, p.pearson_on_diagonal, p.pearson_off_diagonal)
                   for name, other in (("video", video["video"]), ("frame", gated_frames), ("patch", gated_patches))}
        return logits, pearson

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        p = self.params
        logits, pearson = self.training_scores(text, video)
        weak = symmetric_cross_entropy(p.video_weight * logits["video"] + p.weak_frame_weight * logits["weak_frame"]
                                       + p.weak_patch_weight * logits["weak_patch"])
        strong = symmetric_cross_entropy(p.strong_frame_weight * logits["strong_frame"]
                                         + p.strong_patch_weight * logits["strong_patch"])
        constraint = (p.pearson_video_weight * pearson["video"] + p.pearson_frame_weight * pearson["frame"]
                      + p.pearson_patch_weight * pearson["patch"])
        total = p.weak_loss_weight * weak + p.strong_loss_weight * strong + p.pearson_loss_weight * constraint
        return {"total": total, "weak": weak, "strong": strong, "pearson": constraint}

    def protocol(self) -> dict[str, str]:
        return {"retrieval": f"two-stage: coarse s_v over the gallery, fine score on the top {self.params.candidates} "
                             "per query, in both directions (the released code reranks per text query and ranks v2t "
                             "on that matrix transposed)",
                PADDED_FRAMES: "the weak frame, strong frame and weak patch scores read every frame, no frame mask "
                               "(official)"}

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        from methods.eercf.official import load_official_eercf

        load_official_eercf(self, state, source)
