"""TS2-Net's token selection after the visual transformer: a scorer and a perturbed top-k per frame.

Scorer, on a frame's projected tokens x_0 (CLS), x_1..x_P (patches), each of width D:

    h_i = GELU(W_1 LN(x_i))                         LN: torch's LayerNorm (eps 1e-5), W_1: D -> D/2, no bias
    s_i = tanh(w_3 . GELU(W_2 [h_i ; h_0]))         W_2: D -> D/2, w_3: D/2 -> 1, no bias, GELU the erf one

Selection (Berthet et al.'s perturbed optimiser), on the patch scores s_1..s_P, with Z ~ N(0, 1) of shape
(samples, P):

    I_j = mean_n onehot(j-th smallest index of top_k(s + sigma Z_n))       (k, P), each row sums to 1
    selected_j = I_j @ [x_1 .. x_P]                                          a convex combination of patches

The frame's output is [x_0, selected_1, .., selected_k]: the class token is always kept. Gradient (the
perturbed optimiser's estimate from the same samples):

    d s_p = sum_j dI_j,p * mean_n(onehot_n[j, p] Z_n[p]) / sigma

The one-hot samples are accumulated as counts (scatter-add) instead of being built, (frames, samples, k, P)
floats officially. `hard_indicator` is the plain top-k (the same sorted slots), without noise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TokenScorer(nn.Module):
    """The official `PredictorLG`: one score in (-1, 1) per token, every token judged with its frame's CLS.
    Attribute names and Sequential indices are the official ones (the checkpoint maps by prefix)."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 2, bias=False), nn.GELU())
        self.out_conv = nn.Sequential(nn.Linear(2 * (dim // 2), dim // 2, bias=False), nn.GELU(),
                                      nn.Linear(dim // 2, 1, bias=False), nn.Tanh())
        for linear in (self.in_conv[1], self.out_conv[0], self.out_conv[2]):
            nn.init.normal_(linear.weight, std=0.02)  # the official init_weights (initializer_range 0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (frames, N, D), class token first -> scores (frames, N)."""
        h = self.in_conv(tokens)
        joint = torch.cat([h, h[:, :1].expand_as(h)], dim=-1)
        return self.out_conv(joint).squeeze(-1)


def sample_slots(scores: Tensor, noise: Tensor, k: int, sigma: float) -> Tensor:
    """The top-k patch indices of every perturbed sample, sorted ascending: (frames, samples, k)."""
    perturbed = scores.unsqueeze(1) + sigma * noise
    return torch.topk(perturbed, k, dim=-1, sorted=False).indices.sort(dim=-1).values


def slot_means(slots: Tensor, values: Tensor, patches: int) -> Tensor:
    """out[f, j, p] = mean over samples n of values[f, n, j] where slots[f, n, j] == p: (frames, k, P)."""
    frames, samples, k = slots.shape
    out = values.new_zeros(frames, k, patches)
    return out.scatter_add_(2, slots.transpose(1, 2), values.transpose(1, 2)) / samples


class PerturbedTopK(torch.autograd.Function):
    """Indicators (frames, k, P) of the perturbed top-k of scores (frames, P) under noise (frames, samples,
    P), with the perturbed optimiser's gradient."""

    @staticmethod
    def forward(ctx, scores: Tensor, noise: Tensor, k: int, sigma: float) -> Tensor:
        slots = sample_slots(scores, noise, k, sigma)
        ctx.save_for_backward(slots, noise)
        ctx.sigma = sigma
        return slot_means(slots, torch.ones_like(slots, dtype=scores.dtype), scores.shape[-1])

    @staticmethod
    def backward(ctx, grad_indicator: Tensor):
        slots, noise = ctx.saved_tensors
        expected = slot_means(slots, noise.gather(2, slots), noise.shape[-1]) / ctx.sigma
        return (grad_indicator * expected).sum(dim=1), None, None, None


def perturbed_indicator(scores: Tensor, noise: Tensor, k: int, sigma: float) -> Tensor:
    return PerturbedTopK.apply(scores, noise, k, sigma)


def hard_indicator(scores: Tensor, k: int) -> Tensor:
    """One-hot indicators (frames, k, P) of the top-k patches, slots in ascending patch order."""
    slots = torch.topk(scores, k, dim=-1, sorted=False).indices.sort(dim=-1).values
    return torch.zeros(*slots.shape, scores.shape[-1], dtype=scores.dtype, device=scores.device).scatter_(
        2, slots.unsqueeze(-1), 1.0)


def select_tokens(tokens: Tensor, indicator: Tensor) -> Tensor:
    """tokens (frames, N, D) with the class token first, indicator (frames, k, N - 1) -> (frames, 1 + k, D):
    the class token, then each slot's combination of the patch tokens."""
    selected = torch.einsum("fkp,fpd->fkd", indicator, tokens[:, 1:])
    return torch.cat([tokens[:, :1], selected], dim=1)
