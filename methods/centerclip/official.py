"""Import a state dict saved by the official CenterCLIP code into the harness's CenterCLIP, strictly.

Key map: `clip.*` (OpenAI layout) -> the backbone (text positions sliced to the suite's word count). The
official visual tower also saves the buffer `clip.visual.position_ids` (arange over the visual positions,
never read by its forward): skipped by name. Neither meanP nor the clustering (`cluster_embedding 0` in
every published script) adds parameters, so any other key, a missing key or a shape mismatch is an error
naming the keys.
"""

from __future__ import annotations

from torch import Tensor

from harness.api import load_official_mapped

UNUSED_KEYS = ("clip.visual.position_ids",)


def load_official_centerclip(method, state: dict[str, Tensor], source: str = "CenterCLIP checkpoint") -> None:
    weights = {key: value for key, value in state.items() if key not in UNUSED_KEYS}
    load_official_mapped(method, weights, {}, source)
