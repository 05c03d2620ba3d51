"""CLIP-ViP's video encoder: one ViT pass over the whole video with video proxy tokens and proxy-guided attention.

Tokens (M = 1 + proxies; T frames of L patches): [CLS + pos_0, proxy_1..proxy_{M-1} + pos_0, then for each frame
t its patches + e_t + pos_{1..L}], ln_pre on all M + T L of them. e (temporal_size x w, zero-initialised) is
linearly interpolated over time (as F.interpolate, align_corners=False) when T differs from its length.
Proxy-guided attention, in every block (CLIP's weights and scaling): a patch of frame t attends to the M proxies
and the L patches of its own frame; the M proxies attend to every token. Nothing else is masked.
The video feature is proj(ln_post(token 0)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def repeat_last_real_frame(frames: Tensor, frame_mask: Tensor) -> Tensor:
    """frames (B, T, 3, H, W) with padded frames where frame_mask (B, T) is false -> each padded frame replaced
    by the video's last real frame, as the official loader pads a short video."""
    positions = torch.arange(frames.shape[1], device=frames.device)
    last = (frame_mask.long() * positions).argmax(dim=1)
    filler = frames[torch.arange(frames.shape[0], device=frames.device), last]
    return torch.where(frame_mask[..., None, None, None], frames, filler[:, None])


def temporal_embedding_for(embedding: Tensor, frames: int) -> Tensor:
    """(1, S, w) -> (1, frames, w): itself, or linearly interpolated over time as F.interpolate(mode="linear",
    align_corners=False) does: output t samples the source at (t + 1/2) S / frames - 1/2, clamped at 0. Written
    out elementwise (torch's upsample_linear1d is an operator the cost counters refuse by name)."""
    size = embedding.shape[1]
    if size == frames:
        return embedding
    source = ((torch.arange(frames, device=embedding.device, dtype=torch.float32) + 0.5) * (size / frames)
              - 0.5).clamp(min=0)
    low = source.long().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    weight = (source - low).to(embedding.dtype)[None, :, None]
    return embedding[:, low] * (1 - weight) + embedding[:, high] * weight


def video_tokens(backbone, frames: Tensor, proxies: Tensor, temporal: Tensor) -> Tensor:
    """frames (B, T, 3, H, W) -> (B, M + T L, w), the input of the first block. Built from the visual tower's
    parts (conv1, class embedding, positions, ln_pre): the temporal embedding enters before ln_pre."""
    visual = backbone.clip.visual
    batch, count = frames.shape[:2]
    patches = visual.conv1(frames.flatten(0, 1)).flatten(2).transpose(1, 2)
    patches = patches.reshape(batch, count, patches.shape[1], patches.shape[2])
    positions = visual.positional_embedding.to(patches.dtype)
    patches = patches + temporal_embedding_for(temporal, count).unsqueeze(2) + positions[1:]
    cls = (visual.class_embedding + positions[0]).expand(batch, 1, -1)
    added = (proxies + positions[0]).expand(batch, -1, -1)
    return visual.ln_pre(torch.cat([cls, added, patches.flatten(1, 2)], dim=1))


def proxy_attention_mask(proxies: int, frames: int, patches: int, dtype: torch.dtype, device) -> Tensor:
    """The additive (M + T L)^2 mask of proxy-guided attention: 0 where a query may attend, -inf elsewhere.
    (Additive, not bool: open_clip's block casts a mask to the activations' dtype.)"""
    frame_of = torch.cat([torch.full((proxies,), -1, device=device),
                          torch.arange(frames, device=device).repeat_interleave(patches)])
    allowed = (frame_of[:, None] == frame_of[None, :]) | (frame_of[:, None] < 0) | (frame_of[None, :] < 0)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, -torch.inf)


def proxy_guided_attention(attention: nn.MultiheadAttention, h: Tensor, proxies: int, frames: int) -> Tensor:
    """The same attention computed block by block, as the official code does (per frame: its patches against
    the proxies and its own patches; the proxies against everything), without the masked-out products.
    h (B, M + T L, w), batch first."""
    batch, tokens, width = h.shape
    heads = attention.num_heads
    patches = (tokens - proxies) // frames
    q, k, v = (part.reshape(batch, tokens, heads, width // heads).transpose(1, 2)
               for part in F.linear(h, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1))

    def per_frame(x: Tensor) -> Tensor:  # (B, heads, tokens, d) -> (B heads, T, M + L, d)
        shared = x[:, :, :proxies].unsqueeze(2).expand(-1, -1, frames, -1, -1)
        own = x[:, :, proxies:].reshape(batch, heads, frames, patches, -1)
        return torch.cat([shared, own], dim=3).flatten(0, 1)

    frame_queries = q[:, :, proxies:].reshape(batch * heads, frames, patches, -1)
    frame_out = F.scaled_dot_product_attention(frame_queries, per_frame(k), per_frame(v))
    proxy_out = F.scaled_dot_product_attention(q[:, :, :proxies], k, v)
    out = torch.cat([proxy_out, frame_out.reshape(batch, heads, frames * patches, -1)], dim=2)
    return attention.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


def proxy_guided_block(block: nn.Module, x: Tensor, proxies: int, frames: int) -> Tensor:
    """One residual-attention block of the backbone, run from its parts with proxy_guided_attention."""
    x = x + block.ls_1(proxy_guided_attention(block.attn, block.ln_1(x), proxies, frames))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
