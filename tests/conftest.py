"""Shared fixtures: a tiny prepared synthetic dataset."""

from pathlib import Path

import pytest
import torch

from segpipe.config import PrepareParams
from segpipe.data.prepare import prepare_dataset

TINY_PREPARE = PrepareParams(seed=7, image_size=(32, 48), splits={"train": 6, "val": 3, "test": 3})


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    out = tmp_path / "prepared"
    prepare_dataset(TINY_PREPARE, out)
    return out


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models run fastest on one thread (and do not fight a busy machine for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
