"""Captions -> CLIP BPE token ids: [SOT] + tokens[:L-2] + [EOT], zero-padded to L, with a mask."""

from __future__ import annotations

from functools import cache, lru_cache

import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor


@cache
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


@lru_cache(maxsize=1 << 16)
def _encoded(caption: str) -> tuple[int, ...]:
    """The BPE ids of one caption (cached: training draws the same captions epoch after epoch)."""
    return tuple(_tokenizer().encode(caption))


def tokenize(captions: list[str], length: int) -> tuple[Tensor, Tensor]:
    """ids (N, L) int64 and mask (N, L) bool marking SOT through EOT."""
    tokenizer = _tokenizer()
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    ids = torch.zeros(len(captions), length, dtype=torch.long)
    for row, caption in enumerate(captions):
        tokens = [sot, *_encoded(caption)[: length - 2], eot]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids, ids != 0


def vocabulary_size() -> int:
    return len(_tokenizer().encoder)
