"""Import a state dict saved by the official CLIP4Clip code into a harness CLIP4Clip head, strictly.

Key map: `clip.*` -> the backbone (text positions sliced to the suite's word count);
`lstm_visual.*` -> seqLSTM's LSTM; `transformerClip.resblocks.*` -> seqTransf's blocks;
`frame_position_embeddings.weight` -> seqTransf's frame positions; `cross.*` and `similarity_dense.*` ->
tightTransf's cross-encoder. The official model creates the frame
position embedding for every head; heads that never use it (meanP, seqLSTM) skip it on purpose. Any
other key, a missing key or a shape mismatch is an error naming the keys.
"""

from __future__ import annotations

from torch import Tensor

from baselines.clip4clip.meanp import MeanP
from baselines.clip4clip.sequential import SeqLSTM, SeqTransf
from baselines.clip4clip.tight import TightTransf
from harness.checkpoints import load_official_mapped

UNUSED_BY = {MeanP: ("frame_position_embeddings.weight",), SeqLSTM: ("frame_position_embeddings.weight",)}
HEAD_PREFIXES = {SeqLSTM: {"lstm_visual.": "lstm_visual."},
                 SeqTransf: {"transformerClip.": "", "frame_position_embeddings.": "frame_position_embeddings."},
                 TightTransf: {"cross.embeddings.position_embeddings.": "position_embeddings.", "cross.transformer.": "",
                               "cross.pooler.": "", "similarity_dense.": "similarity_dense."}}


def load_official_clip4clip(method: MeanP, state: dict[str, Tensor], source: str = "CLIP4Clip checkpoint") -> None:
    load_official_mapped(method, state, HEAD_PREFIXES.get(type(method), {}), source,
                         skip=UNUSED_BY.get(type(method), ()))
