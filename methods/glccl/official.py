"""Import a state dict saved by the official GLCCL code into the harness's GLCCL, strictly.

Key map: `clip.*` -> the backbone; `transformerClip.resblocks.*` -> seqTransf blocks;
`frame_position_embeddings.*` -> seqTransf frame positions; the two D x D and six L x L score matrices
keep their official names. `visual_logit_weight` (T x T) is created by the official model but used by no
score in its text-guided configuration: it is skipped by name. Any other key, a missing key or a shape
mismatch is an error naming the keys.
"""

from __future__ import annotations

from torch import Tensor

from harness.backbone import load_weights_strictly
from harness.errors import CheckpointError
from methods.glccl.method import EMBED_MATRICES, WORD_MATRICES

KEY_MAP = {"transformerClip.resblocks.": "resblocks.", "frame_position_embeddings.": "frame_position_embeddings.",
           **{name: name for name in EMBED_MATRICES + WORD_MATRICES}}
UNUSED = ("visual_logit_weight",)


def load_official_glccl(method, state: dict[str, Tensor], source: str = "GLCCL checkpoint") -> None:
    if any(key.startswith("module.") for key in state):
        raise CheckpointError(f"{source}: keys start with 'module.' (a DistributedDataParallel wrapper); strip the "
                              "prefix or save model.module.state_dict().")
    method.backbone.load_prefixed(state, "clip.", source)
    head, unknown = {}, []
    for key, value in state.items():
        if key.startswith("clip.") or key in UNUSED:
            continue
        for old, new in KEY_MAP.items():
            if key.startswith(old):
                head[new + key[len(old):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys unknown to glccl: {', '.join(sorted(unknown)[:8])}"
                              f"{' ...' if len(unknown) > 8 else ''}.")
    backbone = {k: v for k, v in method.state_dict().items() if k.startswith("backbone.")}
    load_weights_strictly(method, {**backbone, **head}, f"{source} (head)")
