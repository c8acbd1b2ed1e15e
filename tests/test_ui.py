"""The MLflow UI a user lands on: training-view URLs, the latest segmentation runs, ``segpipe ui``."""

import contextlib
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from segpipe.config import TrackingParams, load_params
from segpipe.data.manifest import DatasetInfo
from segpipe.tracking.dataset import dataset_record
from segpipe.tracking.deferred import dataset_call, deferred_spool_path, now_ms, start_record
from segpipe.tracking.mlflow_tracking import find_runs, finish_parent, resume_run, start_run, sync_spools
from segpipe.tracking.spool import Progress, Spool
from segpipe.tracking.ui import (
    browser_base,
    compare_url,
    dataset_compare_url,
    dataset_runs_url,
    experiments_url,
    nested_runs_filter,
    runs_url,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _pipeline(store: TrackingParams, key: str) -> dict[str, str]:
    """Train-like runs of one pipeline execution: two segmenters and a denoiser; their run ids by name."""
    ids = {}
    for name, task in (("unet", "segment"), ("fcn8s", "segment"), ("autoencoder-denoise", "denoise")):
        with start_run(store, "toy", name, {"architecture": name}, pipeline=key) as tracker:
            tracker.log_params({"arch": name, "task": task})
            tracker.log_metrics({"test_miou": 0.5})
        ids[name] = tracker.run_id
    return ids


def _query(url: str) -> dict[str, str]:
    fragment = urllib.parse.urlsplit(url).fragment
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(fragment).query))


def test_urls_open_the_training_view():
    assert experiments_url("http://h:5000/") == "http://h:5000/#/experiments?workflowType=machine_learning"
    url = runs_url("http://h:5000", "3")
    assert url == "http://h:5000/#/experiments/3/runs?workflowType=machine_learning"
    query = _query(runs_url("http://h:5000", "3", "abc"))
    assert query == {
        "workflowType": "machine_learning",
        "searchFilter": nested_runs_filter("abc"),
        "orderByKey": "metrics.`test_miou`",  # flat, best first: sorted by start time, the UI nests
        "orderByAsc": "false",
    }
    compare = _query(compare_url("http://h:5000", "3", ["a", "b"]))
    assert compare == {"runs": '["a","b"]', "experiments": '["3"]', "workflowType": "machine_learning"}


def test_browser_urls_carry_no_credentials():
    assert browser_base("https://ann:secret@mlflow.example.org:8443/") == "https://mlflow.example.org:8443"


def test_dataset_url_shows_the_latest_pipelines_segmentation_runs(store):
    _pipeline(store, "first")
    latest = _pipeline(store, "second")
    url = dataset_runs_url("http://127.0.0.1:5000", store.uri, "toy")
    client = mlflow.MlflowClient(store.uri)
    experiment = client.get_experiment_by_name("segpipe-toy")
    assert f"/#/experiments/{experiment.experiment_id}/runs?" in url
    shown = client.search_runs([experiment.experiment_id], filter_string=_query(url)["searchFilter"])
    assert {run.info.run_id for run in shown} == {latest["unet"], latest["fcn8s"]}


def test_dataset_compare_url_lines_up_the_latest_segmentation_runs_best_first(store):
    _pipeline(store, "first")
    latest = _pipeline(store, "second")
    client = mlflow.MlflowClient(store.uri)
    client.log_metric(latest["fcn8s"], "test_miou", 0.7)
    runs = _query(dataset_compare_url("http://127.0.0.1:5000", store.uri, "toy"))["runs"]
    assert runs == f'["{latest["fcn8s"]}","{latest["unet"]}"]'


def test_dataset_without_experiment_gets_the_experiment_list(store):
    mlflow.MlflowClient(store.uri).search_experiments()  # creates the empty store
    assert dataset_runs_url("http://x:1", store.uri, "toy") == experiments_url("http://x:1")
    assert dataset_compare_url("http://x:1", store.uri, "toy") is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _interruptible() -> None:
    """Ctrl-C reaches the UI as from a terminal, even when these tests run where SIGINT is ignored (a
    background job of a non-interactive shell), which the UI would otherwise inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def segpipe_ui(store: TrackingParams, cwd: Path, dataset: str) -> Iterator[tuple[int, dict[str, str]]]:
    """``segpipe ui`` on the store: its port and the URLs it printed by label; stopped with Ctrl-C after."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    command = [sys.executable, "-m", "segpipe.cli", "--params", str(REPO / "params.yaml"), "ui"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--dataset", dataset],
        cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, preexec_fn=_interruptible,
    )  # fmt: skip
    try:
        printed = {}
        for line in process.stdout:
            if line.startswith("(Ctrl-C"):
                break
            label, _, url = line.partition(": ")
            printed[label] = url.strip()
        yield port, printed
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


def test_segpipe_ui_serves_the_store_and_prints_the_runs_url(store, tmp_path):
    ids = _pipeline(store, "only")
    with segpipe_ui(store, tmp_path, "toy") as (port, printed):
        assert printed["MLflow UI"].startswith(f"http://127.0.0.1:{port}/#/experiments/"), printed
        assert "workflowType=machine_learning" in printed["MLflow UI"]
        parent = mlflow.MlflowClient(store.uri).get_run(ids["unet"]).data.tags["mlflow.parentRunId"]
        assert _query(printed["MLflow UI"])["searchFilter"] == nested_runs_filter(parent)
        assert printed["Compare"].startswith(f"http://127.0.0.1:{port}/#/compare-runs?")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            assert answer.read().decode().strip() == "OK"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def test_segpipe_ui_on_a_tracking_server_points_at_its_ui(monkeypatch, capsys):
    from segpipe.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ann:secret@mlflow.example.org")
    assert main(["--params", str(REPO / "params.yaml"), "ui"]) == 1
    error = capsys.readouterr().err
    assert experiments_url("https://mlflow.example.org") in error and "secret" not in error


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
DOCS = REPO / "docs"
"""README's screenshots of the UI: ``mlflow_runs.png`` and ``mlflow_compare.png``."""


