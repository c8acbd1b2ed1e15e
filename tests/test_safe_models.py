"""Logged models are safetensors + JSON behind MLflow's "models from code": nothing is pickled, nothing that
would need unpickling is loaded, and the signature takes any image size."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from segpipe.cli import main
from segpipe.models import build_model
from segpipe.serving import PICKLE_SWITCH
from segpipe.serving.logged import (
    UnsafeModel,
    check_model_folder,
    load_logged_model,
    log_checkpoint_model,
)
from segpipe.stages.entry import stage_main
from segpipe.tracking.mlflow_tracking import sync_spools
from segpipe.tracking.spool import Progress, Spool
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"
OPTIONS = {"depth": 2, "base_channels": 4}


def write_checkpoint(folder: Path) -> Path:
    """A tiny 3-class U-Net trained at 32x32, as the train stage writes it."""
    torch.manual_seed(0)
    path = folder / "model.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model("unet", 3, options=OPTIONS)
    meta = CheckpointMeta("unet", OPTIONS, 3, ("a", "b", "c"), (32, 32), 1, "val_miou", 0.5)
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[str, Path, Path]:
    """(model URI, checkpoint, downloaded model folder) of a checkpoint logged to a fresh local store."""
    root = tmp_path_factory.mktemp("safe")
    checkpoint = write_checkpoint(root / "models" / "unet")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("safe", artifact_location=(root / "mlruns").as_uri()))
    uri = log_checkpoint_model(run.info.run_id, checkpoint, 3)
    folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(root / "download")))
    return uri, checkpoint, folder


def test_a_logged_model_is_code_plus_safetensors_and_json_with_no_pickle(logged):
    uri, _, folder = logged
    files = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert {
        "MLmodel",
        "model_code.py",
        "artifacts/checkpoint/model.safetensors",
        "artifacts/checkpoint/model.json",
    } <= files
    assert not [name for name in files if name.endswith((".pkl", ".pth", ".pt", ".pickle"))]
    flavors = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
    assert list(flavors) == ["python_function"] and "python_model" not in flavors["python_function"]
    assert flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    signature = mlflow.models.get_model_info(uri).signature.to_dict()
    dynamic = {"dtype": "float32", "shape": [-1, 3, -1, -1]}  # 3 channels in, 3 classes out
    assert [json.loads(signature[side])[0]["tensor-spec"] for side in ("inputs", "outputs")] == [dynamic] * 2


def test_pyfunc_predicts_at_sizes_other_than_the_training_size(logged, monkeypatch):
    uri, checkpoint, _ = logged
    monkeypatch.setenv(PICKLE_SWITCH, "false")
    model = mlflow.pyfunc.load_model(uri)
    expected, _ = load_checkpoint(checkpoint)
    rng = np.random.default_rng(0)
    for shape in ((2, 3, 48, 80), (1, 3, 96, 64)):  # trained at 32x32
        images = rng.random(shape, dtype=np.float32)
        logits = model.predict(images)
        assert logits.shape == (shape[0], 3, *shape[2:])
        with torch.no_grad():
            np.testing.assert_allclose(logits, expected(torch.from_numpy(images)).numpy(), atol=1e-5)


def test_segpipe_rebuilds_a_logged_model_from_its_checkpoint(logged):
    uri, checkpoint, folder = logged
    model, meta = load_logged_model(uri)
    assert meta.architecture == "unet" and meta.options == OPTIONS
    expected, _ = load_checkpoint(checkpoint)
    image = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(model(image), expected(image))
    assert check_model_folder(folder, "x") == folder / "artifacts" / "checkpoint" / "model.safetensors"


def copy_folder(source: Path, target: Path) -> Path:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


def pytorch_flavour(folder: Path) -> None:
    config = yaml.safe_load((folder / "MLmodel").read_text())
    config["flavors"]["pytorch"] = {"model_data": "data", "pytorch_version": "2.14.1"}
    (folder / "MLmodel").write_text(yaml.safe_dump(config))


def pickled_weights(folder: Path) -> None:
    (folder / "data").mkdir()
    (folder / "data" / "model.pth").write_bytes(b"\x80\x04.")


def pickled_python_model(folder: Path) -> None:
    config = yaml.safe_load((folder / "MLmodel").read_text())
    config["flavors"]["python_function"]["python_model"] = "python_model.pkl"
    config["flavors"]["python_function"]["loader_module"] = "mlflow.pyfunc.model"
    (folder / "MLmodel").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(
    ("alter", "reason"),
    [
        (pickled_weights, "holds data/model.pth"),
        (lambda folder: (folder / "python_model.pkl").write_bytes(b"\x80\x04."), "holds python_model.pkl"),
        (pytorch_flavour, "pytorch flavour"),
        (pickled_python_model, "not segpipe's model code"),
        (lambda folder: (folder / "MLmodel").unlink(), "no MLmodel"),
        (lambda folder: (folder / "extra").symlink_to("/etc/hostname"), "symbolic link"),
    ],
)
def test_a_folder_that_would_need_unpickling_is_refused(logged, tmp_path, alter, reason):
    folder = copy_folder(logged[2], tmp_path / "model")
    alter(folder)
    with pytest.raises(UnsafeModel, match=f"^{re.escape(str(folder))}: refused, .*{re.escape(reason)}"):
        load_logged_model(str(folder))


class CreatesFile:
    """Unpickling this creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def spool_with(folder: Path, records: list[dict]) -> Spool:
    spool = Spool(folder / "run.jsonl")
    spool.create(Progress())
    for record in records:
        spool.append(record)
    spool.close()
    return spool


