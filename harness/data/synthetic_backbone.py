"""The small backbone of the synthetic suite: an open_clip CLIP built from a small config (the same
code path as ViT-B/32), pre-trained contrastively on still frames of the synthetic world with short
captions, so that its zero-shot row means something as CLIP's does. Saved once, in OpenAI's
state-dict layout, and loaded through the same checkpoint loader as a real CLIP.
"""

from __future__ import annotations

import math
import queue
import signal
from pathlib import Path

import numpy as np
import torch

from harness.api.backbone import Backbone, ClipShape, build_clip
from harness.data.synthetic_world import still_sample
from harness.data.text import tokenize, vocabulary_size
from harness.data.video import resize_center_crop, to_pixels
from harness.storage.files import atomic_torch_save
from harness.api.method import symmetric_cross_entropy
from harness.interrupt import Stopped
from harness.processes import context, process
from harness.progress import progress

SYNTHETIC_ARCH = "synthetic-small"  # the suite's backbone.arch that selects this small CLIP
VERSION = 3  # bump when the recipe below changes: a new cache file is written
IMAGE_SIZE = 32
CONTEXT_LENGTH = 32
STEPS = 300  # with LR 2e-3: the zero-shot quality of 600 steps at 1e-3 (R@5, R@10, MnR), in half the time
BATCH = 128
LR = 2e-3


def small_shape() -> ClipShape:
    # Widths of 64 (one head by OpenAI's width // 64 rule) keep pre-training at a minute or two on one core.
    return ClipShape(embed_dim=64, image_size=IMAGE_SIZE, patch_size=8, vision_width=64, vision_layers=3,
                     context_length=CONTEXT_LENGTH, vocab_size=vocabulary_size(), text_width=64, text_layers=3)


def _batch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    images, captions = zip(*(still_sample(rng) for _ in range(BATCH)))
    pixels = to_pixels(torch.from_numpy(resize_center_crop(np.stack(images), IMAGE_SIZE)))
    tokens, _ = tokenize(list(captions), CONTEXT_LENGTH)
    return pixels, tokens


SAVE_EVERY = 25  # steps between two saves of the pre-training state (a stop loses at most these)
AHEAD = 4  # batches the other process makes ahead of the step that takes them


def _make_batches(rng_state: dict, count: int, batches) -> None:
    """In another process (harness/processes.py): `count` batches from the generator at `rng_state`, each put on
    the `batches` queue as numpy arrays with the generator's state after it (what a saved state continues from)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the pre-training's to handle: it stops this process
    torch.set_num_threads(1)
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    for _ in range(count):
        pixels, tokens = _batch(rng)
        batches.put((pixels.numpy(), tokens.numpy(), rng.bit_generator.state))


class AheadBatches:
    """The pre-training's batches, made by another process while this one trains on the previous ones: the same
    batches, in the same order, as `_batch` on the generator here (their making is a fifth of a step)."""

    def __init__(self, rng: np.random.Generator, count: int):
        self.queue = context().Queue(AHEAD)
        self.maker = process(_make_batches, (rng.bit_generator.state, count, self.queue))
        self.maker.daemon = True  # never outlives the pre-training
        self.maker.start()

    def next(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(pixels, tokens, the generator's state after them); an error if the maker died."""
        while True:
            try:
                pixels, tokens, state = self.queue.get(timeout=5)
                return torch.from_numpy(pixels), torch.from_numpy(tokens), state
            except queue.Empty:
                if not self.maker.is_alive():
                    raise RuntimeError(f"the process making the synthetic backbone's pre-training batches ended "
                                       f"(exit code {self.maker.exitcode})") from None

    def close(self) -> None:
        self.maker.terminate()
        self.maker.join()


def pretrain(seed: int, steps: int = STEPS, quiet: bool = False, state_file: Path | None = None,
             log=print) -> dict[str, torch.Tensor]:
    """The small CLIP pre-trained for `steps` steps. With `state_file`, the state after every SAVE_EVERY steps
    (weights, optimizer, schedule, the data generator, torch's generator) is written there: a pre-training
    stopped (Ctrl-C, SIGTERM, a crash) continues from it and ends with the weights of an uninterrupted one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on any machine, whatever its core count
    try:
        return pretrain_on_this_thread(seed, steps, quiet, state_file, log)
    finally:
        torch.set_num_threads(threads)


def pretrain_on_this_thread(seed: int, steps: int, quiet: bool, state_file: Path | None,
                            log) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_clip(small_shape(), CONTEXT_LENGTH, quick_gelu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    first = 0
    if state_file is not None and state_file.is_file():
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        rng.bit_generator.state, first = saved["rng"], saved["step"]
        torch.set_rng_state(saved["torch"])
        log(f"continuing the synthetic backbone's pre-training after step {first} of {steps} ({state_file})")
    towers = Backbone(model)  # the staged text tower, which takes captions cut after the batch's longest
    model.train()
    batches = AheadBatches(rng, steps - first)
    try:
        for step in progress(range(first, steps), "pre-training the synthetic backbone", quiet, total=steps - first):
            pixels, tokens, rng_state = batches.next()
            image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
            text = torch.nn.functional.normalize(towers.encode_sentence(up_to_longest(tokens)), dim=-1)
            loss = symmetric_cross_entropy(model.logit_scale.exp() * text @ image.t())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(max=math.log(100.0))
            if state_file is not None and (step + 1) % SAVE_EVERY == 0 and step + 1 < steps:
                atomic_torch_save(state_file, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "rng": rng_state, "torch": torch.get_rng_state(), "step": step + 1},
                    "pre-training state")
    except (KeyboardInterrupt, Stopped):
        if state_file is not None and state_file.is_file():
            kept = torch.load(state_file, map_location="cpu", weights_only=True)["step"]
            log(f"the synthetic backbone's pre-training was stopped; its state after step {kept} of {steps} is kept "
                f"in {state_file}, and the same command continues from it")
        raise
    finally:
        batches.close()
    return model.state_dict()


def up_to_longest(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens cut after the batch's last EOT (the largest id). The text tower is causal and pools at the EOT, so
    the positions after it change no feature: the same features at a third of the text tower's cost (the
    pre-training captions are short, the context 32 tokens)."""
    return tokens[:, : int(tokens.argmax(dim=1).max()) + 1]


def checkpoint_path(cache_dir: Path, seed: int) -> Path:
    """Where the cached pre-trained small CLIP of `seed` is (OpenAI layout)."""
    return Path(cache_dir) / "backbones" / f"synthetic-small-v{VERSION}-seed{seed}.pt"


def synthetic_checkpoint(cache_dir: Path, seed: int, quiet: bool = False, log=print) -> Path:
    """The cached pre-trained small CLIP, pre-trained on first use (a stopped pre-training continues from its
    state, kept beside it)."""
    path = checkpoint_path(cache_dir, seed)
    if not path.exists():
        state_file = path.with_suffix(".pretrain-state.pt")
        atomic_torch_save(path, pretrain(seed, STEPS, quiet, state_file, log), "synthetic backbone")
        state_file.unlink(missing_ok=True)
    return path
