"""X-Pool: text-conditioned attention pooling of frames (Gorti et al., CVPR 2022; official code
layer6ai-labs/xpool).

    t~ = LN1(t), F~ = LN1(F)                     one LayerNorm shared by both inputs
    a  = softmax over frames of (Wq t~ . Wk F~_f) / sqrt(head dim)
    r  = LN2(Wo sum_f a_f Wv F~_f)
    z  = LN3(r + Dropout(Wl r))
    score(t, v) = cos(t, z)                      against the raw text feature

All Linear layers start as identity with zero bias. Padded frames are masked out of the softmax (the
official loader never pads, so with every frame real the two agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import (CheckpointError, Features, Method, load_weights_strictly, over_video_chunks,
                         symmetric_cross_entropy)

OFFICIAL_PREFIX = "pool_frames."


@dataclass
class XPoolParams:
    num_heads: int = 1
    dropout: float = 0.3  # official: 0.3 for MSR-VTT 9k and LSMDC, 0.4 for MSR-VTT 7k and MSVD
    # Elements of the (videos x texts x D) pooled tensor built at once while scoring: the official test
    # code builds all of it (1.9 GiB for 1k-A); here it is bounded.
    pair_budget: int = 1 << 24


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"X-Pool: embedding width {dim} is not divisible by num_heads={heads}.")
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, text: Tensor, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """text (n_t, D), frames (n_v, T, D), frame_mask (n_v, T) -> (n_v, n_t, D)."""
        n_t, dim = text.shape
        n_v, length, _ = frames.shape
        head_dim = dim // self.heads
        q = self.q_proj(text).view(n_t, self.heads, head_dim)
        k = self.k_proj(frames).view(n_v, length, self.heads, head_dim)
        v = self.v_proj(frames).view(n_v, length, self.heads, head_dim)
        logits = torch.einsum("vfhd,nhd->vhfn", k, q) / math.sqrt(head_dim)
        logits = logits.masked_fill(~frame_mask[:, None, :, None], -torch.inf)
        weights = logits.softmax(dim=2)
        pooled = torch.einsum("vhfn,vfhd->vnhd", weights, v).reshape(n_v, n_t, dim)
        return self.out_proj(pooled)


class TextConditionedPool(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.cross_attn = CrossAttention(dim, heads)
        self.linear_proj = nn.Linear(dim, dim)
        self.layer_norm1, self.layer_norm2, self.layer_norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.eye_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, text: Tensor, frames: Tensor, frame_mask: Tensor) -> Tensor:
        attended = self.layer_norm2(self.cross_attn(self.layer_norm1(text), self.layer_norm1(frames), frame_mask))
        return self.layer_norm3(attended + self.dropout(self.linear_proj(attended)))


class XPool(Method):
    """X-Pool: cross-modal attention pooling of frames conditioned on the query text."""

    name = "xpool"
    reported_as = "X-Pool"
    score_kind = "similarity"  # the cosine of each text with its own pooled video
    Params = XPoolParams
    benchmark_defaults = {"msvd": {"dropout": 0.4}}  # the official MSVD setting; 0.3 elsewhere

    def __init__(self, backbone, params: XPoolParams):
        super().__init__(backbone, params)
        self.pool = TextConditionedPool(backbone.embed_dim, params.num_heads, params.dropout)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        return {"frames": self.backbone.encode_frames(frames), "frame_mask": frame_mask}

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        return {"text": self.backbone.encode_sentence(tokens)}

    def pooled(self, text: Features, video: Features) -> Tensor:
        """(n_v, n_t, D): every video pooled for every text (the official `pool_frames` output)."""
        return self.pool(text["text"], video["frames"], video["frame_mask"])

    def score(self, text: Features, video: Features) -> Tensor:
        queries = F.normalize(text["text"], dim=-1)

        def part_scores(part: Features) -> Tensor:
            return torch.einsum("nd,vnd->nv", queries, F.normalize(self.pooled(text, part), dim=-1))

        return over_video_chunks(part_scores, video, queries.numel(), self.params.pair_budget)

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        main = symmetric_cross_entropy(self.backbone.logit_scale.exp() * self.score(text, video))
        return {"total": main, "contrastive": main}

    def load_official_head(self, state: dict[str, Tensor], source: str = "X-Pool checkpoint") -> None:
        """Load the `pool_frames.*` tensors of an official X-Pool state dict, strictly."""
        head = {k[len(OFFICIAL_PREFIX):]: v for k, v in state.items() if k.startswith(OFFICIAL_PREFIX)}
        load_weights_strictly(self.pool, head, source)

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        """A whole official X-Pool checkpoint: `clip.*` in OpenAI layout and `pool_frames.*`."""
        unknown = sorted(k for k in state if not k.startswith(("clip.", OFFICIAL_PREFIX)))
        if unknown:
            raise CheckpointError(f"{source}: keys unknown to xpool: {', '.join(unknown[:8])}.")
        if any(k.startswith(("clip.text_model.", "clip.vision_model.")) for k in state):
            raise CheckpointError(f"{source}: a Hugging Face CLIP layout (clip.text_model.*); only the OpenAI layout "
                                  "(X-Pool run without --huggingface) is supported.")
        self.backbone.load_prefixed(state, "clip.", source)
        self.load_official_head(state, f"{source} (pool_frames.*)")
