"""Faults during training: a NaN loss stops the run cleanly; a full, read-only or size-limited disk gives a
clear error and leaves earlier outputs as they were."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import RecordingTracker, easy_split, stage_command, stage_env
from test_resume import make_project

from segpipe import io
from segpipe.config import TrackingParams
from segpipe.data.loader import BatchLoader
from segpipe.models import build_model
from segpipe.tasks.segment import SegmentTask
from segpipe.tracking.mlflow_tracking import start_run
from segpipe.training.state import StateStore
from segpipe.training.trainer import Trainer, TrainerSettings, TrainingDiverged


class DivergingTask(SegmentTask):
    """Segmentation whose loss turns NaN from the ``bad_step``-th training step on."""

    def __init__(self, bad_step: int):
        super().__init__(2, 255)
        self.bad_step, self.steps = bad_step, 0

    def loss(self, outputs, targets):
        self.steps += 1
        loss = super().loss(outputs, targets)
        return loss * float("nan") if self.steps >= self.bad_step else loss


def diverging_fit(tmp_path: Path, tracker) -> StateStore:
    torch.manual_seed(0)
    model = build_model("unet", 2, options={"depth": 2, "base_channels": 4})
    train = BatchLoader(
        easy_split(24, 0), 4, torch.device("cpu"), shuffle=True, seed=0, drop_last=True
    )  # 6 steps
    val = BatchLoader(easy_split(8, 1), 8, torch.device("cpu"))
    store = StateStore(tmp_path / "states", "digest", keep=10)
    settings = TrainerSettings(3, 5e-3, 0.0, progress=False, checkpoint_every_steps=4)
    Trainer(DivergingTask(bad_step=9), settings, tracker, states=store).fit(model, train, val)
    return store


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_state(tmp_path):
    """The loss turns NaN at step 9: training stops with an error naming epoch 2, step 9 and the saved states;
    no state from the diverged steps is saved, the last one holds finite weights."""
    with pytest.raises(TrainingDiverged, match=r"NaN/Inf at epoch 2, step 9 \(batch 3 of 6\)") as error:
        diverging_fit(tmp_path, RecordingTracker())
    assert str(tmp_path / "states") in str(error.value) and "train.lr" in str(error.value)
    kept = sorted(p.name for p in (tmp_path / "states").glob("state-*.safetensors"))
    assert kept == [
        "state-00000004.safetensors",
        "state-00000006.safetensors",
        "state-00000008.safetensors",
    ]  # nothing from step 9 on
    last = StateStore(tmp_path / "states", "digest").latest().payload
    assert all(torch.isfinite(value).all() for value in last["model"].values() if value.is_floating_point())


def test_nan_loss_marks_the_mlflow_run_failed(tmp_path, monkeypatch):
    """A diverged training marks its MLflow run FAILED, with the metrics of the good epochs kept."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(TrainingDiverged), start_run(tracking, "faults", "unet", {}) as tracker:
        diverging_fit(tmp_path, tracker)
    run = mlflow.MlflowClient().get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(tracker.run_id, "val_miou")] == [1]


def test_write_errors_name_the_file_and_the_fix_and_keep_the_old_file(tmp_path, monkeypatch):
    """A write failing with ENOSPC gives an error naming the file and the fix; the old file is unchanged and
    no temporary file is left."""
    target = tmp_path / "reports" / "metrics.json"
    io.write_json(target, {"old": True})

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", disk_full)
    with pytest.raises(
        io.OutputWriteError,
        match=r"metrics.json: cannot be written \(No space left on device\); free disk space",
    ):
        io.write_json(target, {"old": False})
    assert io.read_json(target) == {"old": True}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]  # no temporary file left behind


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB file system (needs root; the size-limit test below covers the same path without it)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=256k"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_and_read_only_disks_give_clear_errors(small_disk):
    """On a real full tmpfs and after remounting it read-only, writes fail with a clear error and the earlier
    checkpoint stays byte-identical."""
    target = small_disk / "model.safetensors"
    io.write_bytes(target, b"earlier checkpoint")
    with pytest.raises(io.OutputWriteError, match="No space left on device.*free disk space"):
        io.write_bytes(target, bytes(1 << 20))
    assert target.read_bytes() == b"earlier checkpoint"

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(io.OutputWriteError, match="Read-only file system.*writable folder"):
        io.write_bytes(target, b"new")
    assert target.read_bytes() == b"earlier checkpoint"


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.slow
def test_train_stage_on_a_size_limited_disk_fails_clearly_and_keeps_the_earlier_model(tmp_path):
    """The train stage under a 64 KiB file-size limit (ulimit -f) exits 1 with a one-line error, no traceback,
    and the previous model.safetensors / model.json pair is unchanged."""
    project = make_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    params["tracking"]["enabled"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(
        stage_command(project), cwd=project, env=stage_env(), check=True, capture_output=True, timeout=600
    )
    model = project / "models" / "unet" / "model.safetensors"
    earlier, earlier_meta = model.read_bytes(), model.with_suffix(".json").read_bytes()
    assert len(earlier) > 64 * 1024

    failed = subprocess.run(
        stage_command(project),
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_file_size,
    )
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "cannot be written (File too large); raise the file-size limit" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert model.read_bytes() == earlier and model.with_suffix(".json").read_bytes() == earlier_meta
