"""Official-checkpoint import: a method's explicit, strict key map from its official code's state dict."""

from __future__ import annotations

from torch import Tensor

from harness.api.backbone import load_weights_strictly
from harness.api.method import Method
from harness.errors import CheckpointError


def load_official_mapped(method: Method, state: dict[str, Tensor], key_map: dict[str, str], source: str,
                         skip: tuple[str, ...] = ()) -> None:
    """The shared shape of every official import: `clip.*` (OpenAI layout) to the backbone, every other
    key renamed by the first matching prefix of `key_map` or skipped on purpose when it starts with one
    of `skip`; unknown keys, missing keys and shape mismatches are one error naming them."""
    if any(key.startswith("module.") for key in state):
        raise CheckpointError(f"{source}: keys start with 'module.' (a DistributedDataParallel wrapper); strip the "
                              "prefix or save model.module.state_dict() as the official code does.")
    method.backbone.load_prefixed(state, "clip.", source)
    head, unknown = {}, []
    for key, value in state.items():
        if key.startswith("clip.") or (skip and key.startswith(skip)):
            continue
        for old, new in key_map.items():
            if key.startswith(old):
                head[new + key[len(old):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys unknown to {method.name}: {', '.join(sorted(unknown)[:8])}"
                              f"{' ...' if len(unknown) > 8 else ''}.")
    backbone = {k: v for k, v in method.state_dict().items() if k.startswith("backbone.")}
    load_weights_strictly(method, {**backbone, **head}, f"{source} (head)")
