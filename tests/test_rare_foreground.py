"""A rare, thin foreground on binary folder data (under 10 % of pixels, 1-px lines, images of two sizes):
class weights, Tversky and crops train a 2-class model that finds the foreground."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import make_tiny_project
from PIL import Image

from segpipe.config import load_params
from segpipe.data.cache import load_split
from segpipe.data.manifest import DatasetInfo
from segpipe.paths import ProjectPaths
from segpipe.stages.evaluate import run_evaluate
from segpipe.stages.train import resolve_class_weights, run_train


def write_thin_lines(root: Path) -> None:
    """Dark noisy images with two bright 1-px lines each; the mask marks the lines (class 1)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 4), ("test", 4)):
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True)
        for index in range(count):
            height, width = (40, 48) if index % 2 else (48, 40)
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[rng.integers(0, height), :] = 1
            mask[:, rng.integers(0, width)] = 1
            image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
            image[mask == 1] = 230
            Image.fromarray(image).save(root / split / "images" / f"{split}{index}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{split}{index}.png")
    (root / "classes.txt").write_text("background\nline\n")


def test_weighted_tversky_on_crops_finds_a_rare_thin_foreground(tmp_path):
    write_thin_lines(tmp_path / "raw")
    project = make_tiny_project(
        tmp_path / "project",
        train={
            "epochs": 8,
            "crop": [32, 32],
            "loss": {"name": "ce+tversky", "class_weights": "median_frequency"},
            "models": {"unet": {"depth": 2, "base_channels": 8}},
        },
        tracking={"enabled": False},
        prepare={"dataset": "folder", "root": str(tmp_path / "raw"), "image_size": None},
    )
    paths, params = ProjectPaths(project), load_params(project / "params.yaml")
    info = DatasetInfo.load(paths.prepared)
    assert info.num_classes == 2 and info.image_size is None  # two native sizes, kept
    train = load_split(paths.prepared, "train")
    share = sum(int(train.mask(i).sum()) for i in range(len(train))) / sum(
        int(np.prod(train.shape(i))) for i in range(len(train))
    )
    assert share < 0.1
    background, line = resolve_class_weights(params, info, paths)
    assert line > 5 * background  # the rare class weighs more
    run_train(params, "unet", paths, progress=False)
    metrics = run_evaluate(params, "unet", paths)
    assert metrics["test_iou_line"] > 0.3
