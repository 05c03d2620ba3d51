"""CLIP4Clip's sequential heads: frames pass through a temporal module (with a residual) before meanP.

- seqLSTM: F' = LSTM(F) + F, one layer, hidden D, packed by each video's valid length.
- seqTransf: F' = Transformer(F + P_pos) + F, CLIP residual-attention blocks initialised from the
  backbone's first text blocks, P_pos from its text positional embedding, padded frames masked as keys
  with -1e6 (as the official code does).
Both are per-video work: the per-pair score stays meanP's D multiply-adds.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from baselines.clip4clip.meanp import MeanP, mean_pooled_video
from harness.api import Features, temporal_transformer, text_blocks, text_positions


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
