"""Real data: the full CamVid release through prepare + validate, and a short CamVid training run.

The dataset is found through ``SEGPIPE_CAMVID``, a CamVid folder.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from segpipe.cli import main
from segpipe.config import parse_params
from segpipe.data.cache import load_split
from segpipe.data.manifest import DatasetInfo, read_manifest
from segpipe.data.validation import validate_prepared
from segpipe.paths import ProjectPaths
from segpipe.registry.promotion import promote
from segpipe.registry.versions import register_version
from segpipe.remote.bundle import PackOptions, pack_bundle
from segpipe.remote.importer import import_run
from segpipe.remote.run import RunOptions, run_bundle
from segpipe.stages.compare import majority_class_row
from segpipe.stages.evaluate import run_evaluate
from segpipe.stages.train import run_train
from segpipe.tracking.mlflow_tracking import sent_run

CAMVID = os.environ.get("SEGPIPE_CAMVID")
pytestmark = pytest.mark.skipif(
    not CAMVID or not Path(CAMVID).is_dir(),
    reason="set SEGPIPE_CAMVID to a CamVid folder ({train,val,test}/{images,masks}) to run these tests",
)


def camvid_params(tracking_uri: str | None = None, **prepare):
    tracking = {"uri": tracking_uri} if tracking_uri else {"enabled": False}
    return parse_params(
        {
            "prepare": {"dataset": "camvid", "root": CAMVID, "image_size": [96, 128], **prepare},
            "train": {
                "architectures": ["unet"],
                "epochs": 8,
                "batch_size": 8,
                "lr": 0.003,
                "device": "cpu",
                "models": {"unet": {"depth": 3, "base_channels": 16}},
            },
            "evaluate": {"speed_runs": 1},
            "tracking": tracking,
        }
    )


@pytest.fixture(scope="module")
def full_camvid(tmp_path_factory) -> Path:
    paths = ProjectPaths(tmp_path_factory.mktemp("camvid"))
    from segpipe.data.prepare import prepare_dataset

    prepare_dataset(camvid_params().prepare, paths.prepared)
    validate_prepared(paths.prepared, paths.validation_summary)
    return paths.prepared


def test_full_camvid_prepares_and_validates_with_the_release_counts(full_camvid):
    info = DatasetInfo.load(full_camvid)
    manifest = read_manifest(full_camvid)
    assert info.split_sizes == {"train": 367, "val": 101, "test": 233}
    assert manifest.groupby("split").size().to_dict() == {"test": 233, "train": 367, "val": 101}
    assert info.num_classes == 11 and info.ignore_index == 255 and info.image_size == (96, 128)
    masks = load_split(full_camvid, "train").masks
    assert set(np.unique(masks)) <= {*range(11), 255}
    assert (masks == 255).any()  # CamVid's void (11) became the ignore index
    assert manifest["source_image"].str.endswith(".png").all()


def test_short_camvid_training_beats_the_majority_class_and_its_champion_predicts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow artifacts land in tmp_path/mlruns
    params = camvid_params(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", max_per_split=96)
    paths = ProjectPaths(tmp_path)
    from segpipe.data.prepare import prepare_dataset

    info = prepare_dataset(params.prepare, paths.prepared)
    assert info.split_sizes == {"train": 96, "val": 96, "test": 96}
    validate_prepared(paths.prepared, paths.validation_summary)
    run_train(params, "unet", paths, progress=False)
    record = run_evaluate(params, "unet", paths)
    majority = majority_class_row(paths.prepared, info)
    assert record["test_miou"] > 2 * majority["test_miou"], (record["test_miou"], majority["test_miou"])
    assert pd.notna(record["test_pixel_acc"]) and record["test_pixel_acc"] > majority["test_pixel_acc"]

    run = sent_run(
        params.tracking, info.name, record["run_key"]
    )  # as the track stage does: send, then find the run
    register_version(
        params.tracking,
        info.name,
        {**record, "run_id": run.run_id, "model_uri": run.model_uri},
        "test_miou",
        "challenger",
    )
    decision = promote(params, paths)
    assert decision.promoted and decision.baseline == "majority_class", decision.reason
    image = sorted((Path(CAMVID) / "test" / "images").glob("*.png"))[0]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)))
    out = tmp_path / "predictions"
    code = main(
        [
            "--params",
            str(params_file),
            "--root",
            str(tmp_path),
            "predict",
            str(image),
            "--model",
            "models:/segpipe-camvid@champion",
            "--out",
            str(out),
            "--size",
            "96",
            "128",
        ]
    )
    assert code == 0
    mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
    assert mask.shape == (360, 480) and mask.max() < 11


def test_camvid_trains_remotely_from_a_bundle_and_imports_as_challenger(tmp_path, monkeypatch):
    """pack → run (in a fresh folder) → import on a CamVid subset: the flow does not depend on the dataset."""
    from segpipe.data.prepare import prepare_dataset

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    params = camvid_params(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", max_per_split=16)
    paths = ProjectPaths(tmp_path / "project")
    prepare_dataset(params.prepare, paths.prepared)
    validate_prepared(paths.prepared, paths.validation_summary)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)))
    pack_bundle(PackOptions(tmp_path / "bundle", paths.root, params_file))

    run = run_bundle(RunOptions(tmp_path / "bundle", tmp_path / "out", device="cpu", epochs=1))
    assert run["best"] == "unet" and run["data"]["dataset"] == "camvid"
    imported = import_run(tmp_path / "out", paths, params.tracking)
    assert imported.registered.name == "segpipe-camvid" and imported.registered.alias == "challenger"
    assert abs(imported.local_miou - imported.recorded_miou) <= 0.005
