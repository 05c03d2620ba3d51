"""Several processes, one training: the process group torchrun sets up, and the gather of features.

`harness run SUITE` started by torchrun (or with `--nproc N`, which starts torchrun's agent) finds RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment; `init_from_environment` joins the
group (nccl when CUDA is available, gloo otherwise). Without that environment every helper here is
trivial: rank 0 of a world of one, and the gather returns its input.

Why the gather's backward multiplies by the world size (the gradient is exact, not merely proportional):
N ranks hold the shards f_1..f_N of a global batch, rank r computed f_r = enc(x_r; theta). Every rank
gathers F = [f_1; ...; f_N] (only its own slice f_r carries autograd history) and computes the same global
loss L(F; phi), phi the parameters used after the gather (logit scale, score heads). One process on the
whole batch would compute
    dL/dtheta = sum_r (dL/df_r) (df_r/dtheta),    dL/dphi = dL/dphi.
On rank r, backward reaches theta only through f_r. If the gather's backward returned dL/df_r, rank r's
gradient would be g_r = (dL/df_r)(df_r/dtheta), and DistributedDataParallel, which averages gradients
over ranks, would give (1/N) sum_r g_r = (1/N) dL/dtheta: too small by N (CLIP4Clip's AllGather has this
property; Adam hides most of it, gradient clipping does not). torch.distributed.nn.functional.all_gather's
backward reduce-scatters with SUM: rank r gets sum_s dL_s/df_r = N dL/df_r since every rank's loss L_s is
the same L; the average is then exactly dL/dtheta. `gather_features` does the same without the
communication: its backward returns N times the local slice of the incoming gradient, which equals that
sum because every rank computes the identical loss on identical gathered features with identical weights.
The parameters phi see the whole loss on every rank, so their average is dL/dphi, as in one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from harness.errors import HarnessError
from harness.api.method import Features

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Waiting for rank 0 to decode a benchmark or to evaluate a method can take hours; the collectives of a
# training step use the process group's own (short) timeout.
LONG_WAIT = timedelta(hours=24)
_wait_group = None


def launched() -> bool:
    """Whether this process was started by torchrun (its environment names a rank and a world size)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_label() -> str:
    """`[rank r/N] ` in a process of a torchrun world of more than one, else nothing: what every line of a
    rank's log starts with."""
    world = os.environ.get("WORLD_SIZE", "1") if launched() else "1"
    return f"[rank {os.environ['RANK']}/{world}] " if world != "1" else ""


@contextmanager
def process_group() -> Iterator[None]:
    """Within the block, the process group torchrun's environment describes, when there is one."""
    if not launched():
        yield
        return
    init_from_environment()
    try:
        yield
    finally:
        shutdown()


def init_from_environment() -> None:
    """Join the process group torchrun's environment describes; CUDA: this process uses cuda:LOCAL_RANK."""
    global _wait_group
    missing = [name for name in ENVIRONMENT if name not in os.environ]
    if missing:
        raise HarnessError(f"a distributed run needs torchrun's environment; {', '.join(missing)} not set "
                           "(start with `torchrun --nproc-per-node N -m harness run SUITE` or `harness run SUITE "
                           "--nproc N`).")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)
    _wait_group = dist.new_group(backend="gloo", timeout=LONG_WAIT)


def shutdown() -> None:
    global _wait_group
    if active():
        dist.destroy_process_group()
    _wait_group = None


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def wait_for_all() -> None:
    """A barrier that tolerates long waits (rank 0 alone decoding or evaluating)."""
    if active():
        dist.barrier(group=_wait_group)


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches), the other ranks after it, finding them filled."""
    if not is_main():
        wait_for_all()
    yield
    if is_main():
        wait_for_all()


def broadcast(value):
    """Rank 0's `value` (any picklable object) on every rank."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, group=_wait_group)
    return holder[0]


def gather_objects(value) -> list:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if not active():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value, group=_wait_group)
    return values


class _GatherWithLocalGradient(torch.autograd.Function):
    """All-gather along dim 0; backward: world size x this rank's slice (see the module docstring)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows, ctx.rank, ctx.world = tensor.shape[0], rank(), world_size()
        parts = [torch.empty_like(tensor) for _ in range(ctx.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return ctx.world * grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def _gather_constant(tensor: Tensor) -> Tensor:
    """All-gather along dim 0 of a tensor without gradient (masks, ids); bool travels as uint8."""
    flag = tensor.dtype == torch.bool
    local = tensor.to(torch.uint8) if flag else tensor
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local.contiguous())
    gathered = torch.cat(parts)
    return gathered.bool() if flag else gathered


def gather_features(features: Features) -> Features:
    """Every entry of a Features dict gathered from all ranks along its first dimension, in rank order
    (rank 0's items first). Floating tensors that require grad keep the local gradient, scaled so that
    DistributedDataParallel's average reproduces one process's gradient; every other entry is gathered as
    a constant. Every rank must hold the same shapes (equal shards)."""
    if not active():
        return features
    return {name: _GatherWithLocalGradient.apply(value) if value.requires_grad else _gather_constant(value)
            for name, value in features.items()}
