"""TS2-Net's token mask for seqTransf over the selected tokens, and its frame-weighted score.

Token mask. Each frame contributes K = 1 + k tokens, frame-major ([CLS_0, sel_0.., CLS_1, ..]). The
official code expands the frame mask m (T,) to the K T tokens by tiling it, [m_0 .. m_{T-1}] K times, so
that token j is masked by m[j mod T] instead of its own frame's m[j // K] ("repeated", the fix). The frame
mask the score applies is that token mask at the CLS positions 0, K, 2K, ...: frame i uses m[(K i) mod T]
officially.

Score, with t^ the normalised text feature, f^_i the normalised seqTransf output at frame i's CLS position
and m~ the frame mask above:

    c_i = <t^, f^_i>
    w   = softmax_i(factor * c~),  c~ = (c * m~) / ||c * m~||_2 over frames, and c~_i = -1e18 where m~_i = 0
    S   = exp(logit_scale) * sum_i w_i c_i

The official code first applies a word-level softmax over the text tokens; with its single (EOT) text
token it is the identity, so the official "semantic" and "global" scores are this one formula.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

FrameMask = Literal["official-tiled", "repeated"]
MASKED_FRAME = -1e18


def token_mask(frame_mask: Tensor, tokens_per_frame: int, expansion: FrameMask) -> Tensor:
    """frame_mask (B, T) -> the mask of the K T selected tokens (B, K T), frame-major."""
    if expansion == "official-tiled":
        return frame_mask.repeat(1, tokens_per_frame)
    return frame_mask.repeat_interleave(tokens_per_frame, dim=1)


def frame_weighted_scores(text: Tensor, frames: Tensor, frame_mask: Tensor, factor: float) -> Tensor:
    """text (n_t, D) and frames (n_v, T, D), both normalised, frame_mask (n_v, T) bool -> (n_t, n_v) sum_i w_i c_i,
    without the logit scale."""
    cosines = torch.einsum("ad,btd->abt", text, frames)
    valid = frame_mask.unsqueeze(0)
    weights = F.normalize(cosines * valid, dim=-1).masked_fill(~valid, MASKED_FRAME)
    return (torch.softmax(factor * weights, dim=-1) * cosines).sum(dim=-1)
