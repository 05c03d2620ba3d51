"""DiCoSA's per-pair interaction: text-conditioned pooling, K concepts, pair-dependent concept weights.

For text a (EOT feature t_a, D) and video b (seqTransf frames F'_b, T x D, frame mask m_b):
    w_f  = softmax over ALL T frames of <t_a, F'_bf> / tau, then w_f *= m_bf   (no renormalising)
    v_ab = sum_f w_f F'_bf                                                   (D)
    t_k, v_k = the k-th contiguous chunk of d = D / K dims of t_a, v_ab      (k = 1..K)
    lam_k = Linear(4d -> 1)(ReLU(Linear(2d -> 4d)([t_k ; v_k])))             (one MLP for every k; the
                                                                              weights are not normalised)
    S_ab = sum_k lam_k cos(t_k, v_k)

The first layer of the MLP acts on a concatenation, so it splits exactly into a text part W_t t_k + b
(per query, `ConceptWeighting.text_half`) and a video part W_v v_k (per pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The official code re-initialises every nn.Linear it builds with this normal std and zero biases.
OFFICIAL_LINEAR_INIT_STD = 0.02


def split_concepts(features: Tensor, concepts: int) -> Tensor:
    """(..., D) -> (..., K, d): K contiguous chunks of d = D / K dims."""
    return features.unflatten(-1, (concepts, -1))


def unit(features: Tensor) -> Tensor:
    """x / |x| over the last dim, without an epsilon, as the official code normalises."""
    return features / features.norm(dim=-1, keepdim=True)


def frame_weights(text: Tensor, frames: Tensor, frame_mask: Tensor, temperature: float) -> Tensor:
    """text (n_t, D), frames (n_v, T, D), frame_mask (n_v, T) -> w (n_t, n_v, T): the softmax over all T
    frames (padded ones in the denominator), zeroed at padded frames afterwards. T x D MACs per pair."""
    weights = (torch.einsum("ad,bfd->abf", text, frames) / temperature).softmax(dim=-1)
    return weights * frame_mask.to(weights.dtype)[None]


def pooled_videos(text: Tensor, frames: Tensor, frame_mask: Tensor, temperature: float) -> Tensor:
    """v_ab (n_t, n_v, D) for every pair: T x D more MACs per pair."""
    return torch.einsum("abf,bfd->abd", frame_weights(text, frames, frame_mask, temperature), frames)


def own_pooled_videos(text: Tensor, frames: Tensor, frame_mask: Tensor, temperature: float) -> Tensor:
    """v_ii (B, D): video i pooled by its own caption i (the diagonal of pooled_videos on aligned pairs)."""
    weights = (torch.einsum("bd,bfd->bf", text, frames) / temperature).softmax(dim=-1)
    return torch.einsum("bf,bfd->bd", weights * frame_mask.to(weights.dtype), frames)


class ConceptWeighting(nn.Module):
    """The official `weight_fc`: Linear(2d -> 4d), ReLU, Linear(4d -> 1), shared by the K concepts; its
    input is [t_k ; v_k] (text chunk first)."""

    def __init__(self, concept_dim: int):
        super().__init__()
        self.concept_dim = concept_dim
        self.first = nn.Linear(2 * concept_dim, 4 * concept_dim)
        self.second = nn.Linear(4 * concept_dim, 1)
        for layer in (self.first, self.second):
            nn.init.normal_(layer.weight, std=OFFICIAL_LINEAR_INIT_STD)
            nn.init.zeros_(layer.bias)

    def text_half(self, text_concepts: Tensor) -> Tensor:
        """t_k (..., K, d) -> W_t t_k + b (..., K, 4d): the text's share of the first layer, once per query
        (K x 4d x d MACs)."""
        return F.linear(text_concepts, self.first.weight[:, : self.concept_dim], self.first.bias)

    def forward(self, text_half: Tensor, video_concepts: Tensor) -> Tensor:
        """text_half (n_t, K, 4d), v_k (n_t, n_v, K, d) -> lam (n_t, n_v, K): K x (4d x d + 4d) MACs per
        pair."""
        video_half = F.linear(video_concepts, self.first.weight[:, self.concept_dim :])
        return self.second((text_half[:, None] + video_half).relu()).squeeze(-1)


def weighted_concept_cosine(text_units: Tensor, video_concepts: Tensor, weights: Tensor) -> Tensor:
    """t_k / |t_k| (n_t, K, d), v_k (n_t, n_v, K, d), lam (n_t, n_v, K) -> S (n_t, n_v) = sum_k lam_k
    cos(t_k, v_k). Per pair: D MACs for the squared chunk norms of v, D for the dots, K for the sum."""
    norms = torch.einsum("abkd,abkd->abk", video_concepts, video_concepts).sqrt()
    cosines = torch.einsum("akd,abkd->abk", text_units, video_concepts) / norms
    return torch.einsum("abk,abk->ab", cosines, weights)
