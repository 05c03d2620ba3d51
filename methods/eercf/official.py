"""Import a state dict saved by the official EERCF code (released checkpoints) into the harness's EERCF.

Key map, strict (every tensor used, shapes equal, unknown and missing keys named):
    clip.*                          -> the backbone (text positions sliced to the suite's word count)
    transformerClip.resblocks.*     -> seqTransf blocks
    frame_position_embeddings.*     -> seqTransf frame positions
    global_mat_weight               -> W_g of the coarse score
    frame_logit_weight              -> W_f of the weak frame score (its size fixes the frame count)
"""

from __future__ import annotations

from torch import Tensor

from harness.api import load_official_mapped

KEY_MAP = {
    "transformerClip.resblocks.": "resblocks.",
    "frame_position_embeddings.": "frame_position_embeddings.",
    "global_mat_weight": "global_mat_weight",
    "frame_logit_weight": "frame_logit_weight",
}


def load_official_eercf(method, state: dict[str, Tensor], source: str = "EERCF checkpoint") -> None:
    load_official_mapped(method, state, KEY_MAP, source)
