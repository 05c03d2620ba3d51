"""Import a state dict saved by the official TS2-Net code into the harness's TS2-Net, strictly.

Key map (every tensor used or skipped by name, shapes equal, unknown and missing keys named):
    clip.*                                             -> the backbone; CLIP tensors held in fp16 (the official
                                                          model keeps them so) are cast to float32
    clip.visual.transformer.resblocks.{s}.attn.net.*   -> that block's own attention, for each shifted block s
                                                          (the official shift wraps the attention module)
    transformerClip.resblocks.*                        -> seqTransf blocks
    frame_position_embeddings.*                        -> seqTransf token positions
    visual_token_selector.score_predictor.*            -> the token scorer
Skipped by name, built but unused by the official forward: `visual_prompt_encoder.*` and
`text_token_selector.*` (its call is commented out).
"""

from __future__ import annotations

import re

from torch import Tensor

from harness.api import CheckpointError, load_official_mapped

KEY_MAP = {
    "transformerClip.resblocks.": "resblocks.",
    "frame_position_embeddings.": "frame_position_embeddings.",
    "visual_token_selector.score_predictor.": "scorer.",
}
UNUSED = ("visual_prompt_encoder.", "text_token_selector.")
VISUAL_ATTENTION = re.compile(r"clip\.visual\.transformer\.resblocks\.(\d+)\.attn\.(net\.)?")


def unwrap_shifted_attention(state: dict[str, Tensor], shifted: set[int], source: str) -> dict[str, Tensor]:
    """The state with each shifted block's `attn.net.*` renamed to `attn.*`; a shifted block whose attention
    is not wrapped, or a wrapped attention elsewhere, is an error naming the key."""
    renamed = {}
    for key, value in state.items():
        match = VISUAL_ATTENTION.match(key)
        if match:
            block, wrapped = int(match.group(1)), match.group(2) is not None
            if wrapped != (block in shifted):
                where = "a shifted block's attention must be" if block in shifted else "only shifted blocks have"
                raise CheckpointError(f"{source}: {key}: {where} `attn.net.*` in the official layout (shifted "
                                      f"blocks {sorted(shifted)}).")
            key = key.replace(".attn.net.", ".attn.", 1)
        renamed[key] = value
    return renamed


def as_float32(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


def load_official_ts2net(method, state: dict[str, Tensor], source: str = "TS2-Net checkpoint") -> None:
    state = as_float32(unwrap_shifted_attention(state, set(method.shifted_blocks), source))
    load_official_mapped(method, state, KEY_MAP, source, skip=UNUSED)
