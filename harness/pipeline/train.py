"""The one shared training loop (docs/protocol.md section 5).

Parameter groups (new modules at lr, backbone at lr x coef_lr; no weight decay on biases and norms),
decoupled weight decay (AdamW), linear warm-up then cosine, gradient clipping, the logit-scale clamp,
per-epoch validation and best-checkpoint selection. Every method trains through this loop.

Resumable: after every epoch the whole training state (weights, optimizer, schedule, the data order's
and every random generator's state, the history and the best checkpoint so far) is written atomically to
`state_file`; a training started with that file present continues after its last epoch and ends with the
same weights and history as one that was never interrupted (on CPU, exactly). There is no gradient scaler
to restore: mixed precision is bf16, which needs none.

In a process group (harness/distributed.py) every rank takes a disjoint shard of each global batch (the
suite's batch_size), the step's features are gathered across ranks before the loss, and
DistributedDataParallel averages the gradients: the step is one process's step on the global batch. DDP
syncs gradients only for a forward run through its wrapper, while methods are driven through
encode_video / encode_text / loss; `TrainingStep` is that wrapper: its forward encodes, gathers and returns
the loss terms. Validation takes the distributed evaluation path (every rank ends with the same R@1, so every
rank selects the same epoch). Rank 0 writes the training state; every rank reads it back.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from harness import distributed
from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.data.text import tokenize
from harness.data.video import decode, pad_frames, to_pixels
from harness.errors import TrainingError
from harness.storage.files import atomic_torch_save
from harness.retrieval.ranking import Evaluation, evaluate_split
from harness.retrieval.tiles import autocast
from harness.api.method import Method
from harness.retrieval.metrics import summarize
from harness.progress import progress
from harness.pipeline.tensorboard import ScalarLog, learning_rates, open_scalar_log
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
    """Batches of (video, caption) samples in a seeded order: every pair once an epoch, or (`samples`
    "one-caption-per-video") every video once with one of its captions drawn at random. `batch_size` is the
    global batch: in a world of `world` processes (default: the process group's) rank `rank` takes the rank-th of
    `world` equal, contiguous shards of each, so the shards in rank order are one process's batch."""

    def __init__(self, split: Split, store: FrameStore | None, words: int, batch_size: int, seed: int,
                 policy: str, frames: int, size: int, rank: int | None = None, world: int | None = None,
                 samples: str = "every-pair"):
        self.rank = distributed.rank() if rank is None else rank
        self.world = distributed.world_size() if world is None else world
        if batch_size % self.world:
            raise TrainingError(f"training.batch_size {batch_size} does not split into {self.world} equal shards "
                                f"(one per process); give a batch size divisible by {self.world}.")
        self.split, self.store, self.batch_size, self.seed = split, store, batch_size, seed
        self.policy, self.frames, self.size = policy, frames, size
        self.tokens, self.token_mask = tokenize(split.captions, words)
        self.per_video = samples == "one-caption-per-video"
        if self.per_video:  # the caption indices of each video that has captions, as one padded table
            by_video: dict[int, list[int]] = {}
            for caption, owner in enumerate(split.caption_video):
                by_video.setdefault(owner, []).append(caption)
            rows = [by_video[v] for v in sorted(by_video)]
            self.caption_counts = torch.tensor([len(row) for row in rows])
            self.caption_table = torch.zeros(len(rows), max(map(len, rows), default=1), dtype=torch.long)
            for i, row in enumerate(rows):
                self.caption_table[i, : len(row)] = torch.tensor(row)
        self.generator = torch.Generator().manual_seed(seed)  # the global order: the same on every rank
        # random frame sampling: rank 0 draws as one process does, the others their own numbers
        self.rng = np.random.default_rng(seed if self.rank == 0 else [seed, self.rank])

    def state_dict(self) -> dict:
        """Where the seeded data order (and the random frame sampling) stands."""
        return {"generator": self.generator.get_state(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]

    def samples(self) -> int:
        return len(self.caption_counts) if self.per_video else len(self.split.captions)

    def __len__(self) -> int:
        return max(1, self.samples() // self.batch_size)  # the last partial batch is dropped

    def _frames(self, video_index: int):
        video = self.split.videos[video_index]
        if self.store is not None:
            return self.store.load(video)
        return pad_frames(decode(video.path, self.frames, self.policy, self.size, video.id, self.rng,
                                 video.end_second), self.frames)

    def epoch_captions(self) -> Tensor:
        """The caption index of every sample of one epoch, in the epoch's order."""
        order = torch.randperm(self.samples(), generator=self.generator)
        if not self.per_video:
            return order
        drawn = (torch.rand(len(self.caption_counts), generator=self.generator) * self.caption_counts).long()
        return self.caption_table[torch.arange(len(drawn)), drawn][order]

    def shards(self):
        """The caption indices of this rank's shard of every global batch of one epoch."""
        order = self.epoch_captions()
        shard = self.batch_size // self.world
        for b in range(len(self)):
            start = b * self.batch_size + self.rank * shard
            yield order[start : start + shard]

    def __iter__(self):
        for captions in self.shards():
            frames, masks = zip(*(self._frames(self.split.caption_video[c]) for c in captions.tolist()))
            yield torch.stack(frames), torch.stack(masks), self.tokens[captions], self.token_mask[captions]


@dataclass
class Validation:
    """The split an epoch's checkpoint is selected on, its frames, and how it is evaluated (t2v R@1)."""

    split: Split
    store: FrameStore
    evaluation: Evaluation


def validation_r1(method: Method, validation: Validation) -> float:
    evaluation = dataclasses.replace(validation.evaluation, directions=("t2v",), quiet=True)
    final = evaluate_split(method, validation.split, validation.store, evaluation)[-1]  # two-stage: the final ranks
    return summarize(final.rankings["t2v"])["R1"]


def separate_random_streams(seed: int, rank: int) -> None:
    """Seed the global generators (dropout, augmentation) of a rank > 0 from (seed, rank): its shard draws
    its own numbers instead of repeating rank 0's."""
    value = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


class TrainingStep(nn.Module):
    """One step's forward: encode this rank's shard, gather the features of every rank, and the method's
    loss on the global batch. Wrapped in DistributedDataParallel in a process group, so that the forward
    passes through DDP and the backward averages the gradients."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, pixels: Tensor, frame_mask: Tensor, tokens: Tensor, token_mask: Tensor) -> dict[str, Tensor]:
        video = distributed.gather_features(self.method.encode_video(pixels, frame_mask))
        text = distributed.gather_features(self.method.encode_text(tokens, token_mask))
        return self.method.loss(text, video)


def training_step(method: Method, device: torch.device) -> nn.Module:
    """The module a training step calls: TrainingStep, inside DDP in a process group of more than one.
    static_graph: the parameters a method's loss leaves unused (e.g. a logit scale it does not read) are
    the same at every step; DDP then leaves their gradient None, as one process does."""
    step = TrainingStep(method)
    if distributed.world_size() == 1:
        return step
    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                   static_graph=True)


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


def train(method: Method, batches: PairBatches, spec: TrainingSpec, device: torch.device,
          validation: Validation | None = None, quiet: bool = False, log=print, state_file: Path | None = None,
          fingerprint: str = "", scalar_folder: Path | None = None) -> TrainingRecord:
    """Train in place; on return the method holds the selected checkpoint's weights. With `state_file`,
    continue from it when present and write it (with `fingerprint`, what produced it) after every epoch's
    training, before its validation, and again after it: a run stopped during a validation continues at that
    validation, not at the start of the epoch. `scalar_folder`: where `training.log: tensorboard` writes."""
    mixed = spec.mixed_precision and device.type == "cuda"
    # fused: one kernel over every parameter (3x faster than the per-tensor loop on a CPU; the same update up to
    # float32 rounding)
    optimizer = torch.optim.AdamW(parameter_groups(method, spec), betas=(0.9, 0.98), eps=1e-6, fused=True)
    total = spec.epochs * len(batches)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step / total, spec.warmup_proportion))
    loop = Loop(method, optimizer, schedule, batches, spec, device, mixed, quiet)
    record = TrainingRecord(spec.selection, spec.epochs, None, total)
    rank, world = distributed.rank(), distributed.world_size()
    if rank > 0:
        separate_random_streams(batches.seed, rank)
    first_epoch, pending = 1, None  # pending: an epoch trained whose validation has not run
    if state_file is not None and distributed.broadcast(state_file.is_file()):  # rank 0 decides for all
        saved = read_training_state(state_file, method.name, world)
        method.load_state_dict(saved["method"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        batches.load_state_dict(saved["ranks"][rank]["batches"])
        set_random_states(saved["ranks"][rank]["random"])
        loop.best_state, loop.best_r1, loop.best_epoch, loop.step = (saved["best_state"], saved["best_r1"],
                                                                     saved["best_epoch"], saved["step"])
        record.history, pending = saved["history"], saved.get("pending")
        first_epoch = saved["epoch"] + (pending is None)
        log(f"  {method.name}: continuing " + (f"at the validation of epoch {saved['epoch']}" if pending else
                                               f"after epoch {saved['epoch']}") + f" of {spec.epochs} ({state_file.name})")
    loop.scalars = open_scalar_log(spec, scalar_folder, method.name, rank, loop.step)

    def save(epoch: int, pending_entry: dict | None) -> None:
        if state_file is None:
            return
        ranks = distributed.gather_objects({"batches": batches.state_dict(), "random": random_states()})
        if rank == 0:
            state = {"fingerprint": fingerprint, "epoch": epoch, "step": loop.step, "method": cpu_state(method),
                     "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "ranks": ranks,
                     "best_state": loop.best_state, "best_r1": loop.best_r1, "best_epoch": loop.best_epoch,
                     "history": record.history, "pending": pending_entry}
            atomic_torch_save(state_file, state, "training state")

    for epoch in range(first_epoch, spec.epochs + 1):
        entry, pending = pending or loop.epoch(epoch), None
        if validation is not None:
            save(epoch, entry)  # trained: a stop during the validation continues at it
            # every rank encodes and ranks its share of the validation split and ends with the same R@1
            entry["validation_R1"] = validation_r1(method, validation)
            if spec.selection == "validation" and entry["validation_R1"] > loop.best_r1:
                loop.best_r1, loop.best_epoch = entry["validation_R1"], epoch
                loop.best_state = cpu_state(method)
        record.history.append(entry)
        loop.scalars.epoch(loop.step, entry)
        log(f"  {method.name} epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if k != "epoch"))
        save(epoch, None)
    loop.scalars.close()
    if loop.best_state is not None:
        method.load_state_dict(loop.best_state)
        record.best_epoch, record.best_validation_r1 = loop.best_epoch, loop.best_r1
    return record


def read_training_state(state_file: Path, method: str, world: int) -> dict:
    try:
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TrainingError(f"{state_file}: the training state cannot be read ({error}); remove it to train "
                            f"{method} from the start.") from None
    if len(saved["ranks"]) != world:
        raise TrainingError(f"{state_file}: written by a training in {len(saved['ranks'])} process(es); continue "
                            f"it with as many (--nproc {len(saved['ranks'])}), or remove it to train {method} "
                            "from the start.")
    return saved


class Loop:
    """The optimisation of one training: its epochs' steps, the step count and the best validated weights."""

    def __init__(self, method: Method, optimizer, schedule, batches: PairBatches, spec: TrainingSpec,
                 device: torch.device, mixed: bool, quiet: bool):
        self.method, self.optimizer, self.schedule, self.batches = method, optimizer, schedule, batches
        self.spec, self.device, self.mixed, self.quiet = spec, device, mixed, quiet
        self.step_model = training_step(method, device)
        self.max_log_scale = math.log(spec.max_logit_scale)
        self.best_state, self.best_r1, self.best_epoch, self.step = None, -1.0, spec.epochs, 0
        self.scalars = ScalarLog()  # train() opens the run's log once it knows the step it continues after

    def epoch(self, epoch: int) -> dict:
        """Train one epoch; its history entry (the mean of every loss term)."""
        method, spec, device = self.method, self.spec, self.device
        method.train()
        sums: dict[str, float] = {}
        steps = progress(self.batches, f"{method.name} epoch {epoch}/{spec.epochs}", self.quiet)
        for frames, frame_mask, tokens, token_mask in steps:
            with autocast(device, self.mixed):
                frame_mask = frame_mask.to(device)
                terms = self.step_model(to_pixels(frames.to(device), frame_mask), frame_mask, tokens.to(device),
                                        token_mask.to(device))
            loss = terms["total"]
            if not torch.isfinite(loss):
                values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                raise TrainingError(f"{method.name}: non-finite loss at epoch {epoch}, step {self.step + 1} ({values}). "
                                    "Lower the learning rate or check the inputs; no checkpoint was saved from this step.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip > 0:  # on the averaged gradient: the same on every rank as in one process
                nn.utils.clip_grad_norm_(method.parameters(), spec.grad_clip)
            self.optimizer.step()
            rates = learning_rates(self.optimizer, spec)  # the rates this step used
            self.schedule.step()
            self.step += 1
            with torch.no_grad():
                method.backbone.logit_scale.clamp_(max=self.max_log_scale)
            self.scalars.step(self.step, terms, rates, method.backbone.logit_scale)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            steps.set_postfix(loss=f"{loss.item():.4f}")
        return {"epoch": epoch, **{f"loss_{k}": v / len(self.batches) for k, v in sums.items()}}