START = {
    "op": "start_run",
    "experiment": "e",
    "run_name": "r",
    "dataset": "d",
    "tags": {"git_commit": "x"},
    "pipeline": None,
    "run_key": "k",
    "start_time": 1,
}


@pytest.mark.parametrize("name", ["../outside", "/tmp", "..", "a/../../b"])
def test_a_spool_record_naming_a_checkpoint_outside_the_spool_is_refused(logged, tmp_path, name):
    write_checkpoint(tmp_path / "outside")
    record = {"op": "log_checkpoint", "checkpoint": name, "channels": 3}
    spool = spool_with(tmp_path / "spools", [START, record])
    with pytest.raises(ValueError, match="not a checkpoint folder inside .*refused"):
        sync_spools(mlflow.get_tracking_uri(), spool.path.parent)


def test_a_spool_record_of_a_pickled_model_is_refused_and_never_loaded(logged, tmp_path):
    marker = tmp_path / "created-by-the-pickle"
    spool_dir = tmp_path / "spools"
    (spool_dir / "run.models").mkdir(parents=True)
    crafted = spool_dir / "run.models" / "model.pt"
    crafted.write_bytes(pickle.dumps(CreatesFile(marker)))
    for op in ("log_torch_model", "log_model"):
        spool = spool_with(spool_dir, [START, {"op": op, "path": str(crafted)}])
        with pytest.raises(ValueError, match="pickled model of a previous segpipe.*refused"):
            sync_spools(mlflow.get_tracking_uri(), spool_dir)
        spool.path.unlink()
    assert not marker.exists()


def test_a_spooled_checkpoint_is_a_copy_inside_the_spool(logged, tmp_path):
    _, checkpoint, _ = logged
    spool = Spool(tmp_path / "run.jsonl")
    spool.create(Progress())
    from segpipe.tracking.deferred import spool_checkpoint, spooled_checkpoint

    record = spool_checkpoint(spool, checkpoint, np.zeros((1, 3, 32, 32), np.float32))
    spool.close()
    assert json.loads(json.dumps(record)) == record and record["channels"] == 3
    copied = spooled_checkpoint(spool.models_dir, record)
    assert copied.parent.parent == spool.models_dir and copied.read_bytes() == checkpoint.read_bytes()


def test_segpipe_processes_switch_off_mlflows_pickle_loading(monkeypatch, capsys):
    monkeypatch.setenv(PICKLE_SWITCH, "true")
    main(["--params", "missing.yaml", "models"])
    assert os.environ[PICKLE_SWITCH] == "false"
    monkeypatch.setenv(PICKLE_SWITCH, "true")
    stage_main("a stage", lambda params, paths, args: None, ["--params", "missing.yaml"])
    assert os.environ[PICKLE_SWITCH] == "false"


def test_no_source_file_pickles_a_model_or_unpickles_one():
    banned = re.compile(r'serialization_format="pickle"|weights_only=False|cloudpickle')
    found = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if banned.search(line)
    ]
    assert found == []