def replay_default_run(store: TrackingParams, folder: Path) -> list[str]:
    """The committed default pipeline run (``reports/``: curves, test metrics, leaderboard) sent to ``store``
    as the train stages spool it and the track stage logs it; the architectures, best first."""
    board = pd.read_csv(REPO / "reports" / "leaderboard.csv")
    board = board[board["family"] != "reference"]
    records = {
        arch: json.loads((REPO / f"reports/metrics/{arch}.json").read_text()) for arch in board.architecture
    }
    classes = tuple(key.removeprefix("test_iou_") for key in records["unet"] if key.startswith("test_iou_"))
    prepare = load_params(REPO / "params.yaml").prepare
    DatasetInfo("synthetic", classes, 255, tuple(prepare.image_size), dict(prepare.splits)).save(
        folder / "data"
    )
    dataset = dataset_record(folder / "data", REPO / "dvc.lock")
    end = now_ms()
    for arch, record in records.items():
        curves = pd.read_csv(REPO / f"reports/curves/{arch}.csv")
        spool = Spool(deferred_spool_path(arch, record["run_key"], folder / "spools"))
        spool.create(Progress())
        tags = {"architecture": arch, "task": "segment", "mlflow.source.name": "pipelines/train.py"}
        start = start_record("synthetic", arch, tags, "default-run", record["run_key"])
        start["start_time"] = end - int(curves["seconds"].sum() * 1000)
        spool.append(start)
        run_params = {
            "arch": arch,
            "family": record["family"],
            "task": "segment",
            "params_m": record["params_m"],
        }
        spool.append({"op": "log_params", "params": {key: str(value) for key, value in run_params.items()}})
        spool.append(dataset_call(dataset))
        for row, elapsed in zip(curves.itertuples(), curves["seconds"].cumsum(), strict=True):
            scores = {"train_loss": row.train_loss, "val_loss": row.val_loss, "val_miou": row.val_miou}
            stamp = start["start_time"] + int(elapsed * 1000)
            spool.append({"op": "log_metrics", "metrics": scores, "step": row.epoch, "timestamp": stamp})
        spool.append({"op": "end_run", "status": "FINISHED", "end_time": end})
        spool.close()
    sync_spools(store, folder / "spools")
    runs = find_runs(store, "synthetic", [record["run_key"] for record in records.values()])
    for arch, record in records.items():
        tested = {key: value for key, value in record.items() if key.startswith("test_")}
        resume_run(store, runs[record["run_key"]].run_id, arch).log_metrics(
            {**tested, "infer_img_per_s": record["infer_img_per_s"]}
        )
    parent = next(iter(runs.values())).parent_run_id
    finish_parent(
        store, parent, {"best_test_miou": float(board.test_miou.max())}, [], {"leaderboard.json": board}
    )
    return list(board.architecture)


def browse(url: str, profile: Path, *action: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a new profile, given time for the page's requests and rendering."""
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
    ]  # fmt: skip
    shutil.rmtree(profile, ignore_errors=True)
    done = subprocess.run([CHROMIUM, *flags, *action, url], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def page_text(dom: str) -> str:
    """The visible text of a dumped DOM, one space between words."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: scripts/install_chromium.sh installs it")
def test_a_new_browser_lands_on_the_training_runs_and_compares_them(store, tmp_path):
    architectures = replay_default_run(store, tmp_path)
    digest = dataset_record(tmp_path / "data", REPO / "dvc.lock")["digest"]
    with segpipe_ui(store, tmp_path, "synthetic") as (port, printed):
        runs = page_text(browse(printed["MLflow UI"], tmp_path / "profile", "--dump-dom").stdout)
        assert runs.startswith("Runs - Experiment"), runs[:300]  # the training view's runs list
        for genai in ("Overview", "Token Usage", "Latency"):  # what the GenAI view opens on
            assert genai not in runs
        listed = [name for name in re.findall(r"\b[a-z0-9_]+\b", runs) if name in architectures]
        assert listed[: len(architectures)] == architectures  # flat, best test mIoU first
        assert f"synthetic ({digest})" in runs  # the Dataset column
        assert f"{len(architectures)} matching runs" in runs

        compare = page_text(browse(printed["Compare"], tmp_path / "profile", "--dump-dom").stdout)
        assert f"Comparing {len(architectures)} Runs from 1 Experiment" in compare
        assert "test_miou" in compare and "params_m" in compare and "corruption" not in compare
        assert all(name in compare for name in architectures)

        shots = {
            "mlflow_runs.png": (printed["MLflow UI"], "1600,900"),
            "mlflow_compare.png": (printed["Compare"], "1600,1800"),
        }
        for name, (url, size) in shots.items():
            browse(url, tmp_path / "profile", f"--window-size={size}", f"--screenshot={tmp_path / name}")
            assert (tmp_path / name).stat().st_size > 20_000
            shutil.copyfile(tmp_path / name, DOCS / name)
