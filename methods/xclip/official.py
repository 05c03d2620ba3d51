"""Import a state dict saved by the official X-CLIP code (class `XCLIP`) into the harness's XCLIP, strictly.

Key map: `clip.*` (OpenAI layout; fp16 in the official checkpoints, cast to float32) -> the backbone;
`transformerClip.resblocks.*` -> the seqTransf blocks; `frame_position_embeddings.*` -> their frame
positions; the eight score matrices keep their official names. Every key is used: an unknown or missing
key is an error naming it. The L x L and T x T matrices fix the words and frames a checkpoint works at,
and the seqTransf blocks and frame positions their own sizes: a checkpoint of other sizes is refused,
naming the tensor, its size and the param to set.
"""

from __future__ import annotations

import re

from torch import Tensor

from harness.api import CheckpointError, load_official_mapped
from methods.xclip.scores import EMBED_MATRICES, FRAME_MATRICES, WORD_MATRICES

KEY_MAP = {"transformerClip.resblocks.": "resblocks.", "frame_position_embeddings.": "frame_position_embeddings.",
           **{name: name for name in EMBED_MATRICES + WORD_MATRICES + FRAME_MATRICES}}


def checkpoint_sizes(state: dict[str, Tensor]) -> dict[str, tuple[str, int]]:
    """The sizes the checkpoint was built for: {param: (the tensor that shows it, size)}."""
    sizes = {}
    for param, names in (("words", WORD_MATRICES), ("frames", FRAME_MATRICES)):
        for name in names:
            if name in state:
                sizes.setdefault(param, (name, state[name].shape[0]))
    if "frame_position_embeddings.weight" in state:
        sizes["frame_positions"] = ("frame_position_embeddings.weight",
                                    state["frame_position_embeddings.weight"].shape[0])
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"transformerClip\.resblocks\.(\d+)\.", key))}
    if blocks:
        sizes["layers"] = ("transformerClip.resblocks", max(blocks) + 1)
    return sizes


def load_official_xclip(method, state: dict[str, Tensor], source: str = "X-CLIP checkpoint") -> None:
    for param, (tensor, size) in checkpoint_sizes(state).items():
        built = getattr(method.params, param)
        if size != built:
            raise CheckpointError(f"{source}: {tensor} is sized for {param}={size}, but this xclip was built for "
                                  f"{param}={built}; set the method's params.{param}: {size} to load it (a "
                                  "trained X-CLIP works only at its own max_words and max_frames).")
    load_official_mapped(method, state, KEY_MAP, source)
