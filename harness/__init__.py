"""Benchmark and evaluation harness for text-video retrieval."""

from harness.numerics import pin_environment

__version__ = "0.1.0"

pin_environment()  # before torch is imported: here, the first module of every harness process
