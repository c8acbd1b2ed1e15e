"""End to end: every DVC stage on a tiny params override, in a fresh git + DVC copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = ["unet", "fcn8s", "smp_unet"]

pytestmark = pytest.mark.slow


def tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(image_size=[32, 32], splits={"train": 16, "val": 8, "test": 8})
    params["train"].update(architectures=ARCHITECTURES, epochs=1, batch_size=8)
    params["train"]["models"] = {
        "unet": {"depth": 2, "base_channels": 4},
        "fcn8s": {"width": 0.05},
        "smp_unet": {"encoder": "resnet18"},
    }
    params["denoise"].update(architectures=["autoencoder"], epochs=1, corruption="salt_pepper", level=0.1)
    params["train"]["models"]["autoencoder"] = {"depth": 2, "base_channels": 4}
    params["evaluate"]["speed_runs"] = 1
    return params


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for role in ("AUTHOR", "COMMITTER"):  # dvc exp commits; CI machines may have no git identity
        env.setdefault(f"GIT_{role}_NAME", "segpipe test")
        env.setdefault(f"GIT_{role}_EMAIL", "test@segpipe.invalid")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("segpipe")
    for name in ("pipelines", "src"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "data/raw/README.md"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "tiny"], dest)
    run(["dvc", "repro"], dest)
    return dest


def test_all_stages_write_their_outputs(project):
    assert json.loads((project / "reports/validation/summary.json").read_text())["success"] is True
    for architecture in ARCHITECTURES:
        assert (project / "models" / architecture / "model.pt").is_file()
        metrics = json.loads((project / "reports/metrics" / f"{architecture}.json").read_text())
        assert 0.0 <= metrics["test_miou"] <= 1.0
        assert set(metrics["test_per_class_iou"]) >= {"background"}
        assert metrics["params_m"] > 0 and metrics["infer_img_per_s"] > 0
    board = pd.read_csv(project / "reports/leaderboard.csv")
    assert set(board["architecture"]) == {*ARCHITECTURES, "majority_class"}
    assert board["test_miou"].is_monotonic_decreasing
    assert set(board.loc[board["architecture"] == "smp_unet", "family"]) == {"baseline"}
    assert set(board.loc[board["architecture"] == "unet", "family"]) == {"seed"}
    markdown = (project / "reports/leaderboard.md").read_text()
    assert all(f"| {name} |" in markdown for name in ARCHITECTURES)
    assert (project / "reports/plots/leaderboard.png").stat().st_size > 1000
    denoiser = json.loads((project / "reports/metrics/denoise/autoencoder.json").read_text())
    assert denoiser["task"] == "denoise" and denoiser["corruption"] == "salt_pepper 0.1"
    assert denoiser["test_psnr"] > 0 and 0 < denoiser["input_ssim"] < 1
    assert (project / "models/denoise/autoencoder/model.pt").is_file()
    assert (project / "reports/plots/denoise/autoencoder.png").stat().st_size > 1000
    denoise_board = pd.read_csv(project / "reports/leaderboard_denoise.csv")
    assert set(denoise_board["architecture"]) == {"autoencoder", "corrupted_input"}
    assert "## Denoising" in markdown and "| autoencoder |" in markdown.split("## Denoising")[1]
    models = pd.read_csv(project / "reports/models.csv")
    assert {"unet", "fcn8s", "smp_unet", "smp_fpn"} <= set(models["architecture"])
    assert (models["gflops_256x256"] > 0).all()


def test_registry_holds_the_best_model_under_challenger(project):
    import mlflow

    record = json.loads((project / "reports/registry.json").read_text())
    board = pd.read_csv(project / "reports/leaderboard.csv")
    best = board[board["architecture"] != "majority_class"].iloc[0]["architecture"]
    assert record["name"] == "segpipe-synthetic" and record["alias"] == "challenger"
    assert record["architecture"] == best
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("segpipe-synthetic", "challenger")
    assert str(version.version) == record["version"]
    assert "test_miou" in version.description
    runs = client.search_runs([client.get_experiment_by_name("segpipe-synthetic").experiment_id])
    segmenters = [run for run in runs if run.data.tags["task"] == "segment"]
    assert {run.data.tags["architecture"] for run in segmenters} == set(ARCHITECTURES)
    assert all(len(client.get_metric_history(run.info.run_id, "val_miou")) == 1 for run in segmenters)
    (denoiser,) = [run for run in runs if run.data.tags["task"] == "denoise"]
    assert denoiser.info.run_name == "denoise-autoencoder" and "test_psnr" in denoiser.data.metrics
    cwd = os.getcwd()
    os.chdir(project)  # artifact paths in the store are relative to the project
    try:
        model = mlflow.pytorch.load_model("models:/segpipe-synthetic@challenger")
    finally:
        os.chdir(cwd)
    import torch

    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 96))
    assert logits.shape == (2, 6, 64, 96)


def test_second_repro_runs_nothing(project):
    result = run(["dvc", "repro"], project)
    assert "Running stage" not in result.stdout
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."


def test_metrics_and_plots_are_declared(project):
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "test_miou" in shown
    plots = run(["dvc", "plots", "show", "--json"], project).stdout
    assert "leaderboard.csv" in plots


def test_experiment_with_changed_param_reruns_training(project):
    result = run(["dvc", "exp", "run", "-S", "train.epochs=2"], project)
    assert "Running stage 'train@unet'" in result.stdout
    assert "Running stage 'prepare'" not in result.stdout
    history = json.loads((project / "models/unet/history.json").read_text())
    assert len(history["epochs"]) == 2
    shown = run(["dvc", "exp", "show", "--csv"], project).stdout
    assert "train.epochs" in shown and "test_miou" in shown


def test_bad_mask_stops_pipeline_at_validate(project):
    bad = project / "data/prepared/val/masks/val_00003.png"
    mask = np.asarray(Image.open(bad)).copy()
    mask[5, 5] = 77
    Image.fromarray(mask).save(bad)
    shutil.rmtree(project / "reports/metrics")
    result = run(["dvc", "repro", "--downstream", "validate"], project, check=False)
    assert result.returncode != 0
    assert "val/masks/val_00003.png" in result.stderr + result.stdout
    assert "Running stage 'train@" not in result.stdout
    assert not (project / "reports/metrics").exists()
    assert json.loads((project / "reports/validation/summary.json").read_text())["success"] is False
