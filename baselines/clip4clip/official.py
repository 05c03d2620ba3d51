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
from harness.backbone import load_weights_strictly
from harness.errors import CheckpointError

UNUSED_BY = {MeanP: ("frame_position_embeddings.weight",), SeqLSTM: ("frame_position_embeddings.weight",)}
HEAD_PREFIXES = {SeqLSTM: {"lstm_visual.": "lstm_visual."},
                 SeqTransf: {"transformerClip.": "", "frame_position_embeddings.": "frame_position_embeddings."},
                 TightTransf: {"cross.embeddings.position_embeddings.": "position_embeddings.", "cross.transformer.": "",
                               "cross.pooler.": "", "similarity_dense.": "similarity_dense."}}


def load_official_clip4clip(method: MeanP, state: dict[str, Tensor], source: str = "CLIP4Clip checkpoint") -> None:
    method.backbone.load_prefixed(state, "clip.", source)
    skipped = UNUSED_BY.get(type(method), ())
    prefixes = HEAD_PREFIXES.get(type(method), {})
    head, unknown = {}, []
    for key, value in state.items():
        if key.startswith("clip.") or key in skipped:
            continue
        for old, new in prefixes.items():
            if key.startswith(old):
                head[new + key[len(old):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys unknown to {method.name}: {', '.join(sorted(unknown)[:8])}.")
    backbone = {k: v for k, v in method.state_dict().items() if k.startswith("backbone.")}
    load_weights_strictly(method, {**backbone, **head}, f"{source} (head)")
