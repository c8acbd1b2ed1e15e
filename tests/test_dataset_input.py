"""Each training run records its data as an MLflow dataset input: name, split sizes, classes and DVC's hash of
``data/prepared``, deferred (spooled, sent by the track stage) or live, so the UI's Dataset column and filter
tell runs on different data apart."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from segpipe.config import TrackingParams
from segpipe.data.manifest import DatasetInfo
from segpipe.tracking.dataset import dataset_record, dvc_directory_md5, log_training_data, prepared_digest
from segpipe.tracking.deferred import spool_run
from segpipe.tracking.mlflow_tracking import start_run, sync_spools
from segpipe.training.tracker import NullTracker

CLASSES = ("background", "disc", "square")


def write_prepared(folder: Path, name: str = "toy", train: int = 6) -> Path:
    """A small ``data/prepared`` folder: dataset.json and a few files in subfolders."""
    DatasetInfo(name, CLASSES, 255, (16, 24), {"train": train, "val": 2, "test": 3}).save(folder)
    (folder / "cache").mkdir(parents=True, exist_ok=True)
    (folder / "cache" / "train_images.npy").write_bytes(bytes(range(256)) * train)
    (folder / "manifest.csv").write_text("id,split\na,train\nb,val\n")
    (folder / "train" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "train" / "images" / "a.png").write_bytes(b"\x89PNG fake\r\n")
    return folder


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_directory_hash_is_the_one_dvc_records(tmp_path):
    project = tmp_path / "project"
    prepared = write_prepared(project / "data" / "prepared")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=project, check=True, timeout=120)
    subprocess.run([*dvc, "add", "-q", "data/prepared"], cwd=project, check=True, timeout=120)
    [out] = yaml.safe_load((project / "data" / "prepared.dvc").read_text())["outs"]
    assert dvc_directory_md5(prepared) == out["md5"]


def test_digest_comes_from_dvc_lock_when_it_names_the_prepared_data(tmp_path):
    prepared = write_prepared(tmp_path / "data" / "prepared")
    lock = tmp_path / "dvc.lock"
    assert prepared_digest(prepared, lock) == dvc_directory_md5(prepared).removesuffix(".dir")
    outs = [{"path": "data/prepared", "hash": "md5", "md5": "0123456789abcdef0123456789abcdef.dir"}]
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prepare": {"outs": outs}}}))
    assert prepared_digest(prepared, lock) == "0123456789abcdef0123456789abcdef"


def test_record_names_the_data_its_splits_and_classes(tmp_path):
    record = dataset_record(write_prepared(tmp_path / "prepared"), tmp_path / "no.lock")
    assert record["name"] == "toy" and len(record["digest"]) == 32
    assert record["split_sizes"] == {"train": 6, "val": 2, "test": 3}
    assert record["class_names"] == list(CLASSES) and record["image_size"] == [16, 24]
    assert json.loads(json.dumps(record)) == record  # spoolable as it is


def test_an_untracked_run_computes_and_records_nothing(tmp_path):
    log_training_data(NullTracker(), tmp_path / "missing", tmp_path / "dvc.lock")  # no dataset.json needed


def _training_input(client: mlflow.MlflowClient, run_id: str):
    [dataset_input] = client.get_run(run_id).inputs.dataset_inputs
    assert {tag.key: tag.value for tag in dataset_input.tags} == {"mlflow.data.context": "training"}
    return dataset_input.dataset


def test_a_deferred_run_spools_its_dataset_and_the_track_stage_logs_it(store, tmp_path):
    prepared = write_prepared(tmp_path / "prepared")
    spools = tmp_path / "spools"
    with spool_run("toy", "unet", {}, "pipeline-1", "key-1", spools) as tracker:
        log_training_data(tracker, prepared, tmp_path / "dvc.lock")
    assert '"op": "log_input"' in next(spools.glob("*.jsonl")).read_text()
    [(_, run_id)] = sync_spools(store, spools)
    dataset = _training_input(mlflow.MlflowClient(store.uri), run_id)
    assert dataset.name == "toy" and dataset.digest == prepared_digest(prepared, tmp_path / "dvc.lock")
    assert dataset.source_type == "local" and json.loads(dataset.source)["uri"] == str(prepared)
    profile = json.loads(dataset.profile)
    assert profile["train_samples"] == 6 and profile["test_samples"] == 3
    assert profile["class_names"] == list(CLASSES) and profile["num_classes"] == 3
    assert "image" in dataset.schema and "mask" in dataset.schema


def test_live_runs_on_different_data_are_told_apart_by_the_dataset_filter(store, tmp_path):
    first = write_prepared(tmp_path / "first")
    second = write_prepared(tmp_path / "second", train=7)
    ids = {}
    for prepared in (first, second):
        with start_run(store, "toy", prepared.name, {}) as tracker:
            log_training_data(tracker, prepared, tmp_path / "dvc.lock")
        ids[prepared.name] = tracker.run_id
    client = mlflow.MlflowClient(store.uri)
    digests = {name: _training_input(client, run_id).digest for name, run_id in ids.items()}
    assert digests["first"] != digests["second"]
    experiment = client.get_experiment_by_name("segpipe-toy").experiment_id
    for name, digest in digests.items():
        found = client.search_runs([experiment], filter_string=f"dataset.digest = '{digest}'")
        assert [run.info.run_id for run in found] == [ids[name]]
    named = client.search_runs([experiment], filter_string="dataset.name = 'toy'")
    assert len(named) == 2


def test_data_of_several_image_sizes_is_logged_with_free_sides(store, tmp_path):
    prepared = write_prepared(tmp_path / "prepared")
    info = DatasetInfo.load(prepared)
    DatasetInfo(info.name, info.class_names, info.ignore_index, None, info.split_sizes).save(prepared)
    record = dataset_record(prepared, tmp_path / "dvc.lock")
    assert record["image_size"] is None
    with start_run(store, "toy", "native", {}) as tracker:
        log_training_data(tracker, prepared, tmp_path / "dvc.lock")
    schema = json.loads(_training_input(mlflow.MlflowClient(store.uri), tracker.run_id).schema)
    assert "[-1, -1, -1, 3]" in json.dumps(schema).replace('"', "")


def test_copied_data_keeps_its_digest(tmp_path):
    prepared = write_prepared(tmp_path / "prepared")
    copy = shutil.copytree(prepared, tmp_path / "elsewhere")
    assert dvc_directory_md5(copy) == dvc_directory_md5(prepared)
    (copy / "manifest.csv").write_text("id,split\na,train\n")
    assert dvc_directory_md5(copy) != dvc_directory_md5(prepared)
