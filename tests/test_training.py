"""The trainer learns, checkpoints the best epoch, reports to the tracker and the curves file; stage guards
fire early."""

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from segpipe.config import load_params
from segpipe.data.loader import BatchLoader
from segpipe.data.manifest import DatasetInfo
from segpipe.models import build_model
from segpipe.paths import ProjectPaths
from segpipe.stages import train as train_stage
from segpipe.stages.train import check_image_size
from segpipe.tasks.class_weights import class_weights_for
from segpipe.tasks.segment import SegmentTask, evaluate_split
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from segpipe.training.curves import write_curves
from segpipe.training.trainer import EpochRecord, Trainer, TrainerSettings, TrainResult, lr_factor


def test_fit_learns_checkpoints_best_and_tracks(tmp_path, easy_data, tracker):
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = build_model("unet", 2, options={"depth": 2, "base_channels": 8})
    train = BatchLoader(easy_data(32, 0), 8, device, shuffle=True, hflip=True, seed=0, drop_last=True)
    val = BatchLoader(easy_data(8, 1), 8, device)
    best_epochs = []

    def on_best(best_model, record):
        best_epochs.append(record.epoch)
        meta = CheckpointMeta(
            "unet",
            {"depth": 2, "base_channels": 8},
            2,
            ("bg", "square"),
            (32, 32),
            record.epoch,
            "val_miou",
            record.validation["val_miou"],
        )
        save_checkpoint(tmp_path / "model.safetensors", best_model, meta)

    settings = TrainerSettings(6, 5e-3, 0.0, progress=False)
    trainer = Trainer(SegmentTask(2, 255), settings, tracker, on_best=on_best)
    result = trainer.fit(model, train, val)

    assert [step for step, _ in tracker.metrics] == [1, 2, 3, 4, 5, 6]
    assert all({"train_loss", "val_loss", "val_miou"} <= set(m) for _, m in tracker.metrics)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0]
    assert result.monitor == "val_miou" and result.best_score > 0.8
    assert best_epochs[-1] == result.best_epoch
    assert result.best_score == max(r.validation["val_miou"] for r in result.history)

    restored, meta = load_checkpoint(tmp_path / "model.safetensors")
    assert meta.epoch == result.best_epoch and meta.task == "segment" and meta.class_names == ("bg", "square")
    _, matrix = evaluate_split(restored, val, 2, 255)
    assert np.trace(matrix) / matrix.sum() > 0.9


def test_checkpoint_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the train stage"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_image_size_must_suit_output_stride():
    check_image_size("fcn8s", 32, (128, 96))
    with pytest.raises(ValueError, match=r"prepare.image_size.*\[100, 128\].*\[96, 128\]"):
        check_image_size("fcn8s", 32, (100, 128))
    check_image_size("fcn8s", 32, None, (64, 96))  # images of mixed sizes train on crops
    with pytest.raises(ValueError, match=r"train.crop is \[100, 64\].*\[96, 64\]"):
        check_image_size("fcn8s", 32, (128, 128), (100, 64))
    with pytest.raises(ValueError, match=r"different sizes.*set train.crop"):
        check_image_size("fcn8s", 32, None)


def test_curves_file_has_one_row_per_epoch_with_the_tasks_metrics(tmp_path):
    records = [
        EpochRecord(
            epoch,
            1.0 / epoch,
            1e-3 / epoch,
            2.0,
            1.5,
            {"val_loss": 0.5 / epoch, "val_psnr": 20.0 + epoch, "val_ssim": 0.5},
        )
        for epoch in (1, 2)
    ]
    path = tmp_path / "curves" / "denoise" / "autoencoder.csv"
    write_curves(path, TrainResult("val_psnr", history=records[:1]))
    write_curves(path, TrainResult("val_psnr", history=records))  # rewritten as epochs are added
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["epoch", "train_loss", "val_loss", "val_psnr", "val_ssim", "lr", "seconds"]
    assert frame["epoch"].tolist() == [1, 2] and frame["val_psnr"].tolist() == [21.0, 22.0]
    assert frame["train_loss"].tolist() == [1.0, 0.5] and frame["lr"].tolist() == [1e-3, 5e-4]
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left beside it


