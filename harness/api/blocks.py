"""Head building blocks shared by methods: the temporal transformer over frames (CLIP4Clip's seqTransf,
the frame stage of GLSCL, EERCF, GLCCL, X-CLIP, DiCoSA, ...), copies of the backbone's text blocks and
positions to initialise it from, and scoring chunked over videos under a pair budget.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from harness.api.method import Features
from harness.errors import HarnessError

# The official temporal and cross transformers (CLIP4Clip's module_cross, reused by DiCoSA and GLSCL)
# build their blocks with until_module's TF-style LayerNorm, eps 1e-12, not CLIP's 1e-5: a relative
# difference of about 1e-5 in every output.
OFFICIAL_HEAD_LAYER_NORM_EPS = 1e-12


def run_blocks(blocks: nn.ModuleList, x: Tensor, mask: Tensor) -> Tensor:
    """CLIP residual-attention blocks over x (B, L, D); positions where mask (B, L) is false are masked
    as keys with -1e6, as the official code does."""
    heads = blocks[0].attn.num_heads
    length = x.shape[1]
    key_mask = (1.0 - mask.to(x.dtype)).unsqueeze(1).expand(-1, length, -1) * -1e6
    attn_mask = key_mask.repeat_interleave(heads, dim=0)  # (B * heads, L, L), batch-major as torch expects
    for block in blocks:
        x = block(x, attn_mask=attn_mask)
    return x


def text_blocks(backbone, layers: int, method: str) -> nn.ModuleList:
    """Copies of the backbone's first `layers` text blocks (the official initialisation), with the
    official heads' LayerNorm epsilon."""
    blocks = backbone.text_blocks
    if layers > len(blocks):
        raise HarnessError(f"{method}: layers={layers}, but the backbone's text transformer has {len(blocks)} "
                           "blocks to initialise from; set the method's params.layers.")
    copies = nn.ModuleList(copy.deepcopy(blocks[i]) for i in range(layers))
    for module in copies.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = OFFICIAL_HEAD_LAYER_NORM_EPS
    return copies


def temporal_transformer(blocks: nn.ModuleList, positions: nn.Embedding, features: Tensor, frame_mask: Tensor,
                         method: str) -> Tensor:
    """seqTransf: F' = Transformer(F + P_pos) + F, padded frames masked as keys."""
    if features.shape[1] > positions.num_embeddings:
        raise HarnessError(f"{method}: {features.shape[1]} frames, but frame_positions={positions.num_embeddings}.")
    x = features + positions.weight[: features.shape[1]]
    return run_blocks(blocks, x, frame_mask) + features


def text_positions(backbone, rows: int) -> nn.Embedding:
    """A position embedding of `rows` rows starting as the backbone's text positional embedding: every position
    of the CLIP checkpoint (77 for OpenAI's), not only the suite's words; rows beyond them drawn at random."""
    embedding = nn.Embedding(rows, backbone.embed_dim)
    nn.init.normal_(embedding.weight, std=0.02)
    clip = backbone.clip
    source = getattr(clip, "checkpoint_positional_embedding", clip.positional_embedding).detach()
    count = min(rows, source.shape[0])
    with torch.no_grad():
        embedding.weight[:count] = source[:count]
    return embedding


def over_video_chunks(score: Callable[[Features], Tensor | dict[str, Tensor]], video: Features,
                      elements_per_video: int, budget: int) -> Tensor | dict[str, Tensor]:
    """`score` of consecutive parts of `video`, each small enough that `elements_per_video` x its videos
    stays within `budget` elements (a per-pair intermediate of that size is built), concatenated along the
    video dimension (dim 1). `score` returns a (n_text, part) tensor or a dict of them."""
    n_video = next(iter(video.values())).shape[0]
    block = max(1, budget // max(1, elements_per_video))
    parts = [score({name: value[start : start + block] for name, value in video.items()})
             for start in range(0, n_video, block)]
    if isinstance(parts[0], dict):
        return {name: torch.cat([part[name] for part in parts], dim=1) for name in parts[0]}
    return torch.cat(parts, dim=1)
