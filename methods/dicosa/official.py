"""Import a state dict saved by the official DiCoSA code (`model.state_dict()` of its `DiCoSA` module with
`agg_module=seqTransf`, as every official script runs it) into the harness's DiCoSA, strictly.

Key map:
    clip.*                          -> the backbone (text positions sliced to the suite's word count)
    transformerClip.resblocks.*     -> seqTransf blocks
    frame_position_embeddings.*     -> seqTransf frame positions
    weight_fc.0.*  /  weight_fc.2.* -> the concept-weight MLP's first / second Linear
That configuration saves no tensor it leaves unused (its loss has no parameters; `lstm_visual.*` exists
only under agg_module=seqLSTM), so nothing is skipped: every key is used. An unknown key (a seqLSTM
checkpoint's `lstm_visual.*` among them), a missing key or a shape mismatch is an error naming the keys.
The official loader itself reads checkpoints with strict=False.
"""

from __future__ import annotations

from torch import Tensor

from harness.api import load_official_mapped

KEY_MAP = {
    "transformerClip.resblocks.": "resblocks.",
    "frame_position_embeddings.": "frame_position_embeddings.",
    "weight_fc.0.": "weighting.first.",
    "weight_fc.2.": "weighting.second.",
}


def load_official_dicosa(method, state: dict[str, Tensor], source: str = "DiCoSA checkpoint") -> None:
    load_official_mapped(method, state, KEY_MAP, source)
