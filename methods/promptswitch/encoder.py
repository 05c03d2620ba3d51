"""Prompt Switch's visual encoder, run on the backbone's stages (frame_tokens, visual_blocks, pool_frames).

Notation: P prompts, F the training frame count (the group size), w the vision width. A video's frames are
split into groups of F consecutive frames (in the official order, see `official_frame_order`), each group
into F / P chunks of P frames.
- Tokens: frame i of a chunk gets the P prompt tokens cube[i] (cube: P x P x w) appended after ln_pre (no
  positions, no ln_pre): [CLS, patches, P prompts].
- Every block: h = ln_1(x); in each chunk the prompt block of h is transposed (the prompt at frame i, slot p
  becomes the one at frame p, slot i); x = x + Attn(h); x = x + MLP(ln_2(x)). The residual stream is not
  switched; attention is plain self-attention of each frame's tokens.
- Aggregation: c'_f = c_f + MHA(q = c_f, K = V = the F x P final prompt tokens of f's group), c_f the final CLS
  before ln_post; the frame feature is proj(ln_post(c'_f)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def repeat_last_real_frame(frames: Tensor, frame_mask: Tensor) -> Tensor:
    """frames (B, T, 3, H, W) with padded frames where frame_mask (B, T) is false -> each padded frame replaced
    by the video's last real frame, as the official loader pads a short video."""
    positions = torch.arange(frames.shape[1], device=frames.device)
    last = (frame_mask.long() * positions).argmax(dim=1)
    filler = frames[torch.arange(frames.shape[0], device=frames.device), last]
    return torch.where(frame_mask[..., None, None, None], frames, filler[:, None])


def extend_to_groups(frames: Tensor, group: int) -> Tensor:
    """(B, T, ...) -> (B, ceil(T / group) x group, ...), the last frame repeated (the official loader's padding)."""
    extra = -frames.shape[1] % group
    if not extra:
        return frames
    return torch.cat([frames, frames[:, -1:].expand(-1, extra, *frames.shape[2:])], dim=1)


def official_frame_order(frames: int, prompts: int) -> Tensor:
    """Indices that arrange time-ordered frames as the official loader does: the video split into P equal
    segments, chunk c taking one frame of each segment; the tensor is chunk-major, position c P + s holding
    frame c of segment s, i.e. time index s C + c (C = frames / P). 12 frames, P = 6: 0 2 4 6 8 10 1 3 5 7 9 11."""
    return torch.arange(frames).view(prompts, frames // prompts).t().flatten()


def training_selection(frames: int, prompts: int, train_frames: int) -> Tensor:
    """Positions (in the official order) of train_frames frames: for each of the F / P training chunks and each
    segment, a random one of the segment's frames, as the official 'rand' sampler picks a random frame of each
    segment for each chunk."""
    chunks = torch.randint(frames // prompts, (train_frames // prompts, prompts))
    return (chunks * prompts + torch.arange(prompts)).flatten()


def prompted_tokens(backbone, images: Tensor, cube: Tensor) -> Tensor:
    """images (N, 3, H, W), N a multiple of P -> (N, 1 + patches + P, w): frame n gets cube[n mod P]."""
    tokens = backbone.frame_tokens(images)
    prompts = cube.to(tokens.dtype).repeat(images.shape[0] // cube.shape[0], 1, 1)
    return torch.cat([tokens, prompts], dim=1)


def switch_prompts(h: Tensor, prompts: int) -> Tensor:
    """(N, L + P, w) -> the same with each chunk's P x P prompt block transposed (frame <-> slot)."""
    count, length, width = h.shape
    chunks = h.reshape(count // prompts, prompts, length, width)
    tokens, block = chunks[:, :, : length - prompts], chunks[:, :, length - prompts :]
    return torch.cat([tokens, block.transpose(1, 2)], dim=2).reshape(count, length, width)


def self_attention(attention: nn.MultiheadAttention, h: Tensor, batch_first: bool) -> Tensor:
    """Plain self-attention of each sequence of h (N, L, w), without a mask."""
    h = h if batch_first else h.transpose(0, 1)
    out = attention(h, h, h, need_weights=False)[0]
    return out if batch_first else out.transpose(0, 1)


def switched_block(block: nn.Module, x: Tensor, prompts: int, batch_first: bool) -> Tensor:
    """One residual-attention block of the backbone, run from its parts, with the switch at the attention input."""
    h = switch_prompts(block.ln_1(x), prompts)
    x = x + block.ls_1(self_attention(block.attn, h, batch_first))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def aggregate(attention: nn.MultiheadAttention, last: Tensor, group: int, prompts: int) -> Tensor:
    """The last block's output (N, L + P, w) -> (N, w): each frame's CLS plus the attention of it over the
    group's F x P final prompt tokens (before ln_post)."""
    width = last.shape[-1]
    cls = last[:, 0].reshape(-1, group, width)
    keys = last[:, -prompts:].reshape(-1, group * prompts, width)
    return (cls + attention(cls, keys, keys, need_weights=False)[0]).reshape(-1, width)
