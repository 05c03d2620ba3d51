"""CLIP4Clip tightTransf: a cross-encoder over [t; F_1..F_T], scored per pair.

Sequence = [sentence feature, frame features] + position embeddings, dropout, CLIP residual-attention
blocks (initialised from the backbone's first text blocks; padded frames masked as keys with -1e6),
pooled = QuickGELU(dense(LN(h_0))), score = Linear(D -> 1). No logit scale. One transformer pass per
pair at test time: the most expensive head per pair.

The official attention mask is tiled over heads with `repeat`, which pairs masks with the wrong batch
items when there is more than one head; here it is laid out batch-major as PyTorch expects (identical
with one head, as in the golden test).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from baselines.clip4clip.meanp import MeanP
from harness.api import (OFFICIAL_HEAD_LAYER_NORM_EPS, Features, Method, run_blocks, symmetric_cross_entropy,
                         text_blocks, text_positions)


@dataclass
class TightTransfParams:
    layers: int = 4  # initialised from the backbone's first text blocks
    positions: int = 77  # rows of the position embedding (CLIP's text context length)
    dropout: float = 0.1  # on the embeddings (the cross config's hidden dropout)
    # Pair sequences encoded at once while scoring (1,024: on one core 1.7x faster than 4,096, whose activations
    # outgrow the caches).
    pair_chunk: int = 1024


class TightTransf(MeanP):
    """CLIP4Clip tightTransf: a cross-encoder over the sentence and frame features, one pass per pair."""

    name = "clip4clip-tighttransf"
    # A cross-encoder's output, trained as logits without a logit scale: neither a similarity nor one times the
    # logit scale, so no post-processing is defined for it (its rows are skipped, visibly).
    score_kind = None
    Params = TightTransfParams
    official_prefixes = {"cross.embeddings.position_embeddings.": "position_embeddings.", "cross.transformer.": "",
                         "cross.pooler.": "", "similarity_dense.": "similarity_dense."}
    official_unused = ()

    def __init__(self, backbone, params: TightTransfParams):
        super().__init__(backbone, params)
        dim = backbone.embed_dim
        self.resblocks = text_blocks(backbone, params.layers, self.name)
        self.position_embeddings = text_positions(backbone, params.positions)
        self.dropout = nn.Dropout(params.dropout)
        self.ln_pool = nn.LayerNorm(dim, eps=OFFICIAL_HEAD_LAYER_NORM_EPS)
        self.dense = nn.Linear(dim, dim)
        self.similarity_dense = nn.Linear(dim, 1)
        for linear in (self.dense, self.similarity_dense):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        return {"frames": self.backbone.encode_frames(frames), "frame_mask": frame_mask}

    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        sentence = self.backbone.encode_sentence(tokens)
        return {"text": sentence}

    def cross(self, text: Tensor, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """Aligned pairs: text (P, D), frames (P, T, D), frame_mask (P, T) -> (P,) scores."""
        x = torch.cat([text.unsqueeze(1), frames], dim=1)
        x = self.dropout(x + self.position_embeddings.weight[: x.shape[1]])
        mask = torch.cat([torch.ones_like(frame_mask[:, :1]), frame_mask], dim=1)
        hidden = run_blocks(self.resblocks, x, mask)
        pooled = self.dense(self.ln_pool(hidden)[:, 0])
        pooled = pooled * torch.sigmoid(1.702 * pooled)  # QuickGELU
        return self.similarity_dense(pooled).squeeze(-1)

    def score(self, text: Features, video: Features) -> Tensor:
        n_t, n_v = text["text"].shape[0], video["frames"].shape[0]
        pairs = torch.cartesian_prod(torch.arange(n_t), torch.arange(n_v)).to(text["text"].device)
        mask = video["frame_mask"]
        parts = [self.cross(text["text"][chunk[:, 0]], video["frames"][chunk[:, 1]], mask[chunk[:, 1]])
                 for chunk in pairs.split(self.params.pair_chunk)]
        return torch.cat(parts).view(n_t, n_v)

    inner_product = Method.inner_product  # a cross-encoder: its score is no inner product

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        main = symmetric_cross_entropy(self.score(text, video))  # no logit scale, as the official code
        return {"total": main, "contrastive": main}
