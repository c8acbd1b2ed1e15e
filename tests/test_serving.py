"""``mlflow models serve`` answers a real HTTP request for a registered segpipe model, with the logits whose
argmax is ``segpipe predict``'s mask, without unpickling anything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from PIL import Image

from segpipe.cli import main
from segpipe.models import build_model
from segpipe.serving import PICKLE_SWITCH
from segpipe.serving.logged import log_checkpoint_model
from segpipe.training.checkpoint import CheckpointMeta, save_checkpoint

NAME = "segpipe-serving"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def registered(tmp_path, monkeypatch) -> tuple[str, Path]:
    """(tracking URI, params file) of a store whose ``segpipe-serving@challenger`` is a tiny U-Net."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    options = {"depth": 2, "base_channels": 4}
    checkpoint = tmp_path / "models" / "unet" / "model.safetensors"
    checkpoint.parent.mkdir(parents=True)
    meta = CheckpointMeta("unet", options, 3, ("a", "b", "c"), (32, 32), 1, "val_miou", 0.5)
    save_checkpoint(checkpoint, build_model("unet", 3, options=options), meta)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("serving"))
    version = mlflow.register_model(log_checkpoint_model(run.info.run_id, checkpoint, 3), NAME).version
    client.set_registered_model_alias(NAME, "challenger", version)
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking: {{uri: '{uri}'}}\n")
    return uri, params


def serve(uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow models serve`` for the challenger, with MLflow's pickle loading switched off."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, PICKLE_SWITCH: "false"}
    mlflow_command = str(Path(sys.executable).parent / "mlflow")
    command = [
        mlflow_command,
        "models",
        "serve",
        "-m",
        f"models:/{NAME}@challenger",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with log.open("w") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_until_up(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_logits_of_segpipe_predict(registered, tmp_path):
    uri, params = registered
    image = np.random.default_rng(0).integers(0, 255, (30, 44, 3), dtype=np.uint8)  # not a multiple of 4
    Image.fromarray(image).save(tmp_path / "photo.png")
    argv = [
        "--params",
        str(params),
        "predict",
        str(tmp_path / "photo.png"),
        "--model",
        f"models:/{NAME}@challenger",
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--precision",
        "fp32",
    ]  # the served model runs in fp32
    assert main(argv) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    # the tensor segpipe predict runs: [0, 1], zero-padded to a multiple of the output stride (4)
    tensor = np.zeros((1, 3, 32, 44), np.float32)
    tensor[0, :, :30, :] = image.transpose(2, 0, 1) / 255.0

    port, log = free_port(), tmp_path / "serve.log"
    process = serve(uri, port, log)
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}", log)
        response = requests.post(
            f"http://127.0.0.1:{port}/invocations", json={"inputs": tensor.tolist()}, timeout=60
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    assert response.status_code == 200, response.text[:2000]
    logits = np.asarray(response.json()["predictions"], dtype=np.float32)
    assert logits.shape == (1, 3, 32, 44)
    np.testing.assert_array_equal(logits[0].argmax(0)[:30, :44], mask)
