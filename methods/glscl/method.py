"""GLSCL: Global-Local Semantic Consistent Learning (official code: zchoi/GLSCL, a DiCoSA fork).

Frames go through CLIP4Clip's seqTransf (F' = Transformer(F + P_pos) + F). Score, train and test alike:
S = s_g + local_weight * s_l (see interaction.py). Loss: symmetric cross-entropy on s * S, plus
alpha * intra-diversity (video queries only) and the inter-consistency loss (see losses.py).

Cost split: encode_video = backbone frames + seqTransf + the video-side decoder; encode_text = backbone
text + the text-side decoder; score = the per-pair work only (global weights, pooling and cosine; local
query dot products), chunked over videos so that the (n_t, n_v, D) pooled tensor stays under a budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from harness.api import (PADDED_FRAMES, PADDED_WORDS, Features, HarnessError, Method, over_video_chunks,
                         symmetric_cross_entropy, temporal_transformer, text_blocks, text_positions)
from methods.glscl.interaction import LocalInteraction, global_scores, local_scores
from methods.glscl.losses import ConsistencyAverage, inter_consistency, intra_diversity

# How the text side treats padded word positions. "mask-keys": the text encoder masks padded keys, as
# the official text encoder does, so the padded word states the decoder reads are the official ones.
# "memory-mask": open_clip's causal-only states, with the padded positions hidden from the decoder by a
# memory key-padding mask (a documented deviation: the official decoder reads the padded states).
TextPadding = Literal["mask-keys", "memory-mask"]

TEXT_PADDING_NOTES = {
    "mask-keys": "text encoder masks padding keys (as the official GLSCL/DiCoSA encoder); the local decoder "
                 "reads every word state, padding included, with no memory mask (as the official code)",
    "memory-mask": "deviation: causal-only text encoder; padded word states hidden from the local decoder "
                   "by a memory key-padding mask",
}


@dataclass
class GLSCLParams:
    layers: int = 4  # seqTransf blocks, initialised from the backbone's first text blocks
    frame_positions: int = 77  # rows of the frame position embedding (CLIP's text context length)
    temperature: float = 3.0  # global module's softmax temperature (official scripts: 3; LSMDC 5)
    queries: int = 8  # K learnable queries (ActivityNet 12)
    decoder_layers: int = 3
    decoder_heads: int = 8
    decoder_feedforward: int = 2048
    decoder_dropout: float = 0.1
    local_weight: float = 0.5  # S = s_g + local_weight * s_l
    alpha: float = 1e-4  # intra-diversity weight (LSMDC 0.01)
    beta: float = 0.02  # weight of the consistency's query-agreement term (MSR-VTT 0.02; 0.005 elsewhere)
    consistency_average: ConsistencyAverage = "official-over-queries"
    text_padding: TextPadding = "mask-keys"
    freeze_patch_embedding: bool = True
    # Elements of the (texts x videos x D) pooled tensor built at once while scoring (2^22: on one core faster
    # than 2^24, whose tensors outgrow the caches; raise it on a GPU).
    pair_budget: int = 1 << 22


class GLSCL(Method):
    """GLSCL: seqTransf frames, a parameter-free global module and a shared-query local module."""

    name = "glscl"
    reported_as = "GLSCL"
    score_kind = "similarity"  # s_g + 0.5 s_l, without the logit scale
    post_processing = ("qbnorm",)  # the official evaluation (DiCoSA's test loop) reports the QB-Norm rows too
    Params = GLSCLParams
    # The official run scripts' values where they differ from MSR-VTT's (the Params defaults). VATEX has
    # no official script: it keeps the MSR-VTT values.
    benchmark_defaults = {
        "msvd": {"beta": 0.005},
        "didemo": {"beta": 0.005},
        "activitynet": {"queries": 12, "beta": 0.005},
        "lsmdc": {"temperature": 5.0, "alpha": 0.01, "beta": 0.005},
    }

    def __init__(self, backbone, params: GLSCLParams):
        super().__init__(backbone, params)
        if params.queries < 2:
            raise HarnessError(f"glscl: queries={params.queries}; the intra-diversity loss needs at least 2 queries.")
        if backbone.embed_dim % params.decoder_heads:
            raise HarnessError(f"glscl: the embedding width {backbone.embed_dim} is not divisible by "
                               f"decoder_heads={params.decoder_heads}.")
        self.resblocks = text_blocks(backbone, params.layers, self.name)
        self.frame_position_embeddings = text_positions(backbone, params.frame_positions)
        self.local = LocalInteraction(backbone.embed_dim, params.queries, params.decoder_layers,
                                      params.decoder_heads, params.decoder_feedforward, params.decoder_dropout)
        if params.freeze_patch_embedding:
            backbone.clip.visual.conv1.weight.requires_grad_(False)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        temporal = temporal_transformer(self.resblocks, self.frame_position_embeddings,
                                        self.backbone.encode_frames(frames), frame_mask, self.name)
        # The official decoder reads every frame, padded ones included (no memory mask).
        return {"frames": temporal, "frame_mask": frame_mask, "queries": self.local(temporal)}

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        if self.params.text_padding == "mask-keys":
            sentence, words = self.backbone.encode_text(tokens, mask_padding_keys=token_mask)
            queries = self.local(words)
        else:
            sentence, words = self.backbone.encode_text(tokens)
            queries = self.local(words, memory_key_padding_mask=~token_mask)
        return {"text": sentence, "queries": queries}

    def global_score(self, text: Features, video: Features) -> Tensor:
        return over_video_chunks(lambda part: global_scores(text["text"], part["frames"], part["frame_mask"],
                                                            self.params.temperature),
                                 video, text["text"].numel(), self.params.pair_budget)

    def local_score(self, text: Features, video: Features) -> Tensor:
        return local_scores(text["queries"], video["queries"])

    def score(self, text: Features, video: Features) -> Tensor:
        return self.global_score(text, video) + self.params.local_weight * self.local_score(text, video)

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        main = symmetric_cross_entropy(self.backbone.logit_scale.exp() * self.score(text, video))
        diversity = self.params.alpha * intra_diversity(video["queries"])
        consistency = inter_consistency(video["queries"], text["queries"], self.params.beta,
                                        self.params.consistency_average)
        return {"total": main + diversity + consistency, "contrastive": main, "diversity": diversity,
                "consistency": consistency}

    def protocol(self) -> dict[str, str]:
        facts = {"text_padding": TEXT_PADDING_NOTES[self.params.text_padding],
                 "consistency_average": self.params.consistency_average,
                 PADDED_FRAMES: "the frame mask multiplies the global softmax weights after the softmax, without "
                                "renormalising, and the local decoder reads every frame (official)"}
        if self.params.text_padding == "mask-keys":
            facts[PADDED_WORDS] = "the local decoder reads every word state, padding included (official)"
        return facts

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        from methods.glscl.official import load_official_glscl

        load_official_glscl(self, state, source)
