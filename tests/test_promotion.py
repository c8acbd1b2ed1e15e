"""Promotion gates with real trained, logged and registered models (no MLflow mocks)."""

import json
import multiprocessing
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from malicious import register_file_creating_version
from PIL import Image

from segpipe.cli import main
from segpipe.config import parse_params
from segpipe.data.prepare import prepare_dataset
from segpipe.data.validation import validate_prepared
from segpipe.paths import ProjectPaths
from segpipe.registry.promotion import CHAMPION, HISTORY_TAG, miou_of, paired_bootstrap, promote, rollback
from segpipe.registry.versions import register_version
from segpipe.serving import PICKLE_SWITCH
from segpipe.stages.evaluate import run_evaluate
from segpipe.stages.train import run_train
from segpipe.tracking.mlflow_tracking import sent_run

NAME = "segpipe-folder"


def write_squares_dataset(root: Path) -> Path:
    """A ``folder`` dataset that a small U-Net learns in seconds: bright squares (class 1) on dark noise."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("val", 8), ("test", 32)):
        for folder in ("images", "masks"):
            (root / split / folder).mkdir(parents=True)
        for index in range(count):
            image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            mask = np.zeros((32, 32), dtype=np.uint8)
            y, x = rng.integers(0, 20, 2)
            image[y : y + 12, x : x + 12] = rng.integers(180, 255)
            mask[y : y + 12, x : x + 12] = 1
            Image.fromarray(image).save(root / split / "images" / f"{index:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{index:03d}.png")
    (root / "classes.txt").write_text("background\nsquare\n")
    return root


def project_params(root: Path, **train):
    return parse_params(
        {
            "prepare": {"dataset": "folder", "root": str(root / "raw"), "image_size": [32, 32], "workers": 1},
            "train": {
                "architectures": ["unet"],
                "batch_size": 8,
                "device": "cpu",
                "models": {"unet": {"depth": 2, "base_channels": 8}},
                **train,
            },
            "evaluate": {"speed_runs": 1},
            "promote": {"bootstrap_resamples": 500},
            "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"},
        }
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory, monkeypatch_module):
    """Version 1: a barely trained U-Net; version 2: a trained one. Both logged and registered for real."""
    import mlflow

    root = tmp_path_factory.mktemp("promotion")
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch_module.chdir(root)  # artifact locations are relative to the project, as in a real checkout
    paths = ProjectPaths(root)
    write_squares_dataset(root / "raw")
    weak = project_params(root, epochs=1, lr=1e-6)
    strong = project_params(root, epochs=8, lr=5e-3)
    prepare_dataset(weak.prepare, paths.prepared)
    validate_prepared(paths.prepared, paths.validation_summary)
    versions = []
    for params in (weak, strong):
        run_train(params, "unet", paths, progress=False)
        record = run_evaluate(params, "unet", paths)
        run = sent_run(
            params.tracking, "folder", record["run_key"]
        )  # as the track stage does: send, then find the run
        record = {**record, "run_id": run.run_id, "model_uri": run.model_uri}
        versions.append(
            register_version(params.tracking, "folder", record, "test_miou", "challenger").version
        )
    mlflow.set_tracking_uri(strong.tracking.uri)
    return strong, paths, versions[0], versions[1], mlflow.MlflowClient()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def reset(client, challenger: str, champion: str | None) -> None:
    client.set_registered_model_alias(NAME, "challenger", challenger)
    if champion is None:
        client.delete_registered_model_alias(NAME, CHAMPION) if _has(client, CHAMPION) else None
    else:
        client.set_registered_model_alias(NAME, CHAMPION, champion)
    client.set_registered_model_tag(NAME, HISTORY_TAG, "[]")


def _has(client, alias: str) -> bool:
    return alias in client.get_registered_model(NAME).aliases


def champion_version(client) -> str:
    return str(client.get_model_version_by_alias(NAME, CHAMPION).version)


def test_first_model_becomes_champion_when_it_beats_the_majority_class(registry):
    params, paths, weak, strong, client = registry
    reset(client, challenger=strong, champion=None)
    decision = promote(params, paths)
    assert decision.promoted and decision.baseline == "majority_class"
    assert decision.comparison.ci_low > 0 and champion_version(client) == strong
    record = json.loads(paths.promotion_record.read_text())
    assert record["promoted"] is True and record["challenger_version"] == strong
    assert client.get_model_version(NAME, strong).tags["promotion.decision"] == "promoted"


def test_worse_challenger_is_kept_out(registry):
    params, paths, weak, strong, client = registry
    reset(client, challenger=weak, champion=strong)
    decision = promote(params, paths)
    assert not decision.promoted and decision.comparison.delta < 0
    assert champion_version(client) == strong
    assert client.get_model_version(NAME, weak).tags["promotion.decision"] == "kept"


def test_equal_challenger_is_not_significantly_better(registry):
    params, paths, weak, strong, client = registry
    reset(client, challenger=strong, champion=strong)
    assert not promote(params, paths).promoted  # the same version
    reset(client, challenger=weak, champion=weak)
    assert "already is the champion" in promote(params, paths).reason


def test_clearly_better_challenger_is_promoted_and_rollback_restores(registry):
    params, paths, weak, strong, client = registry
    reset(client, challenger=strong, champion=weak)
    decision = promote(params, paths)
    assert decision.promoted and decision.champion_version == weak
    assert decision.comparison.delta >= params.promote.min_delta and decision.comparison.ci_low > 0
    assert champion_version(client) == strong
    assert json.loads(client.get_registered_model(NAME).tags[HISTORY_TAG]) == [weak]
    assert rollback(params, paths)["champion_version"] == weak
    assert champion_version(client) == weak
    with pytest.raises(ValueError, match="no previous champion"):
        rollback(params, paths)


def test_retried_promotion_and_rollback_change_nothing_the_second_time(registry):
    """A promotion retried after it succeeded keeps one audit entry; a rollback retried with --from is a
    no-op."""
    params, paths, weak, strong, client = registry
    reset(client, challenger=strong, champion=weak)
    assert promote(params, paths).promoted
    again = promote(params, paths)
    assert not again.promoted and "already is the champion" in again.reason
    assert json.loads(client.get_registered_model(NAME).tags[HISTORY_TAG]) == [weak]
    assert rollback(params, paths, replacing=strong)["champion_version"] == weak
    retried = rollback(params, paths, replacing=strong)
    assert retried["action"] == "already_rolled_back" and champion_version(client) == weak
    assert json.loads(client.get_registered_model(NAME).tags[HISTORY_TAG]) == []


def test_require_gpu_keeps_cpu_trained_models_out(registry):
    params, paths, weak, strong, client = registry
    reset(client, challenger=strong, champion=weak)
    gpu_only = params.model_copy(update={"promote": params.promote.model_copy(update={"require_gpu": True})})
    decision = promote(gpu_only, paths)
    assert not decision.promoted and "require_gpu" in decision.reason
    assert champion_version(client) == weak


def test_require_gpu_refuses_a_cuda_tag_its_timing_contradicts(registry):
    params, paths, weak, strong, client = registry
    reset(client, challenger=strong, champion=weak)
    run_id = client.get_model_version(NAME, strong).run_id
    device = client.get_run(run_id).data.tags["device"]
    gpu_only = params.model_copy(update={"promote": params.promote.model_copy(update={"require_gpu": True})})
    client.set_tag(run_id, "device", "cuda (NVIDIA H100)")  # a relabelled CPU run, as import tags it
    client.set_tag(run_id, "device_evidence", "implausible: 3.0 images/s, not faster than 40.0 on this CPU")
    try:
        decision = promote(gpu_only, paths)
        assert not decision.promoted and "contradicted by its timing" in decision.reason
        assert champion_version(client) == weak
        client.set_tag(run_id, "device_evidence", "consistent: 900.0 images/s against 40.0 on this CPU")
        assert "contradicted" not in promote(gpu_only, paths).reason
    finally:
        client.set_tag(run_id, "device", device)
        client.delete_tag(run_id, "device_evidence")


def _promote_in_process(args):
    params, root = args
    return promote(params, ProjectPaths(root)).promoted


def test_concurrent_promotions_leave_exactly_one_champion(registry):
    params, paths, weak, strong, client = registry
    reset(client, challenger=strong, champion=weak)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        outcomes = pool.map(_promote_in_process, [(params, paths.root)] * 2)
    assert sorted(outcomes) == [False, True]  # the second one sees the first one's champion
    assert champion_version(client) == strong
    assert json.loads(client.get_registered_model(NAME).tags[HISTORY_TAG]) == [weak]


def test_paired_bootstrap_interval_brackets_the_difference():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (40, 50))
    confusions = []
    for noise in (0.1, 0.4):
        prediction = np.where(rng.random(truth.shape) < noise, rng.integers(0, 3, truth.shape), truth)
        confusions.append(
            np.stack(
                [
                    np.bincount(t * 3 + p, minlength=9).reshape(3, 3)
                    for t, p in zip(truth, prediction, strict=True)
                ]
            )
        )
    result = paired_bootstrap(confusions[0], confusions[1], 500, seed=1)
    assert result.ci_low < result.delta < result.ci_high and result.ci_low > 0
    assert result.delta == pytest.approx(miou_of(confusions[0].sum(0)) - miou_of(confusions[1].sum(0)))
    same = paired_bootstrap(confusions[0], confusions[0], 200, seed=1)
    assert same.delta == 0 and same.ci_low == 0 == same.ci_high


def write_params_file(params, root: Path) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False))
    return path


def test_cli_promote_models_and_predict(registry, capsys, tmp_path):
    params, paths, weak, strong, client = registry
    reset(client, challenger=strong, champion=weak)
    params_file = write_params_file(params, paths.root)
    common = ["--params", str(params_file), "--root", str(paths.root)]
    assert main([*common, "promote"]) == 0
    assert "PROMOTED" in capsys.readouterr().out and champion_version(client) == strong
    assert main([*common, "models", "--json"]) == 0
    rows = {row["version"]: row for row in json.loads(capsys.readouterr().out)}
    assert "champion" in rows[strong]["aliases"] and rows[strong]["promotion"] == "promoted"
    assert rows[weak]["architecture"] == "unet" and rows[strong]["device"].startswith("cpu")

    image = np.zeros((37, 50, 3), dtype=np.uint8)  # not a multiple of the output stride
    image[5:25, 10:30] = 230
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "predictions"
    assert (
        main(
            [
                *common,
                "predict",
                str(tmp_path / "photo.png"),
                "--model",
                f"models:/{NAME}@champion",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    mask = np.asarray(Image.open(out / "photo_mask.png"))
    assert mask.shape == (37, 50) and set(np.unique(mask)) <= {0, 1}
    assert mask[10:20, 15:25].mean() > 0.5 and mask[30:, 35:].mean() < 0.5  # the square is found
    assert np.asarray(Image.open(out / "photo_overlay.png")).shape == (37, 50, 3)


def test_cli_errors_are_one_line_without_traceback(registry, capsys):
    params, paths, weak, strong, client = registry
    params_file = write_params_file(params, paths.root)
    assert (
        main(
            [
                "--params",
                str(params_file),
                "--root",
                str(paths.root),
                "predict",
                "missing.png",
                "--model",
                f"models:/{NAME}@champion",
                "--out",
                str(paths.root / "p"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.png" in err and "Traceback" not in err


def test_a_version_that_would_unpickle_is_refused_by_every_command_and_never_runs(
    registry, capsys, tmp_path, monkeypatch
):
    params, paths, weak, strong, client = registry
    marker = tmp_path / "created-by-the-pickle"
    evil = register_file_creating_version(NAME, marker)
    reset(client, challenger=evil, champion=strong)
    common = ["--params", str(write_params_file(params, paths.root)), "--root", str(paths.root)]
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{evil}", dst_path=str(tmp_path)))
    capsys.readouterr()
    refusals = {
        "promote": [*common, "promote"],
        "predict": [*common, "predict", str(image), "--model", f"models:/{NAME}@challenger", "--out", "o"],
        "predict a folder": [*common, "predict", str(image), "--model", str(folder), "--out", "o"],
    }
    for command, argv in refusals.items():
        assert main(argv) == 1, command
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "refused" in err, (command, err)
        assert f"version {evil} of {NAME}" in err or str(folder) in err, command
    assert main([*common, "models"]) == 0
    assert f"version {evil} of {NAME}: refused" in capsys.readouterr().err
    bad_input = [*common, "predict", str(tmp_path / "missing.png"), "--model", f"models:/{NAME}@challenger"]
    assert main([*bad_input, "--out", "o"]) == 1 and "missing.png" in capsys.readouterr().err
    assert os.environ[PICKLE_SWITCH] == "false"  # what segpipe sets: MLflow's own loader refuses pickles too
    with pytest.raises(mlflow.exceptions.MlflowException, match="pickle"):
        mlflow.pyfunc.load_model(f"models:/{NAME}/{evil}")
    assert not marker.exists()
    assert champion_version(client) == strong
    monkeypatch.setenv(PICKLE_SWITCH, "true")  # the payload is live: unpickling it does create the file
    with pytest.raises(Exception):  # noqa: B017 (what it unpickles to is no model)
        mlflow.pyfunc.load_model(f"models:/{NAME}/{evil}")
    assert marker.exists()
