"""Shared fixtures: seeding, tiny prepared data, tiny projects and running their stages as DVC does."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from segpipe.config import PrepareParams
from segpipe.data.cache import SplitArrays
from segpipe.data.prepare import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY_PREPARE = PrepareParams(seed=7, image_size=(32, 48), splits={"train": 6, "val": 3, "test": 3})


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models run fastest on one thread (and do not fight a busy machine for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """A tiny prepared synthetic dataset (6/3/3 images of 32×48)."""
    out = tmp_path / "prepared"
    prepare_dataset(TINY_PREPARE, out)
    return out


def make_tiny_project(
    path: Path, train: dict | None = None, tracking: dict | None = None, prepare: dict | None = None
) -> Path:
    """``path`` with a ``params.yaml`` (16/4/4 images of 32×32, unet of depth 2, 2 epochs, batch 4; ``train``,
    ``tracking`` and ``prepare`` update those sections) and its data prepared and validated."""
    from segpipe.config import parse_params
    from segpipe.data.validation import validate_prepared

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(
        {"image_size": [32, 32], "splits": {"train": 16, "val": 4, "test": 4}, **(prepare or {})}
    )
    defaults = {"architectures": ["unet"], "epochs": 2, "batch_size": 4, "augment": {"hflip": True}}
    params["train"].update(
        {**defaults, "models": {"unet": {"depth": 2, "base_channels": 4}}, **(train or {})}
    )
    params["tracking"] = {"enabled": True, "uri": "sqlite:///mlflow.db", **(tracking or {})}
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare_dataset(parse_params(params).prepare, path / "data" / "prepared")
    validate_prepared(path / "data" / "prepared", path / "reports" / "validation" / "summary.json")
    return path


@pytest.fixture(scope="session")
def tiny_project() -> Callable[..., Path]:
    """``tiny_project(path, train=None, tracking=None, prepare=None)``: a prepared and validated project (see
    :func:`make_tiny_project`)."""
    return make_tiny_project


def stage_command(project: Path, stage: str = "train", architecture: str = "unet") -> list[str]:
    """A stage's command line for ``project``, as DVC runs it (``pipelines/<stage>.py``)."""
    return [sys.executable, str(ROOT / "pipelines" / f"{stage}.py"), "--root", str(project),
            "--params", str(project / "params.yaml"), "--architecture", architecture]  # fmt: skip


def stage_env(**extra: str) -> dict[str, str]:
    """The environment stage processes run in: one thread each, no tracking server from the caller's shell."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="session")
def run_stage() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_stage(project, stage="train", architecture="unet", env=None)``: run a stage script to its end in
    ``project`` and return the finished process (output captured as text)."""

    def run(
        project: Path, stage: str = "train", architecture: str = "unet", env: dict[str, str] | None = None
    ):
        command = stage_command(project, stage, architecture)
        return subprocess.run(
            command, cwd=project, env=env or stage_env(), capture_output=True, text=True, timeout=600
        )

    return run


class RecordingTracker:
    """A tracker that keeps what it is given, for assertions."""

    run_key = None

    def __init__(self) -> None:
        self.params: dict[str, object] = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    def log_params(self, params) -> None:
        self.params.update(params)

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_model(self, checkpoint, input_example) -> None:
        return None


@pytest.fixture
def tracker() -> RecordingTracker:
    return RecordingTracker()


def easy_split(count: int, seed: int) -> SplitArrays:
    """Bright squares on dark noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (count, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((count, 32, 32), dtype=np.uint8)
    for i in range(count):
        y, x = rng.integers(0, 20, 2)
        images[i, y : y + 12, x : x + 12] = 220
        masks[i, y : y + 12, x : x + 12] = 1
    return SplitArrays(images, masks)


@pytest.fixture(scope="session")
def easy_data() -> Callable[[int, int], SplitArrays]:
    """``easy_data(count, seed)``: bright squares on dark noise (class 1) over class 0, 32×32."""
    return easy_split
