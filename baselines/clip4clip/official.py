"""Import a state dict saved by the official CLIP4Clip code into a harness CLIP4Clip head, strictly.

Key map: `clip.*` -> the backbone (text positions sliced to the suite's word count);
`lstm_visual.*` -> seqLSTM's LSTM; `transformerClip.resblocks.*` -> seqTransf's blocks;
`frame_position_embeddings.weight` -> seqTransf's frame positions; `cross.*` and `similarity_dense.*` ->
tightTransf's cross-encoder. The official model creates the frame
position embedding for every head; heads that never use it (meanP, seqLSTM) skip it on purpose. Any
other key, a missing key or a shape mismatch is an error naming the keys.

Each head owns its part of the map (`MeanP.official_prefixes` and `official_unused`, overridden by the
other heads), so this module imports no head and the heads import it.
"""

from __future__ import annotations

from torch import Tensor

from harness.api import Method, load_official_mapped


def load_official_clip4clip(method: Method, state: dict[str, Tensor], source: str = "CLIP4Clip checkpoint") -> None:
    load_official_mapped(method, state, method.official_prefixes, source, skip=method.official_unused)
