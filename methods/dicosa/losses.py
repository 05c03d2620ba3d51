"""DiCoSA's disentanglement loss, computed as the official code computes it.

On aligned pairs (text i with video i), t_i and v_ii (video i pooled by its own caption), both split into
K concept chunks of d dims. Each chunk is standardised over its d dims per sample with the unbiased std:
zt[i, k, :], zv[i, l, :]. Then
    C_kl  = (1 / B) sum_i sum_j zt[i, k, j] zv[i, l, j] / L
with L the padded text length (the official code divides by `text_feat.shape[1]`, the token count, not
by d; since sum_j z^2 = d - 1, C_kk = (d - 1) / L x the correlation), and
    on  = sum_k (C_kk - 1)^2,   off = sum_{k != l} C_kl^2,   L_dis = alpha on + beta off.
"""

from __future__ import annotations

import torch
from torch import Tensor


def standardise(concepts: Tensor) -> Tensor:
    """(B, K, d) -> z-scores over the d dims of each sample's chunk, unbiased std."""
    return (concepts - concepts.mean(dim=-1, keepdim=True)) / concepts.std(dim=-1, keepdim=True)


def concept_cross_correlation(text_concepts: Tensor, video_concepts: Tensor, text_length: int) -> Tensor:
    """t_i and v_ii chunks, each (B, K, d) -> C (K, K), the batch mean divided by the text length L."""
    batch = text_concepts.shape[0]
    products = torch.einsum("bkj,blj->kl", standardise(text_concepts), standardise(video_concepts))
    return products / batch / text_length


def disentanglement_terms(text_concepts: Tensor, video_concepts: Tensor, text_length: int) -> tuple[Tensor, Tensor]:
    """The unweighted on-diagonal and off-diagonal sums of the disentanglement loss."""
    correlation = concept_cross_correlation(text_concepts, video_concepts, text_length)
    off = ~torch.eye(correlation.shape[0], dtype=torch.bool, device=correlation.device)
    return (correlation.diagonal() - 1).pow(2).sum(), correlation[off].pow(2).sum()
