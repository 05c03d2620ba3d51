"""CPU numerics pinned (harness/numerics.py): the same float32 training whatever the machine's vector width.
A machine's vector instructions are emulated by limiting what MKL and oneDNN may use; the pinned kernels must not
notice (with oneDNN on, as before the pins turned it off, its instruction limit gave other weights)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the pins are for x86-64 CPUs")

TRAIN_A_LITTLE = """
import hashlib, json
import numpy as np, torch
import harness
from harness.numerics import description
from harness.data import synthetic_backbone as sb
from harness.api.backbone import Backbone, build_clip
from harness.api.method import symmetric_cross_entropy
torch.manual_seed(0)
torch.set_num_threads(1)
model = build_clip(sb.small_shape(), sb.CONTEXT_LENGTH, quick_gelu=True)  # a convolution, matrix products
lstm = torch.nn.LSTM(64, 64, batch_first=True)
towers = Backbone(model)
optimizer = torch.optim.AdamW([*model.parameters(), *lstm.parameters()], lr=2e-3)
rng = np.random.default_rng(0)
for _ in range(2):
    pixels, tokens = sb._batch(rng)
    image = model.encode_image(pixels)
    text = towers.encode_sentence(sb.up_to_longest(tokens))
    image = image + lstm(image.view(16, 8, 64))[0].reshape(128, 64)
    loss = symmetric_cross_entropy(text @ image.t())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
digest = hashlib.sha256()
for tensor in [*model.state_dict().values(), *lstm.state_dict().values()]:
    digest.update(tensor.numpy().tobytes())
print(json.dumps({"weights": digest.hexdigest(), **description()}))
"""


def train_a_little(**limits: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    done = subprocess.run([sys.executable, "-c", TRAIN_A_LITTLE], env={**environment, **limits},
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_the_pins_are_set_before_torch_loads_and_the_weights_do_not_see_the_machine_s_instructions():
    pinned = train_a_little()
    assert {k: pinned[k] for k in ("mkl_branch", "cpu_capability", "onednn", "nnpack")} == \
        {"mkl_branch": "AVX2", "cpu_capability": "AVX2", "onednn": False, "nnpack": False}
    for limits in ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, {"ONEDNN_MAX_CPU_ISA": "SSE41"}):
        assert train_a_little(**limits)["weights"] == pinned["weights"], limits
