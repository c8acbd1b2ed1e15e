"""A tiny prepared and validated segpipe project (synthetic data) for tests that run stages as processes."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_tiny_project(path: Path, train: dict | None = None, tracking: dict | None = None) -> Path:
    """``path`` with a ``params.yaml`` (16/4/4 images of 32×32, unet of depth 2, 2 epochs, batch 4; ``train`` and
    ``tracking`` update those sections) and its data prepared and validated."""
    from segpipe.config import parse_params
    from segpipe.data.prepare import prepare_dataset
    from segpipe.data.validation import validate_prepared

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(image_size=[32, 32], splits={"train": 16, "val": 4, "test": 4})
    params["train"].update({"architectures": ["unet"], "epochs": 2, "batch_size": 4, "augment": {"hflip": True},
                            "models": {"unet": {"depth": 2, "base_channels": 4}}, **(train or {})})
    params["tracking"] = {"enabled": True, "uri": "sqlite:///mlflow.db", **(tracking or {})}
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare_dataset(parse_params(params).prepare, path / "data" / "prepared")
    validate_prepared(path / "data" / "prepared", path / "reports" / "validation" / "summary.json")
    return path


def train_command(project: Path, architecture: str = "unet") -> list[str]:
    """The train stage's command line for ``project``, as DVC runs it."""
    import sys

    return [sys.executable, str(ROOT / "pipelines" / "train.py"), "--root", str(project), "--params",
            str(project / "params.yaml"), "--architecture", architecture]
