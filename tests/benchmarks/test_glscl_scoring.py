"""GLSCL scores a 1,000 x 1,000 gallery on the CPU (ViT-B/32 widths: D = 512, 12 frames, K = 8).

Per pair: the global module's frame weights and pooling (2 x T x D multiply-adds) and cosine, plus the
local module's K x D query dot products; the (texts x videos x D) pooled tensor is built in blocks of
`pair_budget` elements. Timing: pytest-benchmark; peak memory: peak_memory.py. Linux only.
"""

from __future__ import annotations

import pytest
from peak_memory import benchmark_scoring

N, FRAMES, DIM, QUERIES = 1000, 12, 512, 8
BUDGET = 1 << 24  # pooled-tensor elements at once: 64 MiB in fp32

SETUP = f"""
import torch
import torch.nn.functional as F
from harness.api.backbone import Backbone, ClipShape, build_clip
from methods.glscl import GLSCL, GLSCLParams
torch.manual_seed(0)
backbone = Backbone(build_clip(ClipShape({DIM}, 32, 16, 64, 1, 8, 1000, {DIM}, 1), 8))
method = GLSCL(backbone, GLSCLParams(layers=1, frame_positions={FRAMES}, pair_budget={BUDGET})).eval()
text = {{"text": torch.randn({N}, {DIM}), "queries": F.normalize(torch.randn({N}, {QUERIES}, {DIM}), dim=-1)}}
video = {{"frames": torch.randn({N}, {FRAMES}, {DIM}), "frame_mask": torch.ones({N}, {FRAMES}, dtype=torch.bool),
          "queries": F.normalize(torch.randn({N}, {QUERIES}, {DIM}), dim=-1)}}
"""


@pytest.mark.slow
def test_glscl_1000_by_1000_gallery(benchmark):
    peak = benchmark_scoring(benchmark, SETUP, N)
    # Unchunked, the pooled tensor alone would be N * N * DIM * 4 bytes = 1953 MiB.
    assert peak < 1953 / 4
