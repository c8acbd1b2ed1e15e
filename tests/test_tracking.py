"""MLflow tracking: runs record params and per-step metrics; a run missing from the store is a clear error."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from torch import nn

from segpipe.config import TrackingParams, load_params
from segpipe.data.manifest import DatasetInfo
from segpipe.paths import ProjectPaths
from segpipe.stages.train import TrainJob, _run_params
from segpipe.tracking.mlflow_tracking import finish_parent, resume_run, start_run
from segpipe.training.distributed import DistributedContext

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts land under tmp_path/mlruns
    return TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_run_records_params_metrics_and_tags(store):
    with start_run(store, "toy", "unet", {"architecture": "unet"}) as tracker:
        tracker.log_params({"arch": "unet", "lr": 0.002})
        for epoch in (1, 2):
            tracker.log_metrics({"val_miou": 0.1 * epoch}, step=epoch)
    client = mlflow.MlflowClient(store.uri)
    run = client.get_run(tracker.run_id)
    assert run.data.params == {"arch": "unet", "lr": "0.002"}
    assert run.data.tags["architecture"] == "unet" and "git_commit" in run.data.tags
    assert [m.step for m in client.get_metric_history(tracker.run_id, "val_miou")] == [1, 2]
    assert client.get_experiment(run.info.experiment_id).name == "segpipe-toy"

    resumed = resume_run(store, tracker.run_id, "unet")
    resumed.log_metrics({"test_miou": 0.5})
    assert client.get_run(tracker.run_id).data.metrics["test_miou"] == 0.5


def test_resuming_a_run_missing_from_the_store_names_the_fix(store):
    with start_run(store, "toy", "other", {}):  # the store exists, the asked-for run does not
        pass
    with pytest.raises(ValueError, match=r"0{32}.*fcn8s.*dvc repro -f train@fcn8s"):
        resume_run(store, "0" * 32, "fcn8s")


def test_experiments_are_tagged_as_model_training(store):
    """MLflow's UI opens an experiment without ``mlflow.experimentKind`` in its GenAI view."""
    client = mlflow.MlflowClient(store.uri)
    client.create_experiment("segpipe-old")  # made before segpipe tagged its experiments
    for dataset in ("toy", "old"):
        with start_run(store, dataset, "unet", {}):
            pass
        tags = client.get_experiment_by_name(f"segpipe-{dataset}").tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_parent_run_gets_the_leaderboard_as_an_mlflow_table(store, tmp_path):
    with start_run(store, "toy", "unet", {}, pipeline="p1") as tracker:
        pass
    board = pd.DataFrame({"rank": [1, 2], "architecture": ["unet", "fcn8s"], "test_miou": [0.5, 0.4]})
    chart = tmp_path / "leaderboard.png"
    chart.write_bytes(b"\x89PNG")
    finish_parent(store, tracker.parent_run_id, {"best_test_miou": 0.5}, [chart], {"leaderboard.json": board})
    client = mlflow.MlflowClient(store.uri)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    logged = {artifact.path for artifact in client.list_artifacts(tracker.parent_run_id)}
    assert logged == {"leaderboard.json", "leaderboard.png"}
    table = client.load_table(parent.info.experiment_id, "leaderboard.json", [tracker.parent_run_id])
    assert table[["architecture", "test_miou"]].to_dict("list") == {
        "architecture": ["unet", "fcn8s"],
        "test_miou": [0.5, 0.4],
    }


def _logged_params(architecture: str, task: str) -> dict[str, object]:
    """The params a training run of ``architecture`` logs, with the repository's params.yaml."""
    info = DatasetInfo("toy", ("a", "b"), 255, (32, 32), {"train": 4})
    job = TrainJob(
        load_params(PARAMS), architecture, task, ProjectPaths(Path(".")), info, torch.device("cpu"),
        DistributedContext(), None,
    )  # fmt: skip
    return _run_params(job, nn.Linear(2, 2))


def test_segmentation_runs_log_the_same_params_and_none_of_denoisings():
    """Compare views over the nested runs need one set of names; corruption applies to denoising only."""
    architectures = load_params(PARAMS).train.architectures
    logged = {arch: _logged_params(arch, "segment") for arch in architectures}
    common = {key for key in logged[architectures[0]] if not key.startswith("model.")}
    for arch, values in logged.items():
        assert {key for key in values if not key.startswith("model.")} == common, arch
        assert values["arch"] == arch and values["task"] == "segment"
    assert {"arch", "params_m", "dataset", "lr"} <= common
    assert not {"corruption", "corruption_level"} & common
    assert {"corruption", "corruption_level"} <= set(_logged_params("autoencoder", "denoise"))
