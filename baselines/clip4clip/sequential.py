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


@dataclass
class SeqLSTMParams:
    """One LSTM layer with hidden size equal to the embedding width (the official configuration)."""


class SeqLSTM(MeanP):
    """CLIP4Clip seqLSTM: an LSTM over valid frames with a residual, then meanP."""

    name = "clip4clip-seqlstm"
    Params = SeqLSTMParams

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
    Params = SeqTransfParams

    def __init__(self, backbone, params: SeqTransfParams):
        super().__init__(backbone, params)
        text_blocks = backbone.clip.transformer.resblocks
        if params.layers > len(text_blocks):
            raise HarnessError(f"clip4clip-seqtransf: layers={params.layers}, but the backbone's text transformer has "
                               f"{len(text_blocks)} blocks to initialise from; set the method's params.layers.")
        self.resblocks = nn.ModuleList(copy.deepcopy(text_blocks[i]) for i in range(params.layers))
        self.heads = text_blocks[0].attn.num_heads
        self.frame_position_embeddings = nn.Embedding(params.frame_positions, backbone.embed_dim)
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.02)
        text_positions = backbone.clip.positional_embedding.detach()
        rows = min(params.frame_positions, text_positions.shape[0])
        with torch.no_grad():
            self.frame_position_embeddings.weight[:rows] = text_positions[:rows]

    def temporal(self, features: Tensor, frame_mask: Tensor) -> Tensor:
        """F' = Transformer(F + P_pos) + F, padded frames masked as keys."""
        length = features.shape[1]
        x = features + self.frame_position_embeddings.weight[:length]
        key_mask = (1.0 - frame_mask.to(x.dtype)).unsqueeze(1).expand(-1, length, -1) * -1e6
        attn_mask = key_mask.repeat_interleave(self.heads, dim=0)
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x + features

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        features = self.backbone.encode_frames(frames)
        return {"video": mean_pooled_video(self.temporal(features, frame_mask), frame_mask)}
