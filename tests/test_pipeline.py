"""End to end: every DVC stage on a tiny params override, in a fresh git + DVC copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from mlflow_server import MlflowServer
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
        raise AssertionError(
            f"{cmd} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (one worker, job execution off), as a team would run it."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server.uri
    server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_server) -> Path:
    dest = tmp_path_factory.mktemp("segpipe")
    for name in ("pipelines", "src"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "data/raw/README.md", "data/unlabelled/README.md"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, dest / name)
    params = tiny_params()
    params["tracking"]["uri"] = mlflow_server  # the pipeline logs over HTTP, unchanged
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
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
        assert (project / "models" / architecture / "model.safetensors").is_file()
        metrics = json.loads((project / "reports/metrics" / f"{architecture}.json").read_text())
        assert 0.0 <= metrics["test_miou"] <= 1.0 and "test_iou_background" in metrics
        assert not [key for key, value in metrics.items() if isinstance(value, (list, dict))]  # scalars only
        assert metrics["params_m"] > 0 and metrics["infer_img_per_s"] > 0
        confusion = pd.read_csv(project / "reports/confusion" / f"{architecture}.csv", index_col=0)
        assert list(confusion.index) == list(confusion.columns) and "background" in confusion.columns
        assert (
            confusion.to_numpy().sum() == 8 * 32 * 32
        )  # every test pixel (no ignore label in synthetic data)
        curves = pd.read_csv(project / "reports/curves" / f"{architecture}.csv")
        assert list(curves["epoch"]) == [1] and {"train_loss", "val_miou"} <= set(curves.columns)
    board = pd.read_csv(project / "reports/leaderboard.csv")
    assert set(board["architecture"]) == {*ARCHITECTURES, "majority_class"}
    assert board["test_miou"].is_monotonic_decreasing
    assert set(board.loc[board["architecture"] == "smp_unet", "family"]) == {"smp"}
    assert set(board.loc[board["architecture"] == "unet", "family"]) == {"builtin"}
    summary = json.loads((project / "reports/leaderboard.json").read_text())  # a DVC metrics file for sweeps
    assert summary["best_architecture"] == board.loc[board["family"] != "reference", "architecture"].iloc[0]
    assert summary["best_test_miou"] == max(summary["test_miou"].values()) and set(
        summary["test_miou"]
    ) == set(ARCHITECTURES)
    markdown = (project / "reports/leaderboard.md").read_text()
    assert all(f"| {name} |" in markdown for name in ARCHITECTURES)
    assert (project / "reports/plots/leaderboard.png").stat().st_size > 1000
    denoiser = json.loads((project / "reports/metrics/denoise/autoencoder.json").read_text())
    assert denoiser["task"] == "denoise" and denoiser["corruption"] == "salt_pepper 0.1"
    assert denoiser["test_psnr"] > 0 and 0 < denoiser["input_ssim"] < 1
    assert (project / "models/denoise/autoencoder/model.safetensors").is_file()
    assert (project / "reports/plots/denoise/autoencoder.png").stat().st_size > 1000
    assert "val_psnr" in pd.read_csv(project / "reports/curves/denoise/autoencoder.csv").columns
    denoise_board = pd.read_csv(project / "reports/leaderboard_denoise.csv")
    assert set(denoise_board["architecture"]) == {"autoencoder", "corrupted_input"}
    assert "## Denoising" in markdown and "| autoencoder |" in markdown.split("## Denoising")[1]
    models = pd.read_csv(project / "reports/models.csv")
    assert {"unet", "fcn8s", "smp_unet", "smp_fpn"} <= set(models["architecture"])
    assert (models["gflops_256x256"] > 0).all()


def test_registry_holds_the_best_model_under_challenger(project, mlflow_server):
    import mlflow

    record = json.loads((project / "reports/registry.json").read_text())
    board = pd.read_csv(project / "reports/leaderboard.csv")
    best = board[board["architecture"] != "majority_class"].iloc[0]["architecture"]
    assert record["name"] == "segpipe-synthetic" and record["alias"] == "challenger"
    assert record["architecture"] == best and record["tracking_uri"] == mlflow_server
    tracked = json.loads((project / "reports/tracking.json").read_text())
    assert {
        (run["architecture"], run["task"]) for run in tracked["runs"] if run["run_id"] and run["model_uri"]
    } == {*((name, "segment") for name in ARCHITECTURES), ("autoencoder", "denoise")}
    assert record["run_id"] == next(run["run_id"] for run in tracked["runs"] if run["architecture"] == best)
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("segpipe-synthetic", "challenger")
    assert str(version.version) == record["version"]
    assert (
        "test_miou" in version.description
        and "data hash `dvc:" in version.description
        and "| lr |" in version.description
    )
    model = mlflow.pyfunc.load_model("models:/segpipe-synthetic@challenger")  # artifacts served over HTTP
    logits = model.predict(np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32))
    assert logits.shape == (2, 6, 64, 96)


def api(server: str, endpoint: str, **payload) -> dict:
    """One MLflow REST call, as any HTTP client would make it."""
    if payload:
        response = requests.post(f"{server}/api/2.0/mlflow/{endpoint}", json=payload, timeout=30)
    else:
        response = requests.get(f"{server}/api/2.0/mlflow/{endpoint}", timeout=30)
    response.raise_for_status()
    return response.json()


def test_rest_api_shows_one_parent_run_with_a_nested_run_per_model(project, mlflow_server):
    experiment = api(mlflow_server, "experiments/get-by-name?experiment_name=segpipe-synthetic")["experiment"]
    experiment_ids = [experiment["experiment_id"]]
    runs = api(mlflow_server, "runs/search", experiment_ids=experiment_ids, max_results=200)["runs"]
    tags = {
        run["info"]["run_id"]: {t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs
    }
    first_repro = [run_id for run_id, t in tags.items() if "segpipe.pipeline" in t]
    parent = min(
        first_repro,
        key=lambda run_id: next(r for r in runs if r["info"]["run_id"] == run_id)["info"]["start_time"],
    )
    children = [r for r in runs if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == parent]
    names = {
        tags[r["info"]["run_id"]]["architecture"]
        + ("" if tags[r["info"]["run_id"]]["task"] == "segment" else "/denoise")
        for r in children
    }
    assert names == {*ARCHITECTURES, "autoencoder/denoise"}
    for child in children:
        metrics = {m["key"] for m in child["data"]["metrics"]}
        params = {p["key"] for p in child["data"]["params"]}
        assert {"arch", "upsample", "lr", "epochs", "batch_size", "image_size", "params_m"} <= params
        if tags[child["info"]["run_id"]]["task"] == "segment":
            assert {
                "val_miou",
                "test_miou",
                "test_dice",
                "test_pixel_acc",
                "test_iou_background",
                "infer_img_per_s",
            } <= metrics
            listed = api(mlflow_server, f"artifacts/list?run_id={child['info']['run_id']}")
            files = {f["path"] for f in listed.get("files", [])}
            assert {"confusion_matrix.png", "per_class_iou.png", "predictions.png"} <= files, files
        child_tags = tags[child["info"]["run_id"]]
        assert {"git_commit", "data_hash", "device", "torch_version"} <= set(child_tags)
    logged = api(mlflow_server, "logged-models/search", experiment_ids=experiment_ids)["models"]
    sources = {model["info"]["source_run_id"] for model in logged}
    assert {child["info"]["run_id"] for child in children} <= sources  # every nested run logged its model
    parent_run = next(r for r in runs if r["info"]["run_id"] == parent)
    assert parent_run["info"]["status"] == "FINISHED"
    assert "best_test_miou" in {m["key"] for m in parent_run["data"]["metrics"]}
    model = api(mlflow_server, "registered-models/get?name=segpipe-synthetic")["registered_model"]
    assert "challenger" in {alias["alias"] for alias in model.get("aliases", [])}


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)


def headless_chromium(*args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=30000",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: scripts/install_chromium.sh installs Debian's"
)
def test_mlflow_ui_compare_page_lines_up_the_architectures(project, mlflow_server):
    experiment = api(mlflow_server, "experiments/get-by-name?experiment_name=segpipe-synthetic")["experiment"]
    experiment_ids = [experiment["experiment_id"]]
    runs = api(mlflow_server, "runs/search", experiment_ids=experiment_ids, max_results=200)["runs"]
    tags = {
        run["info"]["run_id"]: {t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs
    }
    parent = min(
        (r for r in runs if "segpipe.pipeline" in tags[r["info"]["run_id"]]),
        key=lambda r: r["info"]["start_time"],
    )
    params = {r["info"]["run_id"]: {p["key"]: p["value"] for p in r["data"].get("params", [])} for r in runs}
    children = [  # the segmentation runs: what a user compares side by side
        r["info"]["run_id"]
        for r in runs
        if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == parent["info"]["run_id"]
        and params[r["info"]["run_id"]].get("task") == "segment"
    ]
    url = (
        f"{mlflow_server}/#/compare-runs?runs={json.dumps(children, separators=(',', ':'))}"
        f"&experiments={json.dumps([experiment['experiment_id']])}"
    )
    page = headless_chromium("--dump-dom", url)
    assert page.returncode == 0, page.stderr[-2000:]
    for name in ARCHITECTURES:
        assert name in page.stdout, f"{name} not on the compare page"
    assert "test_miou" in page.stdout
    assert "corruption" not in page.stdout  # no denoising parameters among the segmentation runs


def test_second_repro_runs_nothing(project):
    result = run(["dvc", "repro"], project)
    assert "Running stage" not in result.stdout
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."


def test_metrics_and_plots_are_declared(project):
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "test_miou" in shown
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)
    assert not plots.get("errors"), plots["errors"]
    assert {
        "reports/leaderboard.csv",
        "reports/curves/unet.csv",
        "reports/curves/denoise/autoencoder.csv",
    } <= set(plots["data"])


def test_pointing_tracking_elsewhere_reruns_only_tracking_stages(project):
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["tracking"]["uri"] = "http://127.0.0.1:1"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = set(json.loads(run(["dvc", "status", "--json"], project).stdout))
    finally:
        params_file.write_text(original)
    assert changed == {"track", "register"}, changed


def test_experiment_with_changed_param_reruns_training(project):
    result = run(["dvc", "exp", "run", "-S", "train.epochs=2"], project)
    assert "Running stage 'train@unet'" in result.stdout
    assert "Running stage 'prepare'" not in result.stdout
    history = json.loads((project / "models/unet/history.json").read_text())
    assert len(history["epochs"]) == 2
    shown = run(["dvc", "exp", "show", "--csv"], project).stdout
    assert "train.epochs" in shown and "test_miou" in shown


def test_make_retrain_registers_a_new_challenger_and_follows_the_gate(project, mlflow_server, tmp_path):
    import mlflow

    for name in ("Makefile", "scripts/setup.sh", "pyproject.toml", "requirements/constraints.txt"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    make = ["make", "retrain", f"VENV={Path(sys.executable).parents[1]}", f"DVC_REMOTE={tmp_path / 'remote'}"]
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()

    def retrain() -> tuple[dict, str]:
        run(make, project)
        decision = json.loads((project / "reports/promotion.json").read_text())
        return decision, str(client.get_model_version_by_alias("segpipe-synthetic", "challenger").version)

    first, first_challenger = retrain()
    assert first["challenger_version"] == first_challenger
    assert any((tmp_path / "remote").rglob("*")), "dvc push stored nothing"

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["prepare"]["splits"]["train"] += 8  # new data arrived
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    champion_before = client.get_registered_model("segpipe-synthetic").aliases.get("champion")
    second, second_challenger = retrain()
    assert int(second_challenger) > int(first_challenger)  # the retrained best model is a new version
    assert second["challenger_version"] == second_challenger
    comparison = second["comparison"]
    passes = (
        comparison is not None and comparison["delta"] >= second["min_delta"] and comparison["ci_low"] > 0
    )
    assert second["promoted"] == passes
    champion_after = client.get_registered_model("segpipe-synthetic").aliases.get("champion")
    assert str(champion_after) == (second_challenger if passes else str(champion_before))


def test_dvc_remote_round_trip_restores_data_and_models_so_repro_runs_nothing(project):
    """push to the project's DVC remote (set by make retrain), wipe the cache and the cached outputs, pull:
    everything is back and ``dvc repro`` has nothing to do."""
    assert run(["dvc", "remote", "list"], project).stdout.strip(), "make retrain configured no remote"
    run(["dvc", "push"], project)
    checkpoint = project / "models" / "unet" / "model.safetensors"
    before = checkpoint.read_bytes()
    for path in (project / ".dvc" / "cache", project / "data" / "prepared", project / "models"):
        shutil.rmtree(path)
    run(["dvc", "pull"], project)
    assert checkpoint.read_bytes() == before and (project / "data" / "prepared" / "manifest.csv").is_file()
    repro = run(["dvc", "repro"], project)
    assert "Running stage" not in repro.stdout, repro.stdout[-2000:]


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
