from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory) -> Path:
    """The official CLIP4Clip meanP state dict's clip.* weights: an OpenAI-layout CLIP of the golden shape."""
    from harness.backbone import read_state_dict

    state = read_state_dict(DATA / "golden" / "clip4clip_meanP_official_state_dict.pt")
    path = tmp_path_factory.mktemp("clip") / "clip_openai_layout.pt"
    torch.save({k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.")}, path)
    return path


def load_golden(name: str) -> dict:
    return torch.load(DATA / "golden" / name, weights_only=True)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    """One cache for every test that runs the synthetic benchmark: it is generated once per session."""
    return tmp_path_factory.mktemp("synthetic-cache")
