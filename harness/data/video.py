"""Video decoding (decord), the frame-sampling policies of docs/protocol.md section 2, and CLIP pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.api.backbone import PIXEL_MEAN, PIXEL_STD
from harness.errors import DataError


def sample_indices(n_frames: int, fps: float, frames: int, policy: str, rng: np.random.Generator | None = None,
                   end_second: int | None = None) -> np.ndarray:
    """Frame indices to decode for one clip.

    fps1-linspace (CLIP4Clip/GLSCL): one frame per second (stride round(fps)), then integer
    linspace(0, n-1, T) if more than T remain. uniform / rand (X-Pool): T equal intervals over the
    whole clip, the middle frame of each / a random frame of each. With end_second, only seconds
    0..end_second (inclusive, as the official loaders read a span) count as the clip.
    """
    if end_second is not None:
        n_frames = min(n_frames, int(round((end_second + 1) * fps)))
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if policy == "fps1-linspace":
        stride = max(1, int(round(fps)))
        per_second = np.arange(0, n_frames, stride)
        if len(per_second) > frames:
            per_second = per_second[np.linspace(0, len(per_second) - 1, frames).astype(np.int64)]
        return per_second.astype(np.int64)
    bounds = np.linspace(0, n_frames, frames + 1).astype(np.int64)
    starts, ends = bounds[:-1], np.maximum(bounds[1:], bounds[:-1] + 1)
    if policy == "uniform":
        indices = (starts + ends - 1) // 2
    elif policy == "rand":
        rng = rng or np.random.default_rng()
        indices = rng.integers(starts, ends)
    else:
        raise ValueError(f"unknown sampling policy {policy!r}")
    return np.minimum(indices, n_frames - 1).astype(np.int64)


def decode(path: Path, frames: int, policy: str, size: int, video_id: str = "", rng=None,
           end_second: int | None = None) -> np.ndarray:
    """Decode the sampled frames of one video: uint8 (t, size, size, 3), t <= frames."""
    import decord

    label = f"video {video_id!r} ({path})" if video_id else str(path)
    if not Path(path).is_file():
        raise DataError(f"{label}: file not found.")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        indices = sample_indices(len(reader), reader.get_avg_fps(), frames, policy, rng, end_second)
        batch = reader.get_batch(list(indices)).asnumpy()
    except Exception as error:  # decord raises its own DECORDError and RuntimeErrors
        raise DataError(f"{label}: cannot decode: {error}") from None
    if batch.shape[0] == 0:
        raise DataError(f"{label}: no frames decoded.")
    return resize_center_crop(batch, size)


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (t, H, W, 3) -> short side to `size` (bicubic), centre crop to size x size."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    height, width = x.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def pad_frames(frames: np.ndarray, length: int) -> tuple[Tensor, Tensor]:
    """uint8 (t, S, S, 3) -> (length, S, S, 3) zero-padded and a (length,) bool mask."""
    count = min(frames.shape[0], length)
    padded = torch.zeros((length, *frames.shape[1:]), dtype=torch.uint8)
    padded[:count] = torch.from_numpy(frames[:count])
    mask = torch.zeros(length, dtype=torch.bool)
    mask[:count] = True
    return padded, mask


def to_pixels(frames: Tensor, frame_mask: Tensor | None = None) -> Tensor:
    """uint8 (..., S, S, 3) -> float (..., 3, S, S) with CLIP mean/std normalisation.

    With frame_mask (...,) bool, padded frames are exactly zero after normalisation, as the official
    loaders (CLIP4Clip and its forks) pad: it matters to heads that read padded frames unmasked
    (GLSCL's video decoder, EERCF's weak frame score)."""
    x = frames.float().div(255.0).movedim(-1, -3)
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(3, 1, 1)
    x = (x - mean) / std
    if frame_mask is not None:
        x = x * frame_mask.to(x.dtype)[..., None, None, None]
    return x
