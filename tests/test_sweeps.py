"""Queued sweeps: ``scripts/sweep.sh`` queues a grid with ``dvc exp run --queue``, runs it with ``dvc queue
start`` and lines up the results with ``dvc exp show``, in a fresh git + DVC copy of the project on tiny
settings.

Two experiments that differ in U-Net's upsampling mode run one after the other (``-j 1``) in DVC's temporary
workspaces (``.dvc/tmp/exps``), each up to its ``evaluate@unet`` stage (``-- evaluate``; no denoiser, so the
pipeline is prepare -> validate -> train -> evaluate); their training runs are spooled (deferred tracking)
into the repository, not the temporary copies, and sent from there. Every queue worker is stopped at the end,
and the module fails if one survives."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml
from test_pipeline import run, tiny_params

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "scripts" / "sweep.sh"
MODES = ["bilinear", "nearest"]  # train.models.unet.upsample; the committed baseline uses transpose
NAMES = ["up-1", "up-2"]  # what `-n up` names a two-point grid

pytestmark = pytest.mark.slow


def sweep_params() -> dict:
    """test_pipeline's tiny settings cut to one segmentation model (U-Net), no denoiser; deferred tracking
    into the default ``sqlite:///mlflow.db``."""
    params = tiny_params()
    params["train"]["architectures"] = ["unet"]
    params["train"]["epochs"] = 1
    params["train"]["models"] = {"unet": {"depth": 2, "base_channels": 4, "upsample": "transpose"}}
    params["denoise"]["architectures"] = []  # no denoise_* stages (compare needs them: it is not run here)
    params["evaluate"]["speed_runs"] = 1
    params["tracking"] = {"enabled": True, "uri": "sqlite:///mlflow.db", "live": False}
    return params


def processes_in(directory: Path) -> list[psutil.Process]:
    """Processes (other than this one) working in ``directory`` or below: the queue workers and their
    stages."""
    found = []
    for process in psutil.process_iter(["pid", "cwd"]):
        cwd = process.info.get("cwd")
        if process.pid != os.getpid() and cwd and Path(cwd).is_relative_to(directory):
            found.append(process)
    return found


def stop_queue(project: Path, wait_s: float = 30.0) -> list[str]:
    """``dvc queue stop --kill``, then wait for the workers to exit; kill and return what is still there."""
    run(["dvc", "queue", "stop", "--kill"], project, check=False)
    deadline = time.monotonic() + wait_s
    while (left := processes_in(project)) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = [f"{p.pid}: {' '.join(p.cmdline())}" for p in left if p.is_running()]
    for process in left:  # started by this module's dvc queue start, nothing else works in the temp project
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    return survivors


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    dest = tmp_path_factory.mktemp("segpipe-sweep").resolve()
    for name in ("pipelines", "src"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "data/raw/README.md", "data/unlabelled/README.md"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(sweep_params(), sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "tiny"], dest)
    try:
        yield dest
    finally:
        stop_queue(dest, wait_s=10.0)  # safety net; test_no_queue_worker_survives checks it properly


