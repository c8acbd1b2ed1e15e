"""Training outlives an MLflow server outage: calls it misses are spooled locally and reach it when it is
back, at the end of the run, or by ``sync_spools`` (``segpipe sync``); a resumed training continues its
run."""

import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from mlflow_server import MlflowServer

from segpipe.cli import main
from segpipe.config import TrackingParams
from segpipe.models import build_model
from segpipe.serving.logged import load_logged_model
from segpipe.tracking.mlflow_tracking import RunWriter, ServerUnreachable, start_run, sync_spools
from segpipe.tracking.spool import SPOOL_ENV
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint

PIPELINE = "outage-test"


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(
        tmp_path
    )  # the default spool dir is .segpipe/tracking-spool under the working directory
    server = MlflowServer(tmp_path / "server")
    yield server
    server.stop()


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A tiny U-Net's checkpoint pair, as the train stage writes it."""
    torch.manual_seed(0)
    model = build_model("unet", 2, options={"depth": 2, "base_channels": 4})
    path = tmp_path / "models" / "unet" / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_checkpoint(
        path,
        model,
        CheckpointMeta("unet", {"depth": 2, "base_channels": 4}, 2, ("a", "b"), (8, 8), 1, "val_miou", 0.5),
    )
    return path


EXAMPLE = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)


