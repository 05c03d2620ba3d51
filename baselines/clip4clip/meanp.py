"""CLIP4Clip meanP: v = normalise(masked mean of normalised frame features); score = s <t^, v>."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from baselines.clip4clip.official import load_official_clip4clip
from harness.api import Features, InnerProduct, Method, masked_mean, symmetric_cross_entropy


def mean_pooled_video(frames: Tensor, frame_mask: Tensor) -> Tensor:
    """(B, T, D) frame features -> (B, D) unit vectors, padded frames excluded."""
    return F.normalize(masked_mean(F.normalize(frames, dim=-1), frame_mask), dim=-1)


@dataclass
class MeanPParams:
    """meanP has no hyper-parameters of its own: it is trained under the suite's shared protocol."""


class MeanP(Method):
    """CLIP4Clip meanP: mean-pooled frame features, cosine similarity scaled by the logit scale."""

    name = "clip4clip-meanp"
    score_kind = "logits"  # s <t^, v>: the similarity times the logit scale
    Params = MeanPParams
    # The official checkpoint's key map (applied by baselines/clip4clip/official.py): each head's key
    # prefixes -> this module's names, and keys skipped on purpose. The official model creates the frame
    # position embedding for every head; meanP never uses it.
    official_prefixes: ClassVar[dict[str, str]] = {}
    official_unused: ClassVar[tuple[str, ...]] = ("frame_position_embeddings.weight",)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        return {"video": mean_pooled_video(self.backbone.encode_frames(frames), frame_mask)}

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        sentence = self.backbone.encode_sentence(tokens)
        return {"text": F.normalize(sentence, dim=-1)}

    def score(self, text: Features, video: Features) -> Tensor:
        return self.backbone.logit_scale.exp() * text["text"] @ video["video"].t()

    def inner_product(self, text: Features, video: Features) -> InnerProduct | None:
        return InnerProduct(text["text"], video["video"], float(self.backbone.logit_scale.exp()))

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        main = symmetric_cross_entropy(self.score(text, video))
        return {"total": main, "contrastive": main}

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        load_official_clip4clip(self, state, source)
