"""CLIP-ViP (Xue et al., ICLR 2023; official code microsoft/XPretrain, folder CLIP-ViP): video proxy tokens,
a temporal embedding and proxy-guided attention, one ViT pass per video (encoder.py).

Video: padded frames take the video's last real frame (the official loader's padding); v^ = normalise(proj(
ln_post(token 0))). Text: t^, the normalised EOT feature. Score s = t^ . v^, a cosine without logit scale (the
official "simple" evaluation); an inner product, indexable. The official "DSL" row is s * softmax over all
queries of 100 s (dsl_temperature). Loss (NCELearnableTempLoss): CE(rows) + CE(columns) of e^theta S, summed,
not averaged; theta the backbone's logit scale, set to 4.60 at construction (the official
logit_scale_init_value, not ln 100).

Cost split: encode_video = the ViT over M + T L tokens; encode_text = the text tower; score = D MACs per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import Features, InnerProduct, Method
from methods.clipvip.encoder import (proxy_attention_mask, proxy_guided_block, repeat_last_real_frame,
                                     video_tokens)

# How the proxy-guided attention is computed; both give the same numbers. "blocks": each block from its parts,
# the attention per frame and for the proxies, as the official code computes it (the official cost, 52.3 GMAC
# per 12-frame ViT-B/32 video). "mask": every block as the backbone runs it (run_visual_blocks) with the
# additive (M + T L)^2 mask; it also computes the masked-out products (58.2 GMAC).
Attention = Literal["mask", "blocks"]


@dataclass
class CLIPViPParams:
    proxies: int = 3  # add_cls_num: video proxy tokens besides CLS (M = 1 + proxies)
    temporal_size: int = 12  # rows of the temporal embedding (interpolated for other frame counts)
    logit_scale_init: float = 4.60  # logit_scale_init_value: the logit scale (log) set at construction
    attention: Attention = "blocks"


class CLIPViP(Method):
    """CLIP-ViP: video proxies, temporal embedding, proxy-guided attention over the whole video. No
    benchmark_defaults: its own values are the same in every official fine-tuning config (MSR-VTT, DiDeMo, LSMDC,
    ActivityNet); what differs there (frames, words, epochs) is the suite's protocol."""

    name = "clipvip"
    reported_as = "CLIP-ViP"
    Params = CLIPViPParams
    score_kind = "similarity"
    dsl_temperature = 100.0  # the official DSL: score * softmax(100 * score) over the queries
    post_processing = ("dsl",)

    def __init__(self, backbone, params: CLIPViPParams):
        super().__init__(backbone, params)
        width = backbone.clip.visual.class_embedding.shape[0]
        self.added_cls = nn.Parameter(torch.randn(params.proxies, width))
        self.temporal_embedding = nn.Parameter(torch.zeros(1, params.temporal_size, width))
        with torch.no_grad():
            backbone.clip.logit_scale.fill_(params.logit_scale_init)

    def encoder_output(self, frames: Tensor, states: list[Tensor] | None = None) -> Tensor:
        """frames (B, T, 3, H, W) -> the last block's output (B, M + T L, w); `states` (if given) receives every
        block's input and that output."""
        x = video_tokens(self.backbone, frames, self.added_cls, self.temporal_embedding)
        proxies, count = 1 + self.params.proxies, frames.shape[1]
        mask = (proxy_attention_mask(proxies, count, (x.shape[1] - proxies) // count, x.dtype, x.device)
                if self.params.attention == "mask" else None)
        for index, block in enumerate(self.backbone.visual_blocks):
            if states is not None:
                states.append(x)
            x = (self.backbone.run_visual_blocks(x, index, index + 1, attn_mask=mask) if mask is not None
                 else proxy_guided_block(block, x, proxies, count))
        if states is not None:
            states.append(x)
        return x

    def video_features(self, frames: Tensor) -> Tensor:
        """frames (B, T, 3, H, W) as the official model sees them -> proj(ln_post(token 0)) (B, D)."""
        return self.backbone.pool_frames(self.encoder_output(frames))

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        features = self.video_features(repeat_last_real_frame(frames, frame_mask))
        return {"video": F.normalize(features, dim=-1)}

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        return {"text": F.normalize(self.backbone.encode_sentence(tokens), dim=-1)}

    def score(self, text: Features, video: Features) -> Tensor:
        return text["text"] @ video["video"].t()

    def inner_product(self, text: Features, video: Features) -> InnerProduct:
        return InnerProduct(text["text"], video["video"], 1.0)

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        logits = self.backbone.logit_scale.exp() * self.score(text, video)
        targets = torch.arange(logits.shape[0], device=logits.device)
        nce = F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)
        return {"total": nce, "nce": nce}

    def protocol(self) -> dict[str, str]:
        return {
            "frame_padding": "padded frames are replaced by the video's last real frame (the official loader's "
                             "padding); the encoder has no frame mask, as the official one",
            "temporal_embedding": f"{self.params.temporal_size} rows, linearly interpolated (align_corners=False) "
                                  "for other frame counts",
            "attention": ("proxy-guided attention as one additive mask over the whole video's tokens (the "
                          "masked-out products are computed too)" if self.params.attention == "mask" else
                          "proxy-guided attention computed per frame and for the proxies, as the official code"),
            "loss": "CE(rows) + CE(columns), summed (twice the symmetric mean), at the trained logit scale",
            "logit_scale": f"initialised to {self.params.logit_scale_init} (official logit_scale_init_value); "
                           "deviation: the engine clamps it at the suite's max_logit_scale (official: [0, ln 200])",
            "learning_rate": "deviation unless the suite sets coef_lr 1: the official code trains every parameter "
                             "at one learning rate (1e-6); here the proxies and the temporal embedding train at "
                             "lr and CLIP at lr x coef_lr",
            "evaluation": "score = cosine t^ . v^ (the official 'simple' row); the official DSL row (100 x score) "
                          "is the 'dsl' post-processing",
        }

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        from methods.clipvip.official import load_official_clipvip

        load_official_clipvip(self, state, source)
