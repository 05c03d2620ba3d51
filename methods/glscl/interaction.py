"""GLSCL's two interaction modules.

Global (parameter-free): for text a and video b, frame weights w = softmax_f(<t_a, F'_bf> / tau) on the
raw (unnormalised) vectors; the frame mask multiplies w after the softmax, without renormalising;
s_g = cos(t_a, sum_f w_f F'_bf).

Local: K learnable queries, one set shared by both modalities, go through one TransformerDecoder shared
by both modalities, against the video's frames or the text's word states; each output is normalised and
s_l = (1/K) sum_k <Z^t_ak, Z^v_bk> (query k against query k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def global_frame_weights(text: Tensor, frames: Tensor, frame_mask: Tensor, temperature: float) -> Tensor:
    """(n_t, n_v, T): softmax over all T frames of <t, F'_f> / tau, then zeroed at padded frames without
    renormalising (the official order). T x D multiply-adds per pair."""
    weights = (torch.einsum("ad,bfd->abf", text, frames) / temperature).softmax(dim=-1)
    return weights * frame_mask.to(weights.dtype)[None]


def global_scores(text: Tensor, frames: Tensor, frame_mask: Tensor, temperature: float) -> Tensor:
    """text t (n_t, D), frames F' (n_v, T, D), frame_mask (n_v, T) -> s_g (n_t, n_v).

    Per pair: the weights, T x D multiply-adds for the pooling, then a cosine."""
    weights = global_frame_weights(text, frames, frame_mask, temperature)
    pooled = torch.einsum("abf,bfd->abd", weights, frames)
    return torch.einsum("ad,abd->ab", F.normalize(text, dim=-1), F.normalize(pooled, dim=-1))


def local_scores(text_queries: Tensor, video_queries: Tensor) -> Tensor:
    """Z^t (n_t, K, D), Z^v (n_v, K, D), unit rows -> s_l (n_t, n_v): K x D multiply-adds per pair."""
    return torch.einsum("akd,bkd->ab", text_queries, video_queries) / text_queries.shape[1]


class LocalInteraction(nn.Module):
    """K queries (uniform [0, 1) at initialisation) and one post-norm TransformerDecoder (ReLU), both
    shared by the two modalities."""

    def __init__(self, dim: int, queries: int, layers: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.queries = nn.Parameter(torch.rand(queries, dim))
        layer = nn.TransformerDecoderLayer(dim, heads, feedforward, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)

    def forward(self, memory: Tensor, memory_key_padding_mask: Tensor | None = None) -> Tensor:
        """memory (B, M, D) -> unit query outputs (B, K, D)."""
        queries = self.queries.expand(memory.shape[0], -1, -1)
        out = self.decoder(queries, memory, memory_key_padding_mask=memory_key_padding_mask)
        return F.normalize(out, dim=-1)
