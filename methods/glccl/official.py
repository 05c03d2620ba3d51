"""Import a state dict saved by the official GLCCL code into the harness's GLCCL, strictly.

Key map: `clip.*` -> the backbone; `transformerClip.resblocks.*` -> seqTransf blocks;
`frame_position_embeddings.*` -> seqTransf frame positions; the two D x D and six L x L score matrices
keep their official names. `visual_logit_weight` (T x T) is created by the official model but used by no
score in its text-guided configuration: it is skipped by name. Any other key, a missing key or a shape
mismatch is an error naming the keys.
"""

from __future__ import annotations

from torch import Tensor

from harness.api import load_official_mapped
from methods.glccl.interaction import EMBED_MATRICES, WORD_MATRICES

KEY_MAP = {"transformerClip.resblocks.": "resblocks.", "frame_position_embeddings.": "frame_position_embeddings.",
           **{name: name for name in EMBED_MATRICES + WORD_MATRICES}}
UNUSED = ("visual_logit_weight",)


def load_official_glccl(method, state: dict[str, Tensor], source: str = "GLCCL checkpoint") -> None:
    load_official_mapped(method, state, KEY_MAP, source, skip=UNUSED)
