"""Zero-shot CLIP: the frozen backbone, mean of frame features, no training."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from baselines.clip4clip.meanp import MeanP
from harness.api import Features, InnerProduct


@dataclass
class ZeroShotParams:
    """Zero-shot CLIP has no hyper-parameters."""


class ZeroShot(MeanP):
    """Zero-shot CLIP: cos(t, mean of masked normalised frame features), frozen backbone, no training."""

    name = "zeroshot"
    score_kind = "similarity"  # the cosine, CLIP's zero-shot score
    Params = ZeroShotParams
    trainable = False
    official_unused = ()  # an official (CLIP4Clip-layout) file for the frozen CLIP holds clip.* keys only

    def score(self, text: Features, video: Features) -> Tensor:
        return text["text"] @ video["video"].t()

    def inner_product(self, text: Features, video: Features) -> InnerProduct | None:
        return InnerProduct(text["text"], video["video"], 1.0)
