"""`harness import-checkpoint`: official X-Pool and CLIP4Clip files -> harness state dicts, strictly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DATA
from harness.api.backbone import Backbone, load_clip, read_state_dict
from harness.pipeline.checkpoints import load_checkpoint
from baselines.xpool import XPool

REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("import")
    clip = {k: v for k, v in read_state_dict(DATA / "golden" / "clip4clip_meanP_official_state_dict.pt").items()}
    head = torch.load(DATA / "golden" / "xpool_head4_official_state_dict.pt", weights_only=True)
    # An official X-Pool training checkpoint: wrapped, OpenAI-layout clip.* plus pool_frames.*
    torch.save({"epoch": 3, "state_dict": {**clip, **head}}, folder / "xpool_official.pth")
    torch.save({k[len("clip."):]: v for k, v in clip.items()}, folder / "clip.pt")
    (folder / "suite.yaml").write_text(f"""
name: import-test
benchmark: {{name: synthetic, test_splits: [test-1kA]}}
backbone: {{arch: auto, checkpoint: {folder / 'clip.pt'}}}
protocol: {{words: 12}}
methods:
  - {{name: xpool, params: {{num_heads: 4, dropout: 0.0}}}}
""")
    return folder


def harness_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=REPO)


def test_import_xpool_checkpoint_keeps_every_tensor(files):
    output = files / "xpool_harness.pt"
    result = harness_cli("import-checkpoint", str(files / "xpool_official.pth"), "--method", "xpool",
                         "--suite", str(files / "suite.yaml"), "--output", str(output), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "tensors written" in result.stdout
    state = torch.load(output, weights_only=True)
    official = torch.load(files / "xpool_official.pth", weights_only=True)["state_dict"]
    for key, value in official.items():
        ours = key.replace("pool_frames.", "pool.").replace("clip.", "backbone.clip.", 1)
        if key == "clip.positional_embedding":
            value = value[:12]  # sliced to the suite's word count
        assert torch.equal(state[ours], value), key
    # The converted file loads strictly as a harness checkpoint and scores like the official head.
    method = XPool(Backbone(load_clip("auto", files / "clip.pt", 12)), XPool.Params(num_heads=4, dropout=0.0)).eval()
    load_checkpoint(method, output, "harness")
    golden = torch.load(DATA / "golden" / "xpool_metrics_golden.pt", weights_only=True)["xpool"]
    video = {"frames": golden["frames"], "frame_mask": torch.ones(golden["frames"].shape[:2], dtype=torch.bool)}
    with torch.no_grad():
        assert (method.score({"text": golden["text"]}, video) - golden["score_heads4"]).abs().max() <= 1e-5


def test_import_refuses_unknown_keys_with_a_clear_error(files):
    state = torch.load(files / "xpool_official.pth", weights_only=True)["state_dict"]
    state["text_pool.weight"] = torch.zeros(3)
    torch.save(state, files / "bad.pth")
    result = harness_cli("import-checkpoint", str(files / "bad.pth"), "--method", "xpool",
                         "--suite", str(files / "suite.yaml"), "--output", str(files / "out.pt"), "--quiet")
    assert result.returncode == 2
    assert "keys unknown to xpool: text_pool.weight" in result.stderr and "Traceback" not in result.stderr
    assert not (files / "out.pt").exists()


def test_a_checkpoint_of_another_method_is_refused(files):
    result = harness_cli("import-checkpoint", str(files / "xpool_official.pth"), "--method", "zeroshot",
                         "--suite", str(files / "suite.yaml"), "--output", str(files / "z.pt"), "--quiet")
    assert result.returncode == 2 and "keys unknown to zeroshot: pool_frames." in result.stderr


def test_the_same_tensors_saved_twice_are_the_same_bytes(tmp_path):
    """Files are fingerprinted by their hash: the temporary file a save goes through leaves no trace in them."""
    from harness.storage.files import atomic_torch_save

    state = {"weight": torch.arange(6.0).view(2, 3)}
    atomic_torch_save(tmp_path / "a.pt", state)
    atomic_torch_save(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["weight"], state["weight"])
