"""Shared fixtures. The golden files (official outputs on small random weights) are read from
`tests/data/golden/` or, when the environment variable HARNESS_GOLDEN_DIR is set, from that directory:
the golden tests take every shape and count from the files, so golden files of the same layout made with
other seeds and shapes can be checked with `HARNESS_GOLDEN_DIR=DIR pytest tests/test_glscl.py ...`."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
GOLDEN_DIR = Path(os.environ.get("HARNESS_GOLDEN_DIR") or DATA / "golden")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory) -> Path:
    """The official CLIP4Clip meanP state dict's clip.* weights: an OpenAI-layout CLIP of the golden shape."""
    from harness.api.backbone import read_state_dict

    state = read_state_dict(GOLDEN_DIR / "clip4clip_meanP_official_state_dict.pt")
    path = tmp_path_factory.mktemp("clip") / "clip_openai_layout.pt"
    torch.save({k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.")}, path)
    return path


def load_golden(name: str) -> dict:
    """A golden file (or an official state dict beside it) from GOLDEN_DIR."""
    path = GOLDEN_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"golden file {name} not found in {GOLDEN_DIR} (set by HARNESS_GOLDEN_DIR; "
                                "that directory needs the layout of tests/data/golden)")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    """One cache for every test that runs the synthetic benchmark, shared by the session's xdist workers: the first
    test to ask fills it (the benchmark generated, the small CLIP pre-trained, every video decoded: the default
    suite's zero-shot row run cold), a worker asking meanwhile waits for it, and no worker pre-trains a second time."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    cache, filled = shared / "synthetic-cache", shared / "synthetic-cache.filled"
    with open(shared / "synthetic-cache.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not filled.exists():
            cold = subprocess.run([sys.executable, "-m", "harness", "run", str(REPO / "suites" / "synthetic.yaml"),
                                   "--methods", "zeroshot", "--output", str(shared / "synthetic-cold-run"), "--cache-dir",
                                   str(cache), "--quiet"], cwd=REPO, capture_output=True, text=True)
            assert cold.returncode == 0, f"filling the synthetic cache failed:\n{cold.stderr[-4000:]}"
            filled.touch()
    return cache


def write_clip(path: Path, embed_dim: int) -> Path:
    """A random OpenAI-layout CLIP with the real vocabulary (captions are tokenized for real), 16 px frames,
    widths 64 and the given embedding width, saved at `path`."""
    from harness.api.backbone import ClipShape, build_clip

    torch.manual_seed(0)
    shape = ClipShape(embed_dim=embed_dim, image_size=16, patch_size=8, vision_width=64, vision_layers=1,
                      context_length=32, vocab_size=49408, text_width=64, text_layers=1)
    torch.save(build_clip(shape, 32).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt", embed_dim=32)


# A tiny VATEX-format benchmark with real H.264 clips, for end-to-end runs that take seconds.
TRAIN = [f"train{i}" for i in range(6)]
TEST = [f"test{i}" for i in range(4)]


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> Path:
    """Ten small real H.264 clips, written once for the session."""
    from harness.data.synthetic import write_mp4

    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for vid in TRAIN + TEST:
        write_mp4(folder / f"{vid}.mp4", rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=2)
    return folder


@pytest.fixture
def vatex(tmp_path, videos) -> Path:
    """A VATEX data root: 6 training and 4 test videos, two captions each."""
    root = tmp_path / "vatex"
    shutil.copytree(videos, root / "videos")
    (root / "train_list.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "test_list.txt").write_text("\n".join(TEST) + "\n")
    (root / "ref_captions.json").write_text(json.dumps({v: [f"a clip called {v}", f"what happens in {v}"]
                                                        for v in TRAIN + TEST}))
    return root


def write_suite(tmp_path: Path, root: Path, clip: Path, methods: list[dict], epochs: int = 1,
                training: dict | None = None, evaluation: dict | None = None, **benchmark) -> Path:
    """A suite over the tiny VATEX root (2 frames, 16 words, batch 4) with its own cache under tmp_path."""
    suite = {"name": "tiny", "cache_dir": str(tmp_path / "cache"),
             "benchmark": {"name": "vatex", "root": str(root), "train_split": "train", "test_splits": ["test"],
                           **benchmark},
             "backbone": {"arch": "auto", "checkpoint": str(clip)},
             "protocol": {"frames": 2, "words": 16},
             "training": {"epochs": epochs, "batch_size": 4, "validation_videos": 0, "selection": "last-epoch",
                          **(training or {})},
             "evaluation": {"batch_size": 4, **(evaluation or {})},
             "methods": methods}
    path = tmp_path / f"suite-{len(list(tmp_path.glob('suite-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def rerank_row(row: torch.Tensor, candidates: torch.Tensor, fine: torch.Tensor) -> None:
    """The per-query two-stage rule the engine's batched rerank replaced, in place on one float64 row: the
    candidates take their fine scores, every other item is shifted below the lowest of them, its order kept."""
    outside = torch.ones(row.shape[0], dtype=torch.bool)
    outside[candidates] = False
    if outside.any():
        row[outside] -= row[outside].max() - fine.min() + 1.0
    row[candidates] = fine
