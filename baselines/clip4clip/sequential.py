"""CLIP4Clip's sequential heads: frames pass through a temporal module (with a residual) before meanP.

- seqLSTM: F' = LSTM(F) + F, one layer, hidden D, packed by each video's valid length.
- seqTransf: F' = Transformer(F + P_pos) + F, CLIP residual-attention blocks initialised from the
  backbone's first text blocks, P_pos from its text positional embedding, padded frames masked as keys
  with -1e6 (as the official code does).
Both are per-video work: the per-pair score stays meanP's D multiply-adds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from baselines.clip4clip.meanp import MeanP, mean_pooled_video
from harness.errors import HarnessError
from harness.method import Features


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


# The official temporal and cross transformers (CLIP4Clip's module_cross, reused by DiCoSA and GLSCL)
# build their blocks with until_module's TF-style LayerNorm, eps 1e-12, not CLIP's 1e-5: a relative
# difference of about 1e-5 in every output.
OFFICIAL_HEAD_LAYER_NORM_EPS = 1e-12


def text_blocks(backbone, layers: int, method: str) -> nn.ModuleList:
    """Copies of the backbone's first `layers` text blocks (the official initialisation), with the
    official heads' LayerNorm epsilon."""
    blocks = backbone.clip.transformer.resblocks
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
    """seqTransf (CLIP4Clip, and the frame stage of GLSCL, EERCF and GLCCL): F' = Transformer(F + P_pos) + F,
    padded frames masked as keys."""
    if features.shape[1] > positions.num_embeddings:
        raise HarnessError(f"{method}: {features.shape[1]} frames, but frame_positions={positions.num_embeddings}.")
    x = features + positions.weight[: features.shape[1]]
    return run_blocks(blocks, x, frame_mask) + features


def text_positions(backbone, rows: int) -> nn.Embedding:
    """A position embedding of `rows` rows starting as the backbone's text positional embedding."""
    embedding = nn.Embedding(rows, backbone.embed_dim)
    nn.init.normal_(embedding.weight, std=0.02)
    source = backbone.clip.positional_embedding.detach()
    count = min(rows, source.shape[0])
    with torch.no_grad():
        embedding.weight[:count] = source[:count]
    return embedding


@dataclass
class SeqLSTMParams:
    """One LSTM layer with hidden size equal to the embedding width (the official configuration)."""


class SeqLSTM(MeanP):
    """CLIP4Clip seqLSTM: an LSTM over valid frames with a residual, then meanP."""

    name = "clip4clip-seqlstm"
    Params = SeqLSTMParams
    official_prefixes = {"lstm_visual.": "lstm_visual."}  # the frame position embedding stays unused

    def __init__(self, backbone, params: SeqLSTMParams):
        super().__init__(backbone, params)
        dim = backbone.embed_dim
        self.lstm_visual = nn.LSTM(dim, dim, num_layers=1, batch_first=True)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        features = self.backbone.encode_frames(frames)
        lengths = frame_mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
        temporal, _ = pad_packed_sequence(self.lstm_visual(packed)[0], batch_first=True,
                                          total_length=features.shape[1])
        return {"video": mean_pooled_video(temporal + features, frame_mask)}


@dataclass
class SeqTransfParams:
    layers: int = 4  # initialised from the backbone's first text blocks
    frame_positions: int = 77  # rows of the frame position embedding (CLIP's text context length)


class SeqTransf(MeanP):
    """CLIP4Clip seqTransf: a CLIP transformer over frames with position embeddings, residual, meanP."""

    name = "clip4clip-seqtransf"
    reported_as = "CLIP4Clip"
    Params = SeqTransfParams
    official_prefixes = {"transformerClip.": "", "frame_position_embeddings.": "frame_position_embeddings."}
    official_unused = ()

    def __init__(self, backbone, params: SeqTransfParams):
        super().__init__(backbone, params)
        self.resblocks = text_blocks(backbone, params.layers, self.name)
        self.frame_position_embeddings = text_positions(backbone, params.frame_positions)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        temporal = temporal_transformer(self.resblocks, self.frame_position_embeddings,
                                        self.backbone.encode_frames(frames), frame_mask, self.name)
        return {"video": mean_pooled_video(temporal, frame_mask)}
