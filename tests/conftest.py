from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def load_golden(name: str) -> dict:
    return torch.load(DATA / "golden" / name, weights_only=True)
