"""Operations on `Features` (named tensors whose first dimension indexes items) that the engine applies without
knowing what a method put in them: slice, concatenate, gather, move, keep."""

from __future__ import annotations

import torch
from torch import Tensor

from harness.api.method import Features


def count(features: Features) -> int:
    return next(iter(features.values())).shape[0]


def slice_features(features: Features, start: int, end: int) -> Features:
    return {name: value[start:end] for name, value in features.items()}


def concat_features(parts: list[Features]) -> Features:
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def move_features(features: Features, device: torch.device | str) -> Features:
    return {name: value.to(device) for name, value in features.items()}


def take(features: Features, index: Tensor) -> Features:
    """The items `index` (any shape) of every feature: shape (*index.shape, *feature item shape). index_select
    on the flat index: a few times faster than advanced indexing for the candidates' features."""
    flat = index.reshape(-1)
    return {name: value.index_select(0, flat).view(*index.shape, *value.shape[1:]) for name, value in features.items()}


def stored(features: Features) -> Features:
    """Encoder outputs as the engine keeps them: floating tensors in float32 (bf16 under autocast) on the CPU,
    every other dtype as it is (a mask stays bool, an index integer), in every path alike (training,
    validation, evaluation, the feature cache, the conformance check)."""
    return {name: (value.float() if value.is_floating_point() else value).cpu() for name, value in features.items()}


def bytes_per_item(features: Features) -> int:
    return sum(value[0].numel() * value.element_size() for value in features.values())
