"""GLCCL's Global-Local Interaction Module and its four X-CLIP-style scores (official code
JingXiaolun/GLCCL, `modules/modeling_glccl.py`, text-guided, attention interaction).

Per text a and video b (F'_b: seqTransf frames, raw; no frame mask, as the official code):
    V_ab   = normalise(sum_f softmax_f(<t_a, F'_bf> / 5) F'_bf)               text-guided video
    Phi_abl = normalise(sum_f softmax_f(<w_al, F'_bf> / 5) F'_bf)             one per word l (padding too)
Scores (each without the logit scale; identity-initialised learnable matrices, softmax temperature 0.01):
    S_vs = <t^ W_g, V>;  S_vw: V against every word;  S_sf: t^ against every Phi_l;
    S_fw: X-CLIP's two-level attention over M_tl = <w^_t W_l, Phi_l>.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GUIDE = 5.0  # softmax temperature of the text-guided aggregation
SHARP = 0.01  # softmax temperature of the score attention
# The learnable score matrices `four_scores` reads, under the official code's parameter names: D x D, and
# L x L (L: words per caption).
EMBED_MATRICES = ("global_mat_weight", "local_mat_weight")
WORD_MATRICES = ("word_logit_weight", "word_frame_logit_weight", "word_frame_mat_weight", "word_mat_weight",
                 "word_frame_mat_weight2", "word_mat_weight2")


def guided(queries: Tensor, frames: Tensor) -> Tensor:
    """queries (n_t, ..., D) raw, frames (n_v, T, D) raw -> (n_t, n_v, ..., D) unit vectors:
    sum_f softmax_f(<q, F'_f> / 5) F'_f for every query vector and video."""
    weights = (torch.einsum("a...d,bfd->ab...f", queries, frames) / GUIDE).softmax(dim=-1)
    return F.normalize(torch.einsum("ab...f,bfd->ab...d", weights, frames), dim=-1)


def attend(x: Tensor, weight: Tensor, dim: int) -> Tensor:
    """sum over `dim` of x * [softmax_dim(x / 0.01) W] (W applied along `dim`)."""
    attention = (x / SHARP).softmax(dim=dim).movedim(dim, -1) @ weight
    return (x * attention.movedim(-1, dim)).sum(dim=dim)


def four_scores(sentence: Tensor, words: Tensor, sentence_raw: Tensor, words_raw: Tensor, frames: Tensor,
                weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """sentence t^ (n_t, D) and words w^ (n_t, L, D) unit; their raw forms for the guidance; frames F'
    (n_v, T, D) raw -> the four (n_t, n_v) scores."""
    video = guided(sentence_raw, frames)  # (a, b, D)
    per_word = guided(words_raw, frames)  # (a, b, L, D)
    video_sentence = torch.einsum("ad,abd->ab", sentence @ weights["global_mat_weight"], video)
    video_word = attend(torch.einsum("abd,atd->abt", video, words), weights["word_logit_weight"], dim=-1)
    sentence_frame = attend(torch.einsum("ad,abld->abl", sentence, per_word), weights["word_frame_logit_weight"],
                            dim=-1)
    fine = torch.einsum("atd,abld->abtl", words @ weights["local_mat_weight"], per_word)  # (a, b, word t, Phi l)
    word_level = attend(fine, weights["word_mat_weight"], dim=2)  # over words t -> (a, b, l)
    frame_level = attend(fine, weights["word_frame_mat_weight"], dim=3)  # over Phi l -> (a, b, t)
    frame_word = 0.5 * (attend(word_level, weights["word_frame_mat_weight2"], dim=-1)
                        + attend(frame_level, weights["word_mat_weight2"], dim=-1))
    return {"video_sentence": video_sentence, "video_word": video_word, "sentence_frame": sentence_frame,
            "frame_word": frame_word}


def score_consistency(stacked: Tensor) -> Tensor:
    """The CSC loss on the stacked (4, B, B) training scores: unbiased variance over the four scores,
    mean of its diagonal / (sum of its off-diagonal / B^2)."""
    variance = stacked.var(dim=0)
    batch = variance.shape[0]
    off_diagonal = variance.sum() - variance.diagonal().sum()
    return variance.diagonal().mean() / (off_diagonal / batch**2)
