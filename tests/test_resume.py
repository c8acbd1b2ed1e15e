"""Interrupted training resumes exactly: state files with checksums, in-process resume, and a real SIGKILL."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import RecordingTracker, easy_split, make_tiny_project, stage_command, stage_env

from segpipe.config import DataParams
from segpipe.data.loader import make_loader
from segpipe.models import build_model
from segpipe.tasks.segment import SegmentTask
from segpipe.training.checkpoint import load_checkpoint
from segpipe.training.state import (
    StateStore,
    capture_rng,
    decode_state,
    encode_state,
    read_state,
    restore_rng,
)
from segpipe.training.trainer import Trainer, TrainerSettings

ROOT = Path(__file__).resolve().parents[1]


def small_fit(store: StateStore | None, resume=None, every: int = 0, streaming: bool = False):
    torch.manual_seed(0)
    model = build_model("unet", 2, options={"depth": 2, "base_channels": 4})
    device = torch.device("cpu")
    data = DataParams(in_memory="false" if streaming else "true", workers=2)
    train = make_loader(
        easy_split(24, 0), data, 4, device, shuffle=True, hflip=True, vflip=True, seed=3, drop_last=True
    )
    val = make_loader(easy_split(8, 1), data, 8, device)
    tracker = RecordingTracker()
    settings = TrainerSettings(3, 5e-3, 1e-4, progress=False, checkpoint_every_steps=every)
    result = Trainer(SegmentTask(2, 255), settings, tracker, states=store).fit(model, train, val, resume)
    return model, result, tracker


def test_state_store_skips_a_corrupt_state_and_states_of_other_settings(tmp_path, capfd):
    """A training state cut short (checksum mismatch) is skipped with a warning and the previous one used;
    states saved with other settings are never resumed."""
    store = StateStore(tmp_path, "digest-a", keep=2)
    store.save(1, {"value": torch.tensor([1.0])})
    newest = store.save(2, {"value": torch.tensor([2.0])})
    store.save(3, {"value": torch.tensor([3.0])})
    assert not (tmp_path / "state-00000001.safetensors").exists()  # only the newest two are kept
    assert torch.equal(store.latest().payload["value"], torch.tensor([3.0]))

    latest = tmp_path / "state-00000003.safetensors"
    latest.write_bytes(latest.read_bytes()[:-10])  # cut short
    found = store.latest()
    assert found.path == newest and torch.equal(found.payload["value"], torch.tensor([2.0]))
    assert "checksum does not match" in capfd.readouterr().err

    assert StateStore(tmp_path, "digest-b").latest() is None
    assert "different settings" in capfd.readouterr().err
    store.clear()
    assert not tmp_path.exists()


def test_a_state_file_holds_tensors_and_json_and_reads_back_exactly(tmp_path):
    """Reading a state runs no code: tensors in safetensors, the structure as JSON in its header."""
    random.seed(11)
    payload = {
        "epoch": 2,
        "best_score": -math.inf,
        "run_key": None,
        "betas": (0.9, 0.999),
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}}},
        "history": [{"validation": {"val_miou": 0.123456789012345}}],
        "rng": capture_rng(),
    }
    expected_draw = random.random()
    decoded = decode_state(encode_state(payload))
    assert decoded["optimizer"]["state"][0]["exp_avg"].equal(payload["optimizer"]["state"][0]["exp_avg"])
    assert decoded["best_score"] == -math.inf and decoded["betas"] == (0.9, 0.999)
    assert decoded["history"] == payload["history"] and decoded["run_key"] is None
    restore_rng(decoded["rng"])
    assert random.random() == expected_draw

    with pytest.raises(TypeError, match="cannot hold object values"):
        encode_state({"thing": object()})
    pickled = tmp_path / "state.pt"
    torch.save(payload, pickled)
    with pytest.raises(ValueError, match="not a segpipe training state"):
        read_state(pickled)


@pytest.mark.parametrize("streaming", [False, True], ids=["in-memory", "streaming"])
def test_training_resumed_from_a_mid_epoch_state_ends_with_identical_weights(tmp_path, streaming):
    """Training resumed from a state saved in the middle of epoch 2 ends with bit-identical weights, losses
    and validation scores to an uninterrupted run, on either data path."""
    reference, reference_result, _ = small_fit(None, streaming=streaming)

    store = StateStore(tmp_path / "states", "digest", keep=50)
    small_fit(store, every=4, streaming=streaming)
    states = sorted((tmp_path / "states").glob("state-*.safetensors"))
    mid_epoch = [p for p in states if read_state(p)["batch"] != 0]
    assert mid_epoch, "no mid-epoch state was written"
    chosen = mid_epoch[len(mid_epoch) // 2]  # somewhere inside epoch 2
    for later in states:
        if later.name > chosen.name:
            later.unlink()
    resume = store.latest()
    assert resume.path == chosen and resume.payload["epoch"] == 2

    resumed, resumed_result, tracker = small_fit(store, resume, streaming=streaming)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [step for step, _ in tracker.metrics] == [2, 3]  # epoch 1 was logged before the interruption
    assert [r.validation for r in resumed_result.history] == [r.validation for r in reference_result.history]
    assert [r.train_loss for r in resumed_result.history] == [r.train_loss for r in reference_result.history]


# ---------------------------------------------------------------------------------------------------------
# The real thing: the train stage killed with SIGKILL in the middle of an epoch, then run again.


EPOCHS = 4


def make_project(path: Path, precision: str = "fp32") -> Path:
    """A prepared project (96 training images of 64×64) whose unet training saves its state every 3 of its 24
    steps an epoch."""
    train = {"epochs": EPOCHS, "batch_size": 4, "deterministic": True, "precision": precision,
             "checkpoint_every_steps": 3, "augment": {"hflip": True, "vflip": True},
             "models": {"unet": {"depth": 2, "base_channels": 8}}}  # fmt: skip
    prepare = {"image_size": [64, 64], "splits": {"train": 96, "val": 8, "test": 8}}
    return make_tiny_project(path, train=train, prepare=prepare)


def train_env() -> dict[str, str]:
    return stage_env(SEGPIPE_PIPELINE_RUN="resume-test")


def newest_state(states: Path) -> dict | None:
    files = sorted(states.glob("state-*.safetensors"))
    return read_state(files[-1]) if files else None


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_stage_killed_mid_epoch_resumes_to_the_same_weights_and_the_same_run(tmp_path, precision):
    """The train stage (a real process) is killed with SIGKILL in the middle of an epoch after the first (the
    earliest it is seen past batch 6 of epoch 2) and run again: it
    resumes and ends with exactly the weights, metrics and curves of an uninterrupted run, in the same MLflow
    run (one run, every epoch's metrics once), in fp32 and in bf16 autocast."""
    uninterrupted = make_project(tmp_path / "uninterrupted", precision)
    subprocess.run(
        stage_command(uninterrupted),
        cwd=uninterrupted,
        env=train_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )

    killed = make_project(tmp_path / "killed", precision)
    states = killed / ".segpipe" / "resume" / "segment" / "unet"
    process = subprocess.Popen(
        stage_command(killed),
        cwd=killed,
        env=train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        state = newest_state(states) if list(states.glob("state-*.safetensors.sha256")) else None
        if state is not None and (state["epoch"], state["batch"]) >= (2, 6):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    interrupted_at = newest_state(states)
    assert 2 <= interrupted_at["epoch"] <= EPOCHS and 0 < interrupted_at["batch"] < 24  # mid-epoch
    assert not (killed / "models" / "unet" / "history.json").exists()

    resumed = subprocess.run(
        stage_command(killed), cwd=killed, env=train_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert not states.exists()  # a finished run leaves no state behind

    expected, expected_meta = load_checkpoint(uninterrupted / "models" / "unet" / "model.safetensors")
    actual, actual_meta = load_checkpoint(killed / "models" / "unet" / "model.safetensors")
    assert actual_meta.epoch == expected_meta.epoch
    for key, value in expected.state_dict().items():
        assert torch.equal(value, actual.state_dict()[key]), key
    projects = (uninterrupted, killed)
    curves = [(p / "reports" / "curves" / "unet.csv").read_text().splitlines() for p in projects]
    assert len(curves[1]) == EPOCHS + 1  # header and every epoch, the ones before the kill included
    assert [line.split(",")[:4] for line in curves[0]] == [line.split(",")[:4] for line in curves[1]]
    history = [json.loads((p / "models" / "unet" / "history.json").read_text()) for p in projects]
    for before, after in zip(history[0]["epochs"], history[1]["epochs"], strict=True):
        assert (before["train_loss"], before["validation"]) == (after["train_loss"], after["validation"])

    # deferred tracking (the default): both processes recorded into the run's one spool; sending it makes
    # one run
    spools = sorted((killed / ".segpipe" / "tracking-spool").glob("*.jsonl"))
    assert len(spools) == 1, spools
    segpipe = str(Path(sys.executable).with_name("segpipe"))
    sync = subprocess.run(
        [segpipe, "--params", str(killed / "params.yaml"), "sync"],
        cwd=killed,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sync.returncode == 0, sync.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{killed / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=["segpipe-synthetic"],
        filter_string="attributes.run_name = 'unet'",
        output_format="list",
    )
    assert len(runs) == 1, "the resumed stage started a second MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    record = json.loads((killed / "models" / "unet" / "run.json").read_text())
    assert record["tracking"] == "deferred" and run.data.tags["segpipe.run_key"] == record["run_key"]
    assert run.data.tags["segpipe.model_uri"].startswith("models:/")
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_miou")]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1))
