"""Cost accounting: both counters against docs/cost.md's hand counts on ViT-B/32, the attention traps, the
per-pair split of a score, and the refusal to count around an operator a counter cannot see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from baselines.clip4clip import MeanP
from baselines.xpool import XPool
from harness.api.backbone import Backbone
from harness.cost.flops import count_macs
from harness.cost.model import method_cost, score_cost
from harness.errors import HarnessError

REPO = Path(__file__).parent.parent
# docs/cost.md section 3, hand counts in MACs (ViT-B/32 at 224 px).
IMAGE_TOWER = 4.4088e9
TEXT_TOWER = {32: 1.2208e9, 64: 2.4665e9}
XPOOL_PAIR = 2 * 12 * 512 + 2 * 512 * 512  # q.K and a.V over 12 frames, then W_o and W_l: 536,576


def vit_b32(words: int) -> Backbone:
    torch.manual_seed(0)
    return Backbone(open_clip.create_model("ViT-B-32", pretrained=None, force_context_length=words,
                                           force_quick_gelu=True, precision="fp32")).eval()


@pytest.fixture(scope="module")
def backbone32() -> Backbone:
    return vit_b32(32)


def test_image_tower_matches_the_hand_count_by_both_counters(backbone32):
    frame = torch.randn(1, 1, 3, 224, 224)
    count = count_macs(lambda x: backbone32.encode_frames(x), (frame,), backbone32, "image tower")
    assert count.macs == pytest.approx(IMAGE_TOWER, rel=0.01)  # fvcore adds the norms: 4.4138 G
    assert count.check_macs == pytest.approx(IMAGE_TOWER, rel=0.001)


@pytest.mark.parametrize("words", [32, 64])
def test_text_tower_matches_the_hand_count_by_both_counters(words, backbone32):
    backbone = backbone32 if words == 32 else vit_b32(words)
    tokens = torch.randint(1, 1000, (1, words))
    tokens[0, -1] = 49407
    count = count_macs(lambda t: backbone.encode_sentence(t), (tokens,), backbone, f"text tower L={words}")
    assert count.macs == pytest.approx(TEXT_TOWER[words], rel=0.01)
    assert count.check_macs == pytest.approx(TEXT_TOWER[words], rel=0.01)


def test_fast_path_trap_is_handled(backbone32):
    """Counting under eval + no_grad gives what a count with gradients on (no fast path) gives; counting
    naively under eval + no_grad would lose about a third of the tower."""
    frame = torch.randn(1, 1, 3, 224, 224)
    ours = count_macs(lambda x: backbone32.encode_frames(x), (frame,), backbone32, "image tower").check_macs
    backbone32.train()
    try:
        with FlopCounterMode(display=False, custom_mapping={
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda *a, **k: 0}) as with_grad:
            backbone32.encode_frames(frame)
    finally:
        backbone32.eval()
    attention = 12 * 50 * 50 * (64 + 64) * 12  # QK and AV of 12 heads x 12 layers, the part SDPA holds
    assert ours == pytest.approx(with_grad.get_total_flops() / 2 + attention, rel=1e-6)
    with torch.no_grad(), FlopCounterMode(display=False) as naive:
        backbone32.encode_frames(frame)
    assert naive.get_total_flops() / 2 < 0.75 * ours


def test_xpool_and_meanp_per_pair(backbone32):
    xpool = method_cost(XPool(backbone32, XPool.Params(dropout=0.0)), 12, 32, 224)
    assert xpool.check["score"]["per_pair"] == pytest.approx(XPOOL_PAIR, rel=1e-3)  # 0.537 MMAC
    assert xpool.score.per_pair == pytest.approx(XPOOL_PAIR, rel=0.015)  # + the two LayerNorms per pair
    assert xpool.score.per_video == pytest.approx(2 * 12 * 512 * 512, rel=0.02)  # W_k, W_v on 12 frames
    text, video = {"text": torch.randn(2, 512)}, {"video": F.normalize(torch.randn(2, 512), dim=-1)}
    meanp = MeanP(backbone32, MeanP.Params())
    split, check = score_cost(meanp, meanp.score, text, video, "score")
    assert split.per_pair == check.per_pair == 512
    assert split.per_text == split.per_video == 0


def test_an_uncountable_matrix_operator_is_an_error_not_a_log_line():
    weight = torch.nn.Parameter(torch.randn(3, 4, 5))
    owner = torch.nn.Module()
    owner.weight = weight
    with pytest.raises(HarnessError, match="bilinear"):
        count_macs(lambda a, b: F.bilinear(a, b, owner.weight), (torch.randn(2, 4), torch.randn(2, 5)), owner, "toy")


def test_harness_cost_on_the_synthetic_suite(tmp_path):
    output = tmp_path / "cost.json"
    result = subprocess.run([sys.executable, "-m", "harness", "cost", "suites/synthetic.yaml", "--no-timing",
                             "--quiet", "--output", str(output)], cwd=REPO, capture_output=True, text=True, check=True)
    cost = json.loads(output.read_text())
    methods = cost["methods"]
    assert set(methods) >= {"zeroshot", "clip4clip-meanp", "xpool", "glscl", "eercf", "glccl"}
    assert methods["clip4clip-meanp"]["score"]["per_pair"] == 64  # the small CLIP's embedding width
    assert methods["eercf"]["coarse"]["per_pair"] == 64 and methods["eercf"]["candidates"] == 50
    assert methods["glscl"]["reported_head_flops_g"] == 1.0
    assert "glscl" in result.stdout
