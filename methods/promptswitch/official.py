"""Import a state dict saved by the official Prompt Switch code (`PromptCLIP.state_dict()`, the `state_dict` of
its checkpoint) into the harness's Prompt Switch, strictly.

Key map:
    clip.*  (Hugging Face CLIP layout)           -> the backbone, through harness.api.hf_clip (q/k/v concatenated,
                                                    projections transposed, position_ids skipped)
    clip.vision_model.encoder.prompt_embedding   -> prompt_embedding (the P x P x w cube)
    clip.vision_model.attn.*                     -> aggregation.* (the prompt-aggregation attention)
    caption_prenorm.*                            -> captioner.prenorm.*
    caption_transformer.*                        -> captioner.decoder.*
    caption_head.*                               -> captioner.head.*
Any other key, a missing key or a shape mismatch is an error naming the keys.
"""

from __future__ import annotations

from torch import Tensor

from harness.api.hf_clip import load_official_hf

KEY_MAP = {
    "clip.vision_model.encoder.prompt_embedding": "prompt_embedding",
    "clip.vision_model.attn.": "aggregation.",
    "caption_prenorm.": "captioner.prenorm.",
    "caption_transformer.": "captioner.decoder.",
    "caption_head.": "captioner.head.",
}


def load_official_promptswitch(method, state: dict[str, Tensor], source: str = "Prompt Switch checkpoint") -> None:
    load_official_hf(method, state, source, "clip.", KEY_MAP)