def assert_run_complete(client: mlflow.MlflowClient, run_id: str, epochs: int, checkpoint: Path) -> None:
    """The run has its params, one val_miou per epoch at the right step, a model "model" that rebuilds the
    checkpoint, FINISHED."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.01"}
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_miou"))
    assert history == [(epoch, epoch / 10) for epoch in range(1, epochs + 1)]
    [output] = run.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.name == "model" and logged.source_run_id == run_id
    loaded, _ = load_logged_model(logged.model_uri)
    expected, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.from_numpy(EXAMPLE)), expected(torch.from_numpy(EXAMPLE)))


def test_a_server_restart_mid_training_loses_no_epoch(server, tmp_path, capsys, checkpoint):
    server.start()
    with start_run(
        TrackingParams(uri=server.uri), "toy", "unet", {"architecture": "unet"}, pipeline=PIPELINE
    ) as tracker:
        tracker.log_params({"lr": 0.01})
        for epoch in range(1, 7):
            tracker.log_metrics({"val_miou": epoch / 10}, step=epoch)
            if epoch == 2:
                server.stop()
            if epoch == 4:
                server.start()
        model_uri = tracker.log_model(checkpoint, EXAMPLE)

    client = mlflow.MlflowClient(server.uri)
    assert_run_complete(client, tracker.run_id, epochs=6, checkpoint=checkpoint)
    assert model_uri == f"models:/{client.get_run(tracker.run_id).outputs.model_outputs[0].model_id}"
    spools = tmp_path / ".segpipe" / "tracking-spool"
    err = capsys.readouterr().err
    assert err.count("is unreachable") == 1
    assert f"MLflow at {server.uri} is unreachable (" in err and "Connection refused" in err
    assert f"buffering to {spools}/unet-" in err and "or run `segpipe sync`" in err
    assert (
        f"MLflow at {server.uri} is reachable again: sent 2 buffered tracking calls (run {tracker.run_id})"
        in err
    )
    assert list(spools.iterdir()) == []  # sent, so removed


def test_a_run_while_the_server_is_down_is_kept_and_sent_by_sync(
    server, tmp_path, capsys, monkeypatch, checkpoint
):
    spools = tmp_path / "spools"
    monkeypatch.setenv(SPOOL_ENV, str(spools))
    began = time.monotonic()
    with start_run(
        TrackingParams(uri=server.uri), "toy", "unet", {"architecture": "unet"}, pipeline=PIPELINE
    ) as tracker:
        tracker.log_params({"lr": 0.01})
        for epoch in range(1, 4):
            tracker.log_metrics({"val_miou": epoch / 10}, step=epoch)
        model_uri = tracker.log_model(checkpoint, EXAMPLE)
        assert sync_spools(server.uri) == []  # a running training's spool is its own to send
    assert time.monotonic() - began < 15  # MLflow's own retries would take minutes
    assert tracker.run_id is None and model_uri is None
    [spool] = spools.glob("*.jsonl")
    err = capsys.readouterr().err
    assert err.count("is unreachable") == 1 and f"buffering to {spool};" in err
    assert f"is still unreachable: this run's tracking is kept in {spool}; send it with `segpipe sync`" in err

    with pytest.raises(ServerUnreachable, match="is kept: run `segpipe sync` again"):
        sync_spools(server.uri)
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking: {{uri: '{server.uri}'}}\n")
    assert main(["--params", str(params), "sync"]) == 1  # the CLI: one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "segpipe sync" in err and "Traceback" not in err
    server.start()
    send_for_real = RunWriter.apply

    def drop_at_epoch_2(self, call, models_dir=None):
        if call.get("step") == 2:
            raise requests.ConnectionError("connection dropped")
        send_for_real(self, call, models_dir)

    monkeypatch.setattr(RunWriter, "apply", drop_at_epoch_2)
    with pytest.raises(ServerUnreachable, match="connection dropped"):
        sync_spools(TrackingParams(uri=server.uri))  # created the run and sent epoch 1, then lost the server
    monkeypatch.setattr(RunWriter, "apply", send_for_real)

    [(sent_spool, run_id)] = sync_spools(TrackingParams(uri=server.uri))
    client = mlflow.MlflowClient(server.uri)
    assert sent_spool == spool and not spool.exists() and not spool.with_suffix(".models").exists()
    assert_run_complete(client, run_id, epochs=3, checkpoint=checkpoint)  # epoch 1 sent once, not twice
    run = client.get_run(run_id)
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["segpipe.pipeline"] == PIPELINE
    assert run.data.tags["architecture"] == "unet" and run.info.run_name == "unet"
    assert len(client.search_runs([run.info.experiment_id])) == 2  # the parent and this run

    assert sync_spools(TrackingParams(uri=server.uri)) == []
    assert main(["--params", str(params), "sync"]) == 0
    assert "nothing to send" in capsys.readouterr().out
    assert len(client.search_runs([run.info.experiment_id])) == 2
    assert len(client.get_metric_history(run_id, "val_miou")) == 3


def train_until_killed(params: TrackingParams, tracker_out: list) -> None:
    """Two epochs of a run, then an interrupt (as a killed training process sees it)."""
    with start_run(params, "toy", "unet", {"architecture": "unet"}, pipeline=PIPELINE) as killed:
        tracker_out.append(killed)
        killed.log_params({"lr": 0.01})
        for epoch in (1, 2):
            killed.log_metrics({"val_miou": epoch / 10}, step=epoch)
        raise KeyboardInterrupt


def test_resumed_training_continues_its_run(server, checkpoint):
    server.start()
    params = TrackingParams(uri=server.uri)
    trackers: list = []
    with pytest.raises(KeyboardInterrupt):
        train_until_killed(params, trackers)
    [killed] = trackers
    client = mlflow.MlflowClient(server.uri)
    assert client.get_run(killed.run_id).info.status == "FAILED"

    with start_run(
        params, "toy", "unet", {"architecture": "unet"}, pipeline=PIPELINE, run_key=killed.run_key
    ) as resumed:
        assert client.get_run(killed.run_id).info.status == "RUNNING"
        resumed.log_params({"lr": 0.01})
        for epoch in (3, 4):
            resumed.log_metrics({"val_miou": epoch / 10}, step=epoch)
        resumed.log_model(checkpoint, EXAMPLE)

    assert (resumed.run_id, resumed.parent_run_id) == (killed.run_id, killed.parent_run_id)
    assert_run_complete(client, killed.run_id, epochs=4, checkpoint=checkpoint)
    experiment = client.get_experiment_by_name("segpipe-toy").experiment_id
    assert len(client.search_runs([experiment])) == 2  # the pipeline's parent run and the one training run

    with start_run(params, "toy", "unet", {}, run_key="0" * 32) as fresh:  # not in the store: a new run
        pass
    assert fresh.run_id != killed.run_id and client.get_run(fresh.run_id).info.status == "FINISHED"
