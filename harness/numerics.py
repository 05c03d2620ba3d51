"""Float32 on the CPU computed the same way whatever the x86-64 machine's vector width (AVX2 or AVX-512) and cache
sizes, so that the default suite's numbers, its regression baseline among them, do not depend on the machine that
trains it (across CPU vendors, see MKL below).

Three libraries choose their kernels by the CPU they find, and each choice splits and rounds float32 sums
differently; after a few hundred training steps the difference reaches R@1:
- ATen's vector kernels: pinned to the AVX2 ones (ATEN_CPU_CAPABILITY), which every x86-64 CPU of the last
  decade runs, AVX-512 ones included.
- MKL (every matrix product): pinned to its AVX2 code branch (MKL_CBWR), which Intel documents as giving the
  same results on every Intel CPU with AVX2. On another vendor's CPU MKL dispatches by what it finds (the
  golden tests' k-medoids ids came out the same on an AMD EPYC; the whole suite is not yet compared there).
  Its COMPATIBLE branch (plain SSE2), documented for every vendor, is not used: it takes 1.6 times as long to
  train, and its products round a row differently by the matrix's row count, so a video's features would
  depend on the batch it is encoded in.
- oneDNN (convolutions and LSTMs) and NNPACK (convolutions of batches of 16 or more): turned off, so that
  these run on ATen and MKL too. oneDNN's kernels block their sums by the machine's cache sizes (the AVX2 pins
  alone moved 43 of the default suite's metrics between an AMD EPYC and an Intel Xeon); NNPACK would make a
  frame's features depend on the size of the batch it is encoded in.
A variable already set is kept: MKL_CBWR=AUTO and ATEN_CPU_CAPABILITY=avx512 give the machine's fastest kernels,
and numbers of that machine's own.
"""

from __future__ import annotations

import os
import platform

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def pin_environment() -> None:
    """Before torch loads (harness/__init__.py: the first module of every harness process)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        for name, value in PINNED.items():
            os.environ.setdefault(name, value)


def pin_torch() -> None:
    """Once torch has loaded (harness/api/backbone.py, which every model goes through)."""
    import torch

    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)


def description() -> dict:
    """What a run records of the CPU numerics it ran under."""
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl_branch": os.environ.get("MKL_CBWR"),
            "onednn": torch.backends.mkldnn.enabled, "nnpack": torch._C._get_nnpack_enabled()}
