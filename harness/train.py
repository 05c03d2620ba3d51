"""The one shared training loop (PROTOCOL section 5).

Parameter groups (new modules at lr, backbone at lr x coef_lr; no weight decay on biases and norms),
decoupled weight decay (AdamW), linear warm-up then cosine, gradient clipping, the logit-scale clamp,
per-epoch validation and best-checkpoint selection. Every method trains through this loop.

Resumable: after every epoch the whole training state (weights, optimizer, schedule, the data order's
and every random generator's state, the history and the best checkpoint so far) is written atomically to
`state_file`; a training started with that file present continues after its last epoch and ends with the
same weights and history as one that was never interrupted (on CPU, exactly). There is no gradient scaler
to restore: mixed precision is bf16, which needs none.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.data.text import tokenize
from harness.data.video import decode, pad_frames, to_pixels
from harness.errors import TrainingError
from harness.files import atomic_save
from harness.evaluate import autocast, evaluate_split
from harness.method import Method
from harness.metrics import summarize
from harness.suite import TrainingSpec

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class TrainingRecord:
    selection: str
    best_epoch: int
    best_validation_r1: float | None
    steps: int
    history: list[dict] = field(default_factory=list)


def parameter_groups(method: Method, spec: TrainingSpec) -> list[dict]:
    """Four groups: {backbone, head} x {decay, no decay}; biases and norm weights take no decay."""
    no_decay = set()
    for module in method.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, NORMS) or name.endswith("bias"):
                no_decay.add(id(parameter))
    head = {id(p) for p in method.head_parameters()}
    groups = []
    for is_head, lr in ((False, spec.lr * spec.coef_lr), (True, spec.lr)):
        for decay in (True, False):
            params = [p for p in method.parameters()
                      if p.requires_grad and (id(p) in head) == is_head and (id(p) not in no_decay) == decay]
            if params:
                groups.append({"params": params, "lr": lr, "weight_decay": spec.weight_decay if decay else 0.0})
    return groups


def warmup_cosine(progress: float, warmup: float) -> float:
    """CLIP4Clip's schedule: linear warm-up over the first `warmup` fraction, then 0.5 (1 + cos(pi x))."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class PairBatches:
    """Every (training video, caption) pair is a sample; batches in a seeded order."""

    def __init__(self, split: Split, store: FrameStore | None, words: int, batch_size: int, seed: int,
                 policy: str, frames: int, size: int):
        self.split, self.store, self.batch_size = split, store, batch_size
        self.policy, self.frames, self.size = policy, frames, size
        self.tokens, self.token_mask = tokenize(split.captions, words)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict:
        """Where the seeded data order (and the random frame sampling) stands."""
        return {"generator": self.generator.get_state(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]

    def __len__(self) -> int:
        return max(1, len(self.split.captions) // self.batch_size)  # the last partial batch is dropped

    def _frames(self, video_index: int):
        video = self.split.videos[video_index]
        if self.store is not None:
            return self.store.load(video)
        return pad_frames(decode(video.path, self.frames, self.policy, self.size, video.id, self.rng,
                                 video.end_second), self.frames)

    def __iter__(self):
        order = torch.randperm(len(self.split.captions), generator=self.generator)
        for b in range(len(self)):
            captions = order[b * self.batch_size : (b + 1) * self.batch_size]
            frames, masks = zip(*(self._frames(self.split.caption_video[c]) for c in captions.tolist()))
            yield torch.stack(frames), torch.stack(masks), self.tokens[captions], self.token_mask[captions]


def validation_r1(method: Method, split: Split, store: FrameStore, words: int, batch_size: int, chunk: int,
                  device: torch.device, mixed_precision: bool) -> float:
    final = evaluate_split(method, split, store, words, batch_size, chunk, device, mixed_precision, quiet=True,
                           directions=("t2v",))[-1]  # the two-stage result for two-stage methods
    return summarize(final.rankings["t2v"])["R1"]


def random_states() -> dict:
    """Every global generator's state, in types torch.load(weights_only=True) reads back."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                      has_gauss, gauss),
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def cpu_state(method: Method) -> dict:
    return {k: v.detach().cpu().clone() for k, v in method.state_dict().items()}


def train(method: Method, batches: PairBatches, validation: Split | None, eval_store: FrameStore, words: int,
          spec: TrainingSpec, eval_batch: int, chunk: int, device: torch.device, quiet: bool = False,
          log=print, state_file: Path | None = None, fingerprint: str = "") -> TrainingRecord:
    """Train in place; on return the method holds the selected checkpoint's weights. With `state_file`,
    continue from it when present and write it (with `fingerprint`, what produced it) after every epoch."""
    mixed = spec.mixed_precision and device.type == "cuda"
    optimizer = torch.optim.AdamW(parameter_groups(method, spec), betas=(0.9, 0.98), eps=1e-6)
    total = spec.epochs * len(batches)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step / total, spec.warmup_proportion))
    max_log_scale = math.log(spec.max_logit_scale)
    best_state, best_r1, best_epoch, step, first_epoch = None, -1.0, spec.epochs, 0, 1
    record = TrainingRecord(spec.selection, spec.epochs, None, total)
    if state_file is not None and state_file.is_file():
        try:
            saved = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as error:
            raise TrainingError(f"{state_file}: the training state cannot be read ({error}); remove it to train "
                                f"{method.name} from the start.") from None
        method.load_state_dict(saved["method"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        batches.load_state_dict(saved["batches"])
        set_random_states(saved["random"])
        best_state, best_r1, best_epoch, step = saved["best_state"], saved["best_r1"], saved["best_epoch"], saved["step"]
        record.history = saved["history"]
        first_epoch = saved["epoch"] + 1
        log(f"  {method.name}: continuing after epoch {saved['epoch']} of {spec.epochs} ({state_file.name})")
    for epoch in range(first_epoch, spec.epochs + 1):
        method.train()
        sums: dict[str, float] = {}
        progress = tqdm(batches, desc=f"{method.name} epoch {epoch}/{spec.epochs}", disable=quiet, leave=False)
        for frames, frame_mask, tokens, token_mask in progress:
            with autocast(device, mixed):
                frame_mask = frame_mask.to(device)
                video = method.encode_video(to_pixels(frames.to(device), frame_mask), frame_mask)
                text = method.encode_text(tokens.to(device), token_mask.to(device))
                terms = method.loss(text, video)
            loss = terms["total"]
            if not torch.isfinite(loss):
                values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                raise TrainingError(f"{method.name}: non-finite loss at epoch {epoch}, step {step + 1} ({values}). "
                                    "Lower the learning rate or check the inputs; no checkpoint was saved from this step.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip > 0:
                nn.utils.clip_grad_norm_(method.parameters(), spec.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            with torch.no_grad():
                method.backbone.logit_scale.clamp_(max=max_log_scale)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            progress.set_postfix(loss=f"{loss.item():.4f}")
        entry = {"epoch": epoch, **{f"loss_{k}": v / len(batches) for k, v in sums.items()}}
        if validation is not None:
            entry["validation_R1"] = validation_r1(method, validation, eval_store, words, eval_batch, chunk, device, mixed)
            if spec.selection == "validation" and entry["validation_R1"] > best_r1:
                best_r1, best_epoch = entry["validation_R1"], epoch
                best_state = cpu_state(method)
        record.history.append(entry)
        log(f"  {method.name} epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if k != "epoch"))
        if state_file is not None:
            state = {"fingerprint": fingerprint, "epoch": epoch, "step": step, "method": cpu_state(method), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "batches": batches.state_dict(), "random": random_states(),
                     "best_state": best_state, "best_r1": best_r1, "best_epoch": best_epoch,
                     "history": record.history}
            atomic_save(state_file, lambda temporary: torch.save(state, temporary), "training state")
    if best_state is not None:
        method.load_state_dict(best_state)
        record.best_epoch, record.best_validation_r1 = best_epoch, best_r1
    return record
