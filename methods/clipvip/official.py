"""Import a state dict saved by the official CLIP-ViP code (`VidCLIP.state_dict()`) into the harness's
CLIP-ViP, strictly.

Key map:
    clipmodel.*  (Hugging Face CLIP layout)                -> the backbone, through harness.api.hf_clip (q/k/v
                                                              concatenated, projections transposed, position_ids
                                                              skipped); its logit_scale included (4.60 at init)
    clipmodel.vision_model.embeddings.added_cls            -> added_cls (the video proxies)
    clipmodel.vision_model.embeddings.temporal_embedding   -> temporal_embedding
Any other key, a missing key or a shape mismatch is an error naming the keys.
"""

from __future__ import annotations

from torch import Tensor

from harness.api.hf_clip import load_official_hf

KEY_MAP = {
    "clipmodel.vision_model.embeddings.added_cls": "added_cls",
    "clipmodel.vision_model.embeddings.temporal_embedding": "temporal_embedding",
}


def load_official_clipvip(method, state: dict[str, Tensor], source: str = "CLIP-ViP checkpoint") -> None:
    load_official_hf(method, state, source, "clipmodel.", KEY_MAP)
