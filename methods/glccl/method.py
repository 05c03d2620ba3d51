"""GLCCL: Global-Local Contrastive Consistency Learning (official code JingXiaolun/GLCCL).

Frames go through CLIP4Clip's seqTransf; the Global-Local Interaction Module aggregates them per text
and per word (interaction.py); S = (S_vs + S_vw + S_sf + S_fw) / 4 x the logit scale, train and test.
Loss: symCE(S) + lambda * CSC (score consistency over the four scores); lambda 0.5 per the official
README, 0.1 being the code's flag default (`csc_weight`).

Cost split: encode_video = backbone + seqTransf; encode_text = backbone (sentence and every word);
score = everything else, per pair and per word (O(L T D) per pair), chunked over videos so that the
(texts x videos x words x D) tensor stays under `pair_budget` elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import (PADDED_FRAMES, PADDED_WORDS, Features, HarnessError, Method, over_video_chunks,
                         symmetric_cross_entropy, temporal_transformer, text_blocks, text_positions)
from methods.glccl.interaction import EMBED_MATRICES, WORD_MATRICES, four_scores, score_consistency
from methods.glccl.official import load_official_glccl


@dataclass
class GLCCLParams:
    layers: int = 4  # seqTransf blocks, initialised from the backbone's first text blocks
    frame_positions: int = 77
    words: int | None = None  # size of the L x L matrices; None: the suite's words
    csc_weight: float = 0.5  # lambda (official README); the code's flag default is 0.1
    # Elements of the (texts x videos x words x D) per-word tensor built at once while scoring. 2^22 (16 MiB in
    # float32): on one core 2.2x faster than 2^24, whose tensors outgrow the caches; raise it on a GPU.
    pair_budget: int = 1 << 22


class GLCCL(Method):
    """GLCCL: text- and word-guided frame aggregation, four scores averaged, score-consistency loss."""

    name = "glccl"
    score_kind = "logits"  # the four scores, each times the logit scale
    Params = GLCCLParams

    def __init__(self, backbone, params: GLCCLParams):
        super().__init__(backbone, params)
        if params.words is None:
            raise HarnessError("glccl: params.words is unset; it takes the suite's protocol.words when run from a "
                               "suite, or give it explicitly.")
        self.resblocks = text_blocks(backbone, params.layers, self.name)
        self.frame_position_embeddings = text_positions(backbone, params.frame_positions)
        for name in EMBED_MATRICES:
            setattr(self, name, nn.Parameter(torch.eye(backbone.embed_dim)))
        for name in WORD_MATRICES:
            setattr(self, name, nn.Parameter(torch.eye(params.words)))

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        # The aggregation reads every frame (no frame mask, as the official code); padded frames are zeros.
        return {"frames": temporal_transformer(self.resblocks, self.frame_position_embeddings,
                                               self.backbone.encode_frames(frames), frame_mask, self.name)}

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        if tokens.shape[1] != self.params.words:
            raise HarnessError(f"glccl: {tokens.shape[1]} words per caption, but the L x L matrices were built for "
                               f"words={self.params.words}.")
        sentence, words = self.backbone.encode_text(tokens)
        return {"sentence": sentence, "words": words}

    def scores(self, text: Features, video: Features) -> dict[str, Tensor]:
        """The four (n_t, n_v) scores x the logit scale, chunked over videos."""
        weights = {name: getattr(self, name) for name in EMBED_MATRICES + WORD_MATRICES}
        sentence, words = F.normalize(text["sentence"], dim=-1), F.normalize(text["words"], dim=-1)
        scores = over_video_chunks(lambda part: four_scores(sentence, words, text["sentence"], text["words"],
                                                            part["frames"], weights),
                                   video, text["words"].numel(), self.params.pair_budget)
        scale = self.backbone.logit_scale.exp()
        return {name: scale * value for name, value in scores.items()}

    def score(self, text: Features, video: Features) -> Tensor:
        return torch.stack(list(self.scores(text, video).values())).mean(dim=0)

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        stacked = torch.stack(list(self.scores(text, video).values()))
        main = symmetric_cross_entropy(stacked.mean(dim=0))
        consistency = score_consistency(stacked)
        return {"total": main + self.params.csc_weight * consistency, "contrastive": main,
                "score_consistency": consistency}

    def protocol(self) -> dict[str, str]:
        return {PADDED_FRAMES: "the text- and word-guided aggregation reads every frame, no frame mask (official)",
                PADDED_WORDS: "one word-guided aggregate per word position, padding included, in every word-level "
                              "score (official)"}

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        load_official_glccl(self, state, source)
