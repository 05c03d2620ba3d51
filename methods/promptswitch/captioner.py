"""Prompt Switch's captioning branch (training only): a transformer decoder over the frame features that
predicts each caption's next token.

- Memory: the video's un-normalised frame features f (T x D), no mask, no positions.
- Input: the caption's ids without the last position, embedded by CLIP's token and position embeddings without
  gradient, then a LayerNorm; a causal target mask only.
- Decoder: nn.TransformerDecoder, post-LN, ReLU, dropout 0, a final LayerNorm; width, heads and feed-forward
  width are the text tower's (the official code reads them from the text config).
- Head: Linear(width -> vocabulary), initialised as a copy of the token-embedding matrix, bias 0.
- Loss: weight x sum_i w_{y_i} nll_i / sum_i w_{y_i} (torch's class-weighted mean) over the input positions
  whose token is not EOT (the official tokenizer pads with EOT: the EOT and every pad are left out); w = 0.25 for
  19 frequent tokens, 1 elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# CLIP BPE ids of the frequent words the official loss down-weights ("in on of to about this that a an the and
# there here is are . ,"); SOT and EOT, the other two, are the vocabulary's last two ids.
FREQUENT_WORD_IDS = {"in": 530, "on": 525, "of": 539, "to": 531, "about": 781, "this": 589, "that": 682, "a": 320,
                     "an": 550, "the": 518, "and": 537, "there": 997, "here": 763, "is": 533, "are": 631, ".": 269,
                     ",": 267}


def class_weights(vocabulary: int, frequent_weight: float) -> Tensor:
    """(vocabulary,): frequent_weight on the frequent words, SOT and EOT; 1 elsewhere."""
    weights = torch.ones(vocabulary)
    ids = [i for i in FREQUENT_WORD_IDS.values() if i < vocabulary - 2] + [vocabulary - 2, vocabulary - 1]
    weights[ids] = frequent_weight
    return weights


def official_padding(tokens: Tensor, token_mask: Tensor) -> Tensor:
    """Ids padded with each caption's EOT (its largest id), as the official tokenizer pads, instead of zeros."""
    eot = tokens.max(dim=1, keepdim=True).values
    return torch.where(token_mask, tokens, eot)


class Captioner(nn.Module):
    def __init__(self, backbone, layers: int):
        super().__init__()
        block = backbone.text_blocks[0]
        width = backbone.clip.token_embedding.embedding_dim
        self.prenorm = nn.LayerNorm(width)
        layer = nn.TransformerDecoderLayer(width, block.attn.num_heads, block.mlp.c_fc.out_features, dropout=0.0,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(width))
        self.head = nn.Linear(width, backbone.clip.token_embedding.num_embeddings)
        with torch.no_grad():
            self.head.weight.copy_(backbone.clip.token_embedding.weight)
            self.head.bias.zero_()

    def forward(self, backbone, frames: Tensor, ids: Tensor) -> Tensor:
        """frames (B, T, D) un-normalised, ids (B, L) EOT-padded -> next-token logits (B, L - 1, vocabulary)."""
        return self.head(self.decode(backbone, frames, ids[:, :-1]))

    def decode(self, backbone, frames: Tensor, inputs: Tensor) -> Tensor:
        """The decoder's output (B, L', width) at every input position."""
        with torch.no_grad():
            embedded = backbone.text_embeddings(inputs)
        causal = nn.Transformer.generate_square_subsequent_mask(inputs.shape[1], device=inputs.device,
                                                                dtype=embedded.dtype)
        return self.decoder(self.prenorm(embedded), frames, tgt_mask=causal)

    def loss(self, backbone, frames: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
        """Class-weighted next-token cross-entropy at the input positions whose token is not EOT (before the
        branch's weight): the official loss on forward()'s logits at those positions. Those positions are a prefix
        of each caption (the pads follow its EOT) and the decoder is causal, so it decodes up to the longest
        prefix only and projects onto the vocabulary only the kept positions: the same values, and a
        vocabulary-sized head (49,408 ids) that is most of the branch's cost is paid once per real token."""
        eot = ids.max(dim=1, keepdim=True).values
        keep = ids[:, :-1] != eot
        length = int(keep.sum(dim=1).max())
        decoded = self.decode(backbone, frames, ids[:, :length])
        kept = keep[:, :length]
        return F.cross_entropy(self.head(decoded[kept]), ids[:, 1 : length + 1][kept], weight=weights.to(decoded.dtype))
