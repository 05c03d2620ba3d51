"""Training scalars as TensorBoard event files (suite key `training.log: tensorboard`), through
torch.utils.tensorboard; the tensorboard package is an optional extra (`pip install .[tensorboard]`).

One folder per method, <run>/tensorboard/<method>/, written by rank 0 of the training. Tags:

- `step/loss_<term>`: every loss term the method returns (`loss_total` among them), per optimisation step;
- `step/lr_backbone`, `step/lr_head`: the learning rate each parameter group stepped with;
- `step/logit_scale`: the backbone's logit scale (exp of its clamped log) after the step;
- `epoch/<key>`: the epoch's history entry as results.json keeps it (`methods.<name>.training.history`:
  the mean of each loss term, `loss_<term>`, and `validation_R1`), at the global step that ends the epoch,
  so that epoch and step curves share one axis.

A resumed training appends to its folder: what the interrupted process logged after the last saved epoch
is purged (TensorBoard's purge_step), so each step keeps one value. A training started from the beginning
removes the folder's earlier event files (those of a training that was discarded).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from harness.errors import HarnessError
from harness.suite import TrainingSpec

EXTRA = "tensorboard"  # pyproject.toml's optional extra that installs the package
EVENT_FILES = "events.out.tfevents.*"


def require_tensorboard() -> None:
    """A HarnessError naming the extra when the tensorboard package is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise HarnessError(f"training.log: tensorboard needs the tensorboard package, which is not installed: "
                           f"pip install 'tvr-harness[{EXTRA}]' (or pip install tensorboard), or set "
                           "training.log: none.") from None


def learning_rates(optimizer: torch.optim.Optimizer, spec: TrainingSpec) -> dict[str, float]:
    """The current rate of the backbone's and the head's parameter groups, told apart by the rate each
    started from (lr x coef_lr and lr); with coef_lr 1 both names hold the one rate."""
    rates = {}
    for group in optimizer.param_groups:
        start = group.get("initial_lr", group["lr"])
        for name, base in (("backbone", spec.lr * spec.coef_lr), ("head", spec.lr)):
            if math.isclose(start, base):
                rates[name] = float(group["lr"])
    return rates


class ScalarLog:
    """`training.log: none` (and every rank but 0): records nothing."""

    def step(self, step: int, terms: dict[str, Tensor], rates: dict[str, float], log_logit_scale: Tensor) -> None:
        pass

    def epoch(self, step: int, entry: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLog(ScalarLog):
    def __init__(self, folder: Path, resumed_at: int):
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        if resumed_at == 0:
            for file in folder.glob(EVENT_FILES):
                file.unlink()
        # purge_step: events of this folder at steps >= it (logged by the interrupted process) are hidden
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=resumed_at + 1 if resumed_at else None)

    def step(self, step: int, terms: dict[str, Tensor], rates: dict[str, float], log_logit_scale: Tensor) -> None:
        for name, value in terms.items():
            self.writer.add_scalar(f"step/loss_{name}", float(value.detach()), step)
        for name, rate in rates.items():
            self.writer.add_scalar(f"step/lr_{name}", rate, step)
        self.writer.add_scalar("step/logit_scale", float(log_logit_scale.detach().exp()), step)

    def epoch(self, step: int, entry: dict[str, float]) -> None:
        for key, value in entry.items():
            if key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.flush()  # on disk with the epoch's training state

    def close(self) -> None:
        self.writer.close()


def open_scalar_log(spec: TrainingSpec, folder: Path | None, method: str, rank: int, resumed_at: int) -> ScalarLog:
    """The scalar log of one training into `folder` (<run>/tensorboard/<method>/); `resumed_at`: the step a
    resumed training continues after (0: from the start). Every rank checks that the package is there, so that
    none waits for a rank that stopped."""
    if spec.log == "none":
        return ScalarLog()
    require_tensorboard()
    if folder is None:
        raise HarnessError(f"{method}: training.log: tensorboard writes into the run directory, and this training "
                           "was given no folder for it; run it through `harness run`.")
    return TensorBoardLog(folder, resumed_at) if rank == 0 else ScalarLog()