RUN_WITHOUT_TRACKING = """
import sys
from pathlib import Path

from segpipe.config import load_params
from segpipe.paths import ProjectPaths
from segpipe.stages.train import run_train

root = Path(sys.argv[1])
result = run_train(load_params(root / "params.yaml"), "unet", ProjectPaths(root), progress=False)
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"mlflow", "dvc", "great_expectations"})
print("tracking libraries:", ",".join(loaded) or "none", "epochs:", len(result.history))
"""


def test_train_stage_without_tracking_writes_curves_and_imports_no_tracking_library(tmp_path, tiny_project):
    """With ``tracking.enabled: false`` the stage runs on a host without MLflow, DVC or great-expectations: it
    imports none of them, and still writes the checkpoint, history and curves."""
    project = tiny_project(tmp_path / "project", tracking={"enabled": False})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_TRACKING, str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tracking libraries: none epochs: 2" in done.stdout
    curves = pd.read_csv(project / "reports" / "curves" / "unet.csv")
    assert list(curves.columns) == ["epoch", "train_loss", "val_loss", "val_miou", "lr", "seconds"]
    history = json.loads((project / "models" / "unet" / "history.json").read_text())
    assert curves["epoch"].tolist() == [1, 2]
    assert curves["val_miou"].tolist() == [e["validation"]["val_miou"] for e in history["epochs"]]
    assert curves["train_loss"].tolist() == [e["train_loss"] for e in history["epochs"]]
    _, meta = load_checkpoint(project / "models" / "unet" / "model.safetensors")
    assert meta.epoch == history["best_epoch"]
    assert json.loads((project / "models" / "unet" / "run.json").read_text())["tracking"] == "off"


def test_train_stage_uses_the_loss_class_weights_and_schedule_of_params(
    tmp_path, monkeypatch, capsys, tiny_project, tracker
):
    """``ce+dice`` with median-frequency weights and a warmed-up poly schedule: the weights are computed from
    the training split, printed, logged as run params and recorded in history.json with the loss."""
    recipe = {
        "epochs": 3,
        "schedule": "poly",
        "warmup_epochs": 1,
        "loss": {"name": "ce+dice", "weights": [1.0, 0.5], "class_weights": "median_frequency"},
    }
    project = tiny_project(tmp_path / "project", train=recipe)
    monkeypatch.setattr(train_stage, "_tracking", lambda *args: contextlib.nullcontext(tracker))
    params = load_params(project / "params.yaml")
    train_stage.run_train(params, "unet", ProjectPaths(project), progress=True)

    prepared = project / "data" / "prepared"
    weights = class_weights_for("median_frequency", prepared, DatasetInfo.load(prepared).num_classes)
    assert len(set(weights)) > 1 and min(weights) > 0  # the synthetic classes are far from balanced
    history = json.loads((project / "models" / "unet" / "history.json").read_text())
    assert history["loss"] == {
        "name": "ce+dice",
        "weights": [1.0, 0.5],
        "class_weighting": "median_frequency",
        "class_weights": weights,
    }
    assert tracker.params["loss"] == "ce+dice" and tracker.params["class_weighting"] == "median_frequency"
    assert tracker.params["class_weights"] == "[" + ", ".join(f"{w:.4g}" for w in weights) + "]"
    assert tracker.params["schedule"] == "poly" and tracker.params["warmup_epochs"] == 1
    assert f"class weights (median_frequency) {tracker.params['class_weights']}" in capsys.readouterr().out
    steps = 4  # 16 training images in batches of 4
    expected = [0.002 * lr_factor(epoch * steps, 3 * steps, "poly", steps) for epoch in range(3)]
    assert [epoch["lr"] for epoch in history["epochs"]] == expected
    assert expected[0] == 0.002 / steps and expected[1] == 0.002
