"""Shared fixtures. The golden files (official outputs on small random weights) are read from
`tests/data/golden/` or, when the environment variable HARNESS_GOLDEN_DIR is set, from that directory:
the golden tests take every shape and count from the files, so golden files of the same layout made with
other seeds and shapes can be checked with `HARNESS_GOLDEN_DIR=DIR pytest tests/test_glscl.py ...`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
GOLDEN_DIR = Path(os.environ.get("HARNESS_GOLDEN_DIR") or DATA / "golden")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory) -> Path:
    """The official CLIP4Clip meanP state dict's clip.* weights: an OpenAI-layout CLIP of the golden shape."""
    from harness.backbone import read_state_dict

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
    """One cache for every test that runs the synthetic benchmark: it is generated once per session."""
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A random OpenAI-layout CLIP with the real vocabulary (captions are tokenized for real), 16 px frames."""
    from harness.backbone import ClipShape, build_clip

    torch.manual_seed(0)
    shape = ClipShape(embed_dim=32, image_size=16, patch_size=8, vision_width=64, vision_layers=1,
                      context_length=32, vocab_size=49408, text_width=64, text_layers=1)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(build_clip(shape, 32).state_dict(), path)
    return path
