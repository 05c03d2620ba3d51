"""Benchmark and evaluation harness for text-video retrieval."""

__version__ = "0.1.0"
