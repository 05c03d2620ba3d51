"""The small backbone of the synthetic suite: an open_clip CLIP built from a small config (the same
code path as ViT-B/32), pre-trained contrastively on still frames of the synthetic world with short
captions, so that its zero-shot row means something as CLIP's does. Saved once, in OpenAI's
state-dict layout, and loaded through the same checkpoint loader as a real CLIP.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from harness.api.backbone import ClipShape, build_clip
from harness.data.synthetic_world import still_sample
from harness.data.text import tokenize, vocabulary_size
from harness.data.video import resize_center_crop, to_pixels
from harness.storage.files import atomic_torch_save
from harness.api.method import symmetric_cross_entropy

SYNTHETIC_ARCH = "synthetic-small"  # the suite's backbone.arch that selects this small CLIP
VERSION = 1  # bump when the recipe below changes: a new cache file is written
IMAGE_SIZE = 32
CONTEXT_LENGTH = 32
STEPS = 600
BATCH = 128
LR = 1e-3


def small_shape() -> ClipShape:
    # Widths of 64 (one head by OpenAI's width // 64 rule) keep pre-training under a minute on 2 cores.
    return ClipShape(embed_dim=64, image_size=IMAGE_SIZE, patch_size=8, vision_width=64, vision_layers=3,
                     context_length=CONTEXT_LENGTH, vocab_size=vocabulary_size(), text_width=64, text_layers=3)


def _batch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    images, captions = zip(*(still_sample(rng) for _ in range(BATCH)))
    pixels = to_pixels(torch.from_numpy(resize_center_crop(np.stack(images), IMAGE_SIZE)))
    tokens, _ = tokenize(list(captions), CONTEXT_LENGTH)
    return pixels, tokens


def pretrain(seed: int, quiet: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_clip(small_shape(), CONTEXT_LENGTH, quick_gelu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / STEPS))
    )
    model.train()
    for _ in tqdm(range(STEPS), desc="pre-training the synthetic backbone", disable=quiet, leave=False):
        pixels, tokens = _batch(rng)
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
        loss = symmetric_cross_entropy(model.logit_scale.exp() * text @ image.t())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=math.log(100.0))
    return model.state_dict()


def synthetic_checkpoint(cache_dir: Path, seed: int, quiet: bool = False) -> Path:
    """Path of the cached pre-trained small CLIP (OpenAI layout), pre-training it on first use."""
    path = Path(cache_dir) / "backbones" / f"synthetic-small-v{VERSION}-seed{seed}.pt"
    if not path.exists():
        state = pretrain(seed, quiet)
        atomic_torch_save(path, state, "synthetic backbone")
    return path
