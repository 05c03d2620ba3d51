"""Benchmark and evaluation harness for text-video retrieval."""

import os
import platform

__version__ = "0.1.0"

# CPU numerics pinned to the AVX2 kernels of ATen, MKL and oneDNN, before torch is imported (here, the first
# module of every harness process): float32 results on the CPU otherwise move with the machine's vector width
# (AVX2 or AVX-512), and the default suite's numbers, its regression baseline among them, would depend on the
# machine. A variable already set is kept (ATEN_CPU_CAPABILITY=avx512 chooses the wider kernels).
if platform.machine().lower() in ("x86_64", "amd64"):
    for _name, _value in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")):
        os.environ.setdefault(_name, _value)
