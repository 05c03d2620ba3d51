"""The one method interface: a method is a head on the shared backbone.

The split into encode_video / encode_text / score is the cost model: offline per video, online per
query, online per pair. The engine measures and chunks each stage; no method reports its own cost.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api.backbone import Backbone
from harness.errors import CheckpointError

# A mapping of named tensors whose first dimension indexes items (videos or queries): the engine
# slices, concatenates, moves and caches it without knowing what is inside. It keeps floating tensors in
# float32 and every other dtype as returned: a mask a method stores as bool reaches `score` and `loss` as bool
# in training, validation and evaluation alike.
Features = dict[str, Tensor]

# protocol() keys by which a method declares that its scores read the content of padded frames or padded
# word positions because its official code does (the value says how); the conformance check then
# confirms that they do, instead of that they do not.
PADDED_FRAMES = "padded_frames"
PADDED_WORDS = "padded_words"


@dataclass
class InnerProduct:
    """Vectors whose dot product, times `scale` (> 0), is a method's score: score = scale * text @ video^T."""

    text: Tensor  # (n_text, d)
    video: Tensor  # (n_video, d)
    scale: float


class Method(nn.Module):
    name: ClassVar[str]
    Params: ClassVar[type]  # dataclass of the method's own hyper-parameters, official defaults
    trainable: ClassVar[bool] = True
    # Official hyper-parameters that differ by benchmark: {benchmark name: {param: value}}. The suite
    # applies them under its own params; the resolved values are stored with every result.
    benchmark_defaults: ClassVar[dict[str, dict]] = {}
    # The method's name in the published tables (reported.csv), where it appears there.
    reported_as: ClassVar[str | None] = None
    # What `score` returns, for the post-processing rows: "logits" (a similarity already multiplied by the
    # logit scale, as CLIP4Clip's meanP) or "similarity" (cosine-like, without it, as X-Pool). DSL's softmax is
    # taken over logits, QB-Norm's exponent over similarities. None: not declared, post-processing refused.
    score_kind: ClassVar[str | None] = None
    # DSL's softmax temperature over `score` where the official code fixes one (CLIP-ViP: 100 x the cosine);
    # None: derived from score_kind (1 for logits, the trained logit scale for similarities).
    dsl_temperature: ClassVar[float | None] = None
    # Post-processing rows the official evaluation reports for the method, added to every run of it (e.g.
    # DiCoSA's test loop always applies QB-Norm): names of harness post-processings ("dsl", "qbnorm").
    post_processing: ClassVar[tuple[str, ...]] = ()
    # The official QB-Norm settings where they differ from docs/protocol.md section 4's: {benchmark: {"t2v": {"k":
    # .., "beta": .., "theta": ..}, "v2t": {...}}}.
    qbnorm_settings: ClassVar[dict[str, dict[str, dict]]] = {}

    def __init__(self, backbone: Backbone, params: object):
        super().__init__()
        self.backbone = backbone
        self.params = params

    @classmethod
    def build(cls, backbone: Backbone, params: dict) -> Method:
        """The method on its own copy of `backbone` (a method may change its towers), from resolved params."""
        return cls(copy.deepcopy(backbone), cls.Params(**params))

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        """frames (B, T, 3, H, W) normalised pixels, frame_mask (B, T) bool -> per-video features."""
        raise NotImplementedError

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        """tokens (B, L) ids, token_mask (B, L) bool -> per-query features."""
        raise NotImplementedError

    def score(self, text: Features, video: Features) -> Tensor:
        """(n_text, n_video) similarities, higher is better."""
        raise NotImplementedError

    def candidates(self) -> int | None:
        """Two-stage methods: how many gallery items per query get the fine score (`score`) after
        `coarse_score` has ranked the whole gallery. None: one stage, `score` on every pair."""
        return None

    def coarse_score(self, text: Features, video: Features) -> Tensor:
        """Two-stage methods: the cheap (n_text, n_video) score that ranks the whole gallery."""
        raise NotImplementedError

    def inner_product(self, text: Features, video: Features) -> InnerProduct | None:
        """Methods whose score (`coarse_score` for two-stage methods) is one inner product of an offline
        video vector and an online query vector: those vectors, so that an index can search the gallery.
        None: the score is no such inner product."""
        return None

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        """Training loss on a batch of aligned pairs (text i with video i): 'total' plus named terms."""
        raise NotImplementedError

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        """Load a state dict saved by the method's official code, through an explicit, strict key map."""
        raise CheckpointError(f"{self.name}: no official checkpoint format is known for this method ({source}).")

    def protocol(self) -> dict[str, str]:
        """Method-specific protocol facts (documented deviations, choices) recorded with its results."""
        return {}

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters that did not come from the CLIP checkpoint, wherever they sit (a prompt or a module
        placed inside the backbone's tower included): trained at the full learning rate."""
        loaded = {id(p) for p in self.backbone.clip_parameters}
        return [p for p in self.parameters() if id(p) not in loaded]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of x (B, T, D) counting only positions where mask (B, T) is true."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def symmetric_cross_entropy(logits: Tensor) -> Tensor:
    """1/2 [CE over rows + CE over columns] with the diagonal as targets."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
