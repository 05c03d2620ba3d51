"""GLSCL's two auxiliary losses, computed exactly as the official code computes them.

Both take unit-normalised query outputs of aligned pairs: video_queries Z^v and text_queries Z^t,
each (B, K, D), row b of one paired with row b of the other.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

# How the query-alignment term of the inter-consistency loss averages its sum over the batch:
# "official-over-queries" divides by K, as the official code does (`sum(0) / spatial_out.shape[1]`);
# "batch-mean" divides by B, the reading of the paper's formula.
ConsistencyAverage = Literal["official-over-queries", "batch-mean"]


def intra_diversity(video_queries: Tensor, margin: float = 0.1) -> Tensor:
    """The paper's intra-diversity loss (the code's `Inter_Diversity`, before its weight alpha).

    G = (1/B) sum_b Z^v_b Z^v_b^T is (K, K); a margin ranking loss both ways against its diagonal:
    sum over i != j of [max(0, m + G_ij - G_ii) + max(0, m + G_ij - G_jj)] / (K (K - 1)). With unit
    queries the diagonal is 1 and each term is max(0, G_ij - 0.9)."""
    batch, queries, _ = video_queries.shape
    gram = torch.einsum("bkd,bjd->kj", video_queries, video_queries) / batch
    diagonal = gram.diagonal()
    off_diagonal = ~torch.eye(queries, dtype=torch.bool, device=gram.device)
    against_row = (margin + gram - diagonal[:, None]).clamp(min=0)[off_diagonal].sum()
    against_column = (margin + gram - diagonal[None, :]).clamp(min=0)[off_diagonal].sum()
    return (against_row + against_column) / (queries * (queries - 1))


def inter_consistency(video_queries: Tensor, text_queries: Tensor, beta: float,
                      average: ConsistencyAverage = "official-over-queries", target: float = 0.75) -> Tensor:
    """The paper's inter-consistency loss (the code's `Intra_Consistency`; weight 1).

    MSE(mean_b Z^v_b, mean_b Z^t_b) over K x D, plus beta * sum_k (a_k - 0.75)^2 where
    a_k = sum_b <Z^v_{b,k}, Z^t_{b,k}> divided by K (official) or by B (batch-mean)."""
    batch, queries, _ = video_queries.shape
    divisor = queries if average == "official-over-queries" else batch
    agreement = torch.einsum("bkd,bkd->k", video_queries, text_queries) / divisor
    centre = F.mse_loss(video_queries.mean(dim=0), text_queries.mean(dim=0))
    return centre + beta * (agreement - target).pow(2).sum()
