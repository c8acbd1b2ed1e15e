"""Shared fixtures: a tiny prepared synthetic dataset."""

from pathlib import Path

import pytest

from segpipe.config import PrepareParams
from segpipe.data.prepare import prepare_dataset

TINY_PREPARE = PrepareParams(seed=7, image_size=(32, 48), splits={"train": 6, "val": 3, "test": 3})


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    out = tmp_path / "prepared"
    prepare_dataset(TINY_PREPARE, out)
    return out
