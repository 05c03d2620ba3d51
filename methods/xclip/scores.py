"""X-CLIP's four scores (official code xuguohai/X-CLIP, `_loose_similarity` and
`_attenion_over_fine_grained_sim_matrix`), without the logit scale.

Inputs, all unit vectors except the two projections: the sentence t^ (n_t, D) and its projection t^ W_g,
the words w^ (n_t, L, D) at every token position and their projection w^ W_l, the video v (n_v, D) and
the raw CLIP frames f^ (n_v, T, D), padded positions included. Attention over a similarity matrix (AOSM),
along one axis of a similarity tensor x with an identity-initialised matrix M:
    aosm(x) = sum_i x_i [softmax_i(x / tau) @ M]_i                               (tau = 0.01)
The scores of text a and video b:
    S_vs = (t^ W_g) . v
    S_vw = aosm over words of x_l = w^_l . v                                     (M_wl, L x L)
    S_sf = aosm over frames of y_f = t^ . f^_f                                   (M_fl, T x T)
    A_lf = (w^_l W_l) . f^_f                                                     (the fine matrix, L x T)
    u_f = aosm over words of A_.f (M_w),   r_l = aosm over frames of A_l. (M_f)
    S_fw = (aosm over frames of u (M_f2) + aosm over words of r (M_w2)) / 2
Similarity tensors keep the videos last, (n_t, L, T, n_v), so that every softmax and sum runs along an
axis with the videos contiguous inside it. Every product is a matrix product whose left operand carries
the batch (both cost counters count it), and the weighted sums are element-wise (no multiply-adds in
either convention), so the count per pair is D (1 + L + T + L T) + 2 L^2 + 2 T^2 + T L^2 + L T^2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The official parameter names of the learnable score matrices, by the size they are built for.
EMBED_MATRICES = ("global_mat_weight", "local_mat_weight")  # D x D
WORD_MATRICES = ("word_logit_weight", "word_mat_weight", "word_mat_weight2")  # L x L
FRAME_MATRICES = ("frame_logit_weight", "frame_mat_weight", "frame_mat_weight2")  # T x T
SCORES = ("video_sentence", "video_word", "sentence_frame", "frame_word")  # the official order


def aosm(x: Tensor, weight: Tensor, dim: int, temperature: float, scaled: Tensor | None = None) -> Tensor:
    """sum over `dim` of x * [softmax_dim(x / tau) @ W], W (K, K) applied along `dim` (row vector times W);
    `scaled`: x / tau when the caller has it already."""
    scaled = x / temperature if scaled is None else scaled
    rows, size = math.prod(x.shape[:dim]), x.shape[dim]
    attention = torch.softmax(scaled, dim=dim).reshape(rows, size, -1)
    # [p @ W] along `dim` = W^T p, one (K, K) x (K, rest) product per leading index
    attention = torch.matmul(weight.t().expand(rows, size, size), attention).view(x.shape)
    return (x * attention).sum(dim=dim)


def frames_by_position(frames: Tensor) -> Tensor:
    """f^ (n_v, T, D) -> (D, T n_v): the right operand whose products come out frames first, videos last."""
    return frames.transpose(0, 1).reshape(-1, frames.shape[-1]).t()


def fine_grained(words_local: Tensor, frames: Tensor, weights: dict[str, Tensor],
                 temperature: float) -> dict[str, Tensor]:
    """words_local w^ W_l (n_t, L, D), frames f^ (n_v, T, D) -> the frame-word score `frame_word` and its
    intermediates under the official names and layouts: `fine_sim` A (n_t, L, n_v, T), `fine_word_level`
    u (n_t, n_v, T), `fine_frame_level` r (n_t, L, n_v), `fine_sent2frame` and `fine_video2word` (n_t, n_v)."""
    (n_t, length, dim), (n_v, count, _) = words_local.shape, frames.shape
    fine = (words_local.reshape(-1, dim) @ frames_by_position(frames)).view(n_t, length, count, n_v)
    scaled = fine / temperature  # one division for both softmaxes
    word_level = aosm(fine, weights["word_mat_weight"], 1, temperature, scaled)  # (n_t, T, n_v)
    frame_level = aosm(fine, weights["frame_mat_weight"], 2, temperature, scaled)  # (n_t, L, n_v)
    sent2frame = aosm(word_level, weights["frame_mat_weight2"], 1, temperature)
    video2word = aosm(frame_level, weights["word_mat_weight2"], 1, temperature)
    return {"fine_sim": fine.transpose(2, 3), "fine_word_level": word_level.transpose(1, 2),
            "fine_frame_level": frame_level, "fine_sent2frame": sent2frame, "fine_video2word": video2word,
            "frame_word": (sent2frame + video2word) / 2}


def four_scores(text: dict[str, Tensor], video: dict[str, Tensor], weights: dict[str, Tensor],
                temperature: float) -> dict[str, Tensor]:
    """The four (n_t, n_v) scores (SCORES) from the text features (`sentence`, `words`, `sentence_global`,
    `words_local`) and the video features (`video`, `frames`)."""
    (n_v, count, _), n_t = video["frames"].shape, text["sentence"].shape[0]
    video_word = text["words"] @ video["video"].t()  # x (n_t, L, n_v)
    sentence_frame = (text["sentence"] @ frames_by_position(video["frames"])).view(n_t, count, n_v)  # y
    return {
        "video_sentence": text["sentence_global"] @ video["video"].t(),
        "video_word": aosm(video_word, weights["word_logit_weight"], 1, temperature),
        "sentence_frame": aosm(sentence_frame, weights["frame_logit_weight"], 1, temperature),
        "frame_word": fine_grained(text["words_local"], video["frames"], weights, temperature)["frame_word"],
    }
