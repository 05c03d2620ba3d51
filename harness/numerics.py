"""Float32 on the CPU computed the same way on any x86-64 machine (Intel or AMD, AVX2 or AVX-512), so that the
default suite's numbers, its regression baseline among them, do not depend on the machine that trains it.

Three libraries choose their kernels by the CPU they find, and each choice splits and rounds float32 sums
differently; after a few hundred training steps the difference reaches R@1:
- ATen's vector kernels: pinned to the AVX2 ones (ATEN_CPU_CAPABILITY), which every x86-64 CPU of the last
  decade runs.
- MKL (every matrix product): pinned to its COMPATIBLE code branch (MKL_CBWR), plain SSE2. MKL's other
  branches give the same results only across Intel CPUs; on another vendor's CPU MKL ignores them and
  dispatches by what it finds.
- oneDNN (convolutions and LSTMs): turned off, so that these run on ATen and MKL too. Its kernels block their
  sums by the machine's cache sizes.
The price is speed: the synthetic suite's training takes about 1.6 times as long as with MKL's AVX2 kernels.
A variable already set is kept: MKL_CBWR=AUTO and ATEN_CPU_CAPABILITY=avx512 give the machine's fastest kernels,
and numbers of that machine's own.
"""

from __future__ import annotations

import os
import platform

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}


def pin_environment() -> None:
    """Before torch loads (harness/__init__.py: the first module of every harness process)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        for name, value in PINNED.items():
            os.environ.setdefault(name, value)


def pin_torch() -> None:
    """Once torch has loaded (harness/api/backbone.py, which every model goes through)."""
    import torch

    torch.backends.mkldnn.enabled = False


def description() -> dict:
    """What a run records of the CPU numerics it ran under."""
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl_branch": os.environ.get("MKL_CBWR"),
            "onednn": torch.backends.mkldnn.enabled}
