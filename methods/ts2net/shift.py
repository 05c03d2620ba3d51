"""TS2-Net's token shift inside the visual transformer, run from a block's public parts.

In a shifted block the attention sub-layer reads the tokens of neighbouring frames of the same video:
with u = ln_1(x) viewed as (videos, T, N, width),

    shift(u)[:, t, p] = u[:, t - 1, p]   for p in 1, 1 + fold, 1 + 2 fold, ...   (t >= 1; frame 0 keeps its own)
    shift(u)[:, t, p] = u[:, t + 1, p]   for p in 4, 4 + fold, 4 + 2 fold, ...   (t <= T - 2; the last keeps its own)
    shift(u)[:, t, p] = u[:, t, p]       elsewhere (the class token at p = 0 always)

whole tokens (every channel) move; where the two position sets meet, the token of frame t + 1 wins (the
official code writes it second). The block is then

    x = x + ls_1(MHA(shift(u), shift(u), shift(u)))      the residual adds to the unshifted x
    x = x + ls_2(mlp(ln_2(x)))

fold = max(1, N // n_div) with n_div = 7: 7 at ViT-B/32's 50 tokens ({1, 8, ..., 43} and {4, 11, ..., 46}),
28 at ViT-B/16's 197, 2 at 17 tokens ({1, 3, ..., 15} and {4, 6, ..., 16}), 1 below 14 tokens (every patch
from t - 1, those from position 4 on overwritten from t + 1); below 7 tokens, where the official
`tokens // 7` is 0 and its arange fails, fold 1 is this port's extension. The shift has no parameters and
no MACs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# The official code starts the positions that take frame t + 1's token at 1 + 3, a constant.
FORWARD_START = 4
BACKWARD_START = 1


def shift_fold(tokens: int, n_div: int) -> int:
    """The step between shifted positions: tokens // n_div as officially, at least 1."""
    return max(1, tokens // n_div)


def shift_positions(tokens: int, n_div: int) -> tuple[Tensor, Tensor]:
    """The token positions that take frame t - 1's token and those that take frame t + 1's."""
    fold = shift_fold(tokens, n_div)
    return torch.arange(BACKWARD_START, tokens, fold), torch.arange(FORWARD_START, tokens, fold)


def shift_tokens(x: Tensor, from_previous: Tensor, from_next: Tensor) -> Tensor:
    """x (videos, T, N, width) -> the shifted copy (see the module docstring); x itself is unchanged."""
    shifted = x.clone()
    shifted[:, 1:, from_previous] = x[:, :-1, from_previous]
    shifted[:, :-1, from_next] = x[:, 1:, from_next]
    return shifted


def self_attention(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """MHA(x, x, x) on batch-first x (sequences, tokens, width), whichever layout the module takes."""
    if attn.batch_first:
        return attn(x, x, x, need_weights=False)[0]
    x = x.transpose(0, 1)
    return attn(x, x, x, need_weights=False)[0].transpose(0, 1)


def shifted_block(block: nn.Module, x: Tensor, frames: int, from_previous: Tensor, from_next: Tensor) -> Tensor:
    """One residual-attention block (open_clip's ln_1, attn, ls_1, ln_2, mlp, ls_2) with the token shift on
    its attention input. x (videos * frames, N, width), batch-first, the frames of one video contiguous."""
    attended = block.ln_1(x)
    attended = shift_tokens(attended.view(-1, frames, *attended.shape[1:]), from_previous, from_next)
    x = x + block.ls_1(self_attention(block.attn, attended.flatten(0, 1)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