@pytest.fixture(scope="module")
def swept(project) -> subprocess.CompletedProcess:
    """The sweep: queue the two modes, run the queue with one worker, wait for it, print the table (CSV)."""
    env = {**os.environ, "SWEEP_POLL_S": "5", "DVC": str(Path(sys.executable).parent / "dvc")}
    env.pop("MLFLOW_TRACKING_URI", None)
    for role in ("AUTHOR", "COMMITTER"):  # dvc exp commits; CI machines may have no git identity
        env.setdefault(f"GIT_{role}_NAME", "segpipe test")
        env.setdefault(f"GIT_{role}_EMAIL", "test@segpipe.invalid")
    started = time.monotonic()
    result = subprocess.run(
        [
            "bash",
            str(SWEEP),
            "-j",
            "1",
            "-n",
            "up",
            "-t",
            "300",
            "-f",
            "csv",
            "-S",
            f"train.models.unet.upsample={','.join(MODES)}",
            "--",
            "evaluate",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    print(f"sweep.sh took {time.monotonic() - started:.0f}s")
    assert result.returncode == 0, (
        f"sweep.sh failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


def experiments(project: Path) -> dict[str, dict]:
    """``dvc exp show --json``: the experiments of HEAD by name, each with its state, rev, params and
    metrics."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    head = next(entry for entry in shown if entry["rev"] != "workspace")
    found = {}
    for exp in head["experiments"] or []:
        data = exp["revs"][0]["data"]
        found[exp["name"]] = {
            "state": exp["executor"]["state"] if exp.get("executor") else None,
            "rev": exp["revs"][0]["rev"],
            "params": data["params"]["params.yaml"]["data"],
            "metrics": {path: value.get("data") for path, value in data["metrics"].items()},
        }
    return found


def test_sweep_queues_the_grid_and_prints_the_table(swept):
    assert swept.stdout.count("Queued experiment 'up-") == 2
    assert "up-1 Success" in swept.stdout and "up-2 Success" in swept.stdout
    table = list(csv.DictReader(io.StringIO(swept.stdout[swept.stdout.index("Experiment,") :])))
    header = list(table[0])
    assert header[:2] == ["Experiment", "State"]
    assert {"train.models.unet.upsample", "test_miou", "test_dice"} <= set(header)
    assert (
        "prepare.seed" not in header and "test_pixel_acc" not in header
    )  # swept params and chosen metrics only
    rows = {row["Experiment"]: row for row in table}
    assert {rows[name]["train.models.unet.upsample"] for name in NAMES} == set(MODES)
    assert all(rows[name]["State"] == "Success" for name in NAMES)


def test_exp_show_lines_up_both_experiments_with_their_params_and_metrics(project, swept):
    found = experiments(project)
    assert set(NAMES) <= set(found), found.keys()
    models = {}
    for name in NAMES:
        exp = found[name]
        assert exp["state"] == "success"
        metrics = exp["metrics"]["reports/metrics/unet.json"]
        assert (
            metrics is not None and 0.0 <= metrics["test_miou"] <= 1.0 and 0.0 <= metrics["test_dice"] <= 1.0
        )
        # the numbers are the pipeline's own output, committed in the experiment's commit (cache: false)
        committed = json.loads(
            run(["git", "show", f"{exp['rev']}:reports/metrics/unet.json"], project).stdout
        )
        assert committed["test_miou"] == metrics["test_miou"] and committed["architecture"] == "unet"
        lock = yaml.safe_load(run(["git", "show", f"{exp['rev']}:dvc.lock"], project).stdout)
        models[exp["params"]["train"]["models"]["unet"]["upsample"]] = lock["stages"]["train@unet"]["outs"][
            0
        ]["md5"]
        assert exp["params"]["train"]["lr"] == sweep_params()["train"]["lr"]  # only the swept param differs
    assert set(models) == set(MODES)
    assert len(set(models.values())) == 2  # each experiment trained its own model


def test_unchanged_stages_run_once_and_logs_are_kept(project, swept):
    logs = {name: run(["dvc", "queue", "logs", name], project).stdout for name in NAMES}
    assert all("Running stage 'train@unet'" in log for log in logs.values())  # the swept param's stage, twice
    both = "".join(logs.values())
    # no baseline was run: the first experiment prepares the data, the second restores it from DVC's run cache
    # (kept in the project's cache, which every queued experiment shares)
    assert both.count("Running stage 'prepare'") == 1
    assert (
        "Running stage 'compare'" not in both and "Running stage 'register'" not in both
    )  # target: evaluate
    status = run(["dvc", "queue", "status"], project).stdout
    assert all(
        any(line.split()[1:2] == [name] and line.split()[-1] == "Success" for line in status.splitlines())
        for name in NAMES
    ), status


def test_queued_runs_are_spooled_in_the_repository_and_sent_from_there(project, swept):
    spools = sorted((project / ".segpipe" / "tracking-spool").glob("unet-*.jsonl"))
    assert len(spools) == 2, spools  # one per experiment, outliving the deleted temporary copies
    sent = run([str(Path(sys.executable).with_name("segpipe")), "sync"], project)
    assert sent.stdout.count("sent unet-") == 2, sent.stdout
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segpipe-synthetic")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'unet'")
    assert sorted(r.data.params["model.upsample"] for r in runs) == sorted(MODES)
    assert all(r.info.status == "FINISHED" and r.data.tags["segpipe.model_uri"] for r in runs)
    assert experiment.artifact_location.removeprefix("file://").startswith(str(project / "mlruns"))


def test_winner_can_be_applied_and_branched(project, swept):
    found = experiments(project)
    best = max(
        NAMES, key=lambda name: (found[name]["metrics"]["reports/metrics/unet.json"]["test_miou"], name)
    )
    run(["dvc", "exp", "branch", best, "sweep-winner"], project)
    assert run(["git", "branch", "--list", "sweep-winner"], project).stdout.strip()
    run(["dvc", "exp", "apply", best], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert (
        params["train"]["models"]["unet"]["upsample"]
        == found[best]["params"]["train"]["models"]["unet"]["upsample"]
    )
    applied = json.loads((project / "reports/metrics/unet.json").read_text())
    assert applied["test_miou"] == found[best]["metrics"]["reports/metrics/unet.json"]["test_miou"]
    assert (project / "models/unet/model.safetensors").is_file()  # outputs checked out from the shared cache


def test_no_queue_worker_survives(project, swept):
    survivors = stop_queue(project)
    assert not survivors, f"still running after dvc queue stop --kill: {survivors}"
    assert not processes_in(project)
