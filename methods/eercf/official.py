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

from harness.backbone import load_weights_strictly
from harness.errors import CheckpointError

KEY_MAP = {
    "transformerClip.resblocks.": "resblocks.",
    "frame_position_embeddings.": "frame_position_embeddings.",
    "global_mat_weight": "global_mat_weight",
    "frame_logit_weight": "frame_logit_weight",
}


def load_official_eercf(method, state: dict[str, Tensor], source: str = "EERCF checkpoint") -> None:
    if any(key.startswith("module.") for key in state):
        raise CheckpointError(f"{source}: keys start with 'module.' (a DistributedDataParallel wrapper); strip the "
                              "prefix or save model.module.state_dict() as the official save_model does.")
    method.backbone.load_prefixed(state, "clip.", source)
    head, unknown = {}, []
    for key, value in state.items():
        if key.startswith("clip."):
            continue
        for old, new in KEY_MAP.items():
            if key.startswith(old):
                head[new + key[len(old):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys unknown to eercf: {', '.join(sorted(unknown)[:8])}"
                              f"{' ...' if len(unknown) > 8 else ''}.")
    backbone = {k: v for k, v in method.state_dict().items() if k.startswith("backbone.")}
    load_weights_strictly(method, {**backbone, **head}, f"{source} (head)")
