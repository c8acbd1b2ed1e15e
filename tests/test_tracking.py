"""MLflow tracking: runs record params and per-step metrics; a run missing from the store is a clear error."""

import mlflow
import pytest

from segpipe.config import TrackingParams
from segpipe.tracking.mlflow_tracking import resume_run, start_run


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
