"""X-CLIP: multi-grained contrastive learning for video-text retrieval (ACM MM 2022; official code
xuguohai/X-CLIP, a CLIP4Clip fork, `loose_type`, `sim_header seqTransf`).

Features (the CLIP towers unchanged; t the EOT feature, W every token position, F the raw CLIP frames):
    video  v = normalise(masked mean over real frames of normalise(F'_f)),  F' = seqTransf(F + P_pos) + F
    frames f^ = normalise(F)                 raw CLIP frames for the frame-level scores, padded ones included
    text   t^ = normalise(t), w^_l = normalise(W_l) at all L positions (SOT, EOT, padding), and the
           per-query projections t^ W_g and w^ W_l (D x D matrices)
Score, training and evaluation alike: S = s (S_vs + S_vw + S_sf + S_fw) / 4, s = exp(logit_scale)
(scores.py). Loss: symmetric cross-entropy on S, the only term; the CLIP embeddings, conv1 and ln_pre
stay frozen (the official freeze_layer_num 0).

Cost split: encode_video = CLIP frames + seqTransf + normalisations (per video); encode_text = CLIP text +
normalisations + the two projections (per query); score = the per-pair work only, chunked over videos so
that the (texts x words x frames x videos) fine matrix stays under `pair_budget` elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import (PADDED_FRAMES, PADDED_WORDS, Features, HarnessError, Method, masked_mean,
                         over_video_chunks, symmetric_cross_entropy, temporal_transformer, text_blocks,
                         text_positions)
from methods.xclip.official import load_official_xclip
from methods.xclip.scores import EMBED_MATRICES, FRAME_MATRICES, SCORES, WORD_MATRICES, fine_grained, four_scores


FROZEN_BY_OFFICIAL = ("token_embedding.weight", "positional_embedding", "visual.class_embedding",
                      "visual.positional_embedding", "visual.conv1.weight", "visual.ln_pre.weight",
                      "visual.ln_pre.bias")


@dataclass
class XCLIPParams:
    layers: int = 4  # seqTransf blocks (cross_num_hidden_layers), initialised from the first text blocks
    frame_positions: int = 77  # rows of the frame position embedding (CLIP's text context length)
    words: int | None = None  # L of the L x L matrices (max_words); None: the suite's protocol.words
    frames: int | None = None  # T of the T x T matrices (max_frames); None: the suite's protocol.frames
    temperature: float = 0.01  # of every softmax in the scores (fixed in the official code)
    # The official `freeze_layer_num 0` (CLIP4Clip's rule, every script): the token and text positional
    # embeddings, the class embedding, the visual positions, conv1 and ln_pre are not trained.
    freeze_embeddings: bool = True
    # Elements of the (texts x words x frames x videos) fine matrix built at once while scoring; five
    # tensors of that size are alive at once (the matrix, its scaled copy, softmax, weighting, product). 2^20:
    # on one core 2x faster than 2^22, whose tensors outgrow the caches; raise it on a GPU.
    pair_budget: int = 1 << 20


class XCLIP(Method):
    """X-CLIP: video-sentence, video-word, sentence-frame and frame-word scores, averaged."""

    name = "xclip"
    reported_as = "X-CLIP"
    score_kind = "logits"
    Params = XCLIPParams
    # The official scripts' max_words / max_frames (the sizes of the L x L and T x T matrices) are the
    # benchmarks' protocol values (32 / 12; 64 / 64 for DiDeMo and ActivityNet), which `words` and `frames`
    # take when unset; the scripts' other settings (batch size, epochs) are the suite's training settings.

    def __init__(self, backbone, params: XCLIPParams):
        super().__init__(backbone, params)
        for size in ("words", "frames"):
            if getattr(params, size) is None:
                raise HarnessError(f"xclip: params.{size} is unset; it takes the suite's protocol.{size} when run "
                                   "from a suite, or give it explicitly.")
        self.resblocks = text_blocks(backbone, params.layers, self.name)
        self.frame_position_embeddings = text_positions(backbone, params.frame_positions)
        for names, size in ((EMBED_MATRICES, backbone.embed_dim), (WORD_MATRICES, params.words),
                            (FRAME_MATRICES, params.frames)):
            for name in names:
                setattr(self, name, nn.Parameter(torch.eye(size)))
        if params.freeze_embeddings:
            clip = backbone.clip.state_dict(keep_vars=True)
            for name in FROZEN_BY_OFFICIAL:
                clip[name].requires_grad_(False)

    # -- per video -------------------------------------------------------------------------------------
    def temporal_frames(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """Raw CLIP frames F (B, T, D) -> F' = seqTransf(F + P_pos) + F, padded frames masked as keys."""
        return temporal_transformer(self.resblocks, self.frame_position_embeddings, frames, frame_mask, self.name)

    def video_features(self, frames: Tensor, frame_mask: Tensor) -> Features:
        """Raw CLIP frames F (B, T, D) -> v (B, D) and f^ (B, T, D). The frame mask only masks seqTransf's
        keys and the mean: the frame-level scores read every frame (official)."""
        if frames.shape[1] != self.params.frames:
            raise HarnessError(f"xclip: {frames.shape[1]} frames per video, but the T x T matrices were built for "
                               f"frames={self.params.frames}; set the method's params.frames (null: the suite's "
                               "protocol.frames).")
        temporal = F.normalize(self.temporal_frames(frames, frame_mask), dim=-1)
        return {"video": F.normalize(masked_mean(temporal, frame_mask), dim=-1),
                "frames": F.normalize(frames, dim=-1)}

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        return self.video_features(self.backbone.encode_frames(frames), frame_mask)

    # -- per query -------------------------------------------------------------------------------------
    def text_features(self, sentence: Tensor, words: Tensor) -> Features:
        """t (B, D) and W (B, L, D) -> t^, w^ and their projections t^ W_g, w^ W_l (once per query)."""
        if words.shape[1] != self.params.words:
            raise HarnessError(f"xclip: {words.shape[1]} words per caption, but the L x L matrices were built for "
                               f"words={self.params.words}; set the method's params.words (null: the suite's "
                               "protocol.words).")
        sentence, words = F.normalize(sentence, dim=-1), F.normalize(words, dim=-1)
        return {"sentence": sentence, "words": words, "sentence_global": sentence @ self.global_mat_weight,
                "words_local": words @ self.local_mat_weight}

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        # No padding mask: the causal text encoder's states at every position, as the official code.
        return self.text_features(*self.backbone.encode_text(tokens))

    # -- per pair --------------------------------------------------------------------------------------
    def weights(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in EMBED_MATRICES + WORD_MATRICES + FRAME_MATRICES}

    def scores(self, text: Features, video: Features) -> dict[str, Tensor]:
        """The four (n_t, n_v) scores x the logit scale, chunked over videos."""
        weights, temperature = self.weights(), self.params.temperature
        per_video = text["words"].shape[0] * text["words"].shape[1] * self.params.frames  # fine matrix elements
        scores = over_video_chunks(lambda part: four_scores(text, part, weights, temperature), video, per_video,
                                   self.params.pair_budget)
        scale = self.backbone.logit_scale.exp()
        return {name: scale * scores[name] for name in SCORES}

    def fine_grained(self, text: Features, video: Features) -> dict[str, Tensor]:
        """The frame-word score's intermediates (scores.fine_grained), unchunked, without the logit scale."""
        return fine_grained(text["words_local"], video["frames"], self.weights(), self.params.temperature)

    def score(self, text: Features, video: Features) -> Tensor:
        return torch.stack(list(self.scores(text, video).values())).mean(dim=0)

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        """The official training step: symmetric cross-entropy on S over the (global) batch, nothing else."""
        contrastive = symmetric_cross_entropy(self.score(text, video))
        return {"total": contrastive, "contrastive": contrastive}

    def protocol(self) -> dict[str, str]:
        return {
            PADDED_FRAMES: "every frame, padded ones included (the CLIP feature of a zero-pixel frame), enters the "
                           "sentence-frame and frame-word softmaxes and sums (official: no frame mask in the "
                           "scores; the mask only masks seqTransf's keys and the mean for the video feature)",
            PADDED_WORDS: "every token position (SOT, EOT and the padding after it; causal text encoder only) enters "
                          "the video-word and frame-word softmaxes and sums (official: no text mask anywhere)",
            "frame_features": "raw CLIP frames for the frame-level scores, seqTransf frames only for the video "
                              "feature (official use_original_clip_for_frame_features)",
            "matrix_sizes": f"L x L matrices for words={self.params.words}, T x T for frames={self.params.frames}: "
                            "a trained model works only at its own max_words and max_frames",
            "evaluation": "seqTransf once per video and the text projections once per query (the official test loop "
                          "recomputes both for every block pair; the scores do not depend on the blocking)",
            "precision": "fp32 throughout (the official runs use fp16 CLIP weights and an fp32 head)",
            "frozen_embeddings": ("token and positional embeddings, class embedding, conv1 and ln_pre frozen "
                                  "(official freeze_layer_num 0)" if self.params.freeze_embeddings else
                                  "deviation: every CLIP parameter trained (official: embeddings, conv1, ln_pre "
                                  "frozen)"),
        }

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        load_official_xclip(self, state, source)
