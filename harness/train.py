"""The one shared training loop (PROTOCOL section 5).

Parameter groups (new modules at lr, backbone at lr x coef_lr; no weight decay on biases and norms),
decoupled weight decay (AdamW), linear warm-up then cosine, gradient clipping, the logit-scale clamp,
per-epoch validation and best-checkpoint selection. Every method trains through this loop.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.data.text import tokenize
from harness.data.video import decode, pad_frames, to_pixels
from harness.errors import TrainingError
from harness.evaluate import autocast, evaluate_split, rank_split
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
    return summarize(rank_split(final.scores["t2v"], split, "t2v", "max-over-captions"))["R1"]


def train(method: Method, batches: PairBatches, validation: Split | None, eval_store: FrameStore, words: int,
          spec: TrainingSpec, eval_batch: int, chunk: int, device: torch.device, quiet: bool = False,
          log=print) -> TrainingRecord:
    """Train in place; on return the method holds the selected checkpoint's weights."""
    mixed = spec.mixed_precision and device.type == "cuda"
    optimizer = torch.optim.AdamW(parameter_groups(method, spec), betas=(0.9, 0.98), eps=1e-6)
    total = spec.epochs * len(batches)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step / total, spec.warmup_proportion))
    max_log_scale = math.log(spec.max_logit_scale)
    best_state, best_r1, best_epoch, step = None, -1.0, spec.epochs, 0
    record = TrainingRecord(spec.selection, spec.epochs, None, total)
    for epoch in range(1, spec.epochs + 1):
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
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in method.state_dict().items()})
        record.history.append(entry)
        log(f"  {method.name} epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if k != "epoch"))
    if best_state is not None:
        method.load_state_dict(best_state)
        record.best_epoch, record.best_validation_r1 = best_epoch, best_r1
    return record
