"""EERCF's score functions (official code: adxcreative/EERCF, `_loose_similarity`).

Inputs are unit vectors: t (n_t, D) sentences; f (n_v, T, D) raw CLIP frame features; u (n_v, T, D)
seqTransf frames; p (n_v, T * N, D) patch tokens. Every score is (n_t, n_v) and carries no logit
scale (the method multiplies by it). As in the official code, no frame mask enters these scores: padded
frames (zero pixels) take part like real ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SHARP = 0.01  # softmax temperature of the weak scores
GATE = 0.1  # softmax temperature of the text-gated block over frames


def frame_softmax(x: Tensor) -> Tensor:
    """softmax over the last dimension, the T frames, written out (shift by the maximum, exponentiate,
    normalise): torch's CPU kernel is several times slower over a last dimension shorter than its vector
    width, as T (6 to 12) is; the shift is a constant to autograd, as in softmax."""
    shifted = (x - x.amax(dim=-1, keepdim=True).detach()).exp()
    return shifted / shifted.sum(dim=-1, keepdim=True)


def weak_frame(t: Tensor, f: Tensor, frame_weight: Tensor) -> Tensor:
    """sum_f c_f [softmax_f(c / 0.01) W_f]_f with c_f = <t, f_f>; W_f (T, T), identity at initialisation."""
    c = torch.einsum("ad,bfd->abf", t, f)
    return (c * (frame_softmax(c / SHARP) @ frame_weight)).sum(dim=-1)


def weak_patch(t: Tensor, p: Tensor) -> Tensor:
    """sum_p c_p softmax_p(c / 0.01) over all T x N patches, c_p = <t, p_p>."""
    c = torch.einsum("ad,bpd->abp", t, p)
    return (c * (c / SHARP).softmax(dim=-1)).sum(dim=-1)


def strong_frame(t: Tensor, f: Tensor, u: Tensor) -> Tensor:
    """Text-gated block at test time: the query text gates each video's frames,
    g = softmax_f(<t, f_f> / 0.1), and s = <t, normalise(sum_f g_f u_f)>."""
    gate = frame_softmax(torch.einsum("ad,bfd->abf", t, f) / GATE)
    return torch.einsum("ad,abd->ab", t, F.normalize(torch.einsum("abf,bfd->abd", gate, u), dim=-1))


def strong_patch(t: Tensor, p: Tensor) -> Tensor:
    """The patch form of the text-gated block: g = softmax_p(<t, p_p> / 0.01), s = <t, normalise(sum g p)>."""
    gate = (torch.einsum("ad,bpd->abp", t, p) / SHARP).softmax(dim=-1)
    return torch.einsum("ad,abd->ab", t, F.normalize(torch.einsum("abp,bpd->abd", gate, p), dim=-1))


def own_caption_gated(t: Tensor, keys: Tensor, values: Tensor, temperature: float) -> Tensor:
    """Training form of the text-gated block: video b is gated once, by its own paired caption t_b
    (gate weights detached, as the official code does) -> (B, D) unit vectors."""
    gate = (torch.einsum("bd,bkd->bk", t, keys).detach() / temperature).softmax(dim=-1)
    return F.normalize(torch.einsum("bk,bkd->bd", gate, values), dim=-1)


def pearson_constraint(a: Tensor, b: Tensor, on_diagonal: float, off_diagonal: float) -> Tensor:
    """Standardise each dimension over the batch (unbiased std), C = Z_a^T Z_b / B (D x D);
    on_diagonal * sum_d (C_dd - 1)^2 + off_diagonal * sum_{d != e} C_de^2."""
    za = (a - a.mean(dim=0)) / a.std(dim=0)
    zb = (b - b.mean(dim=0)) / b.std(dim=0)
    c = za.t() @ zb / a.shape[0]
    on = (c.diagonal() - 1).pow(2).sum()
    off = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on_diagonal * on + off_diagonal * off
