"""``segpipe server``: the ``mlflow server`` command it builds and its refusals; then a team set-up for real
— a throwaway PostgreSQL cluster, ``segpipe server`` on it, a tiny pipeline that logs, registers and promotes
through it, and two training processes logging at the same time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from postgres import PASSWORD, PostgresCluster, free_port
from test_promotion import write_squares_dataset

from segpipe.cli import main
from segpipe.tracking.server import ServerSettings, build_command

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
URI = "postgresql://mlflow:pa55word@db.internal:5432/mlflow"
LIVE_ARCHITECTURES = ["unet", "fcn8s"]
LIVE_EPOCHS = 12


def value_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# --- the command --------------------------------------------------------------------------------------------


def test_default_command_listens_on_loopback_and_serves_absolute_artifacts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = build_command(ServerSettings(URI, "artifacts"))
    argv = command.argv
    assert argv[1:4] == ["-m", "mlflow", "server"] and "--serve-artifacts" in argv
    assert value_after(argv, "--host") == "127.0.0.1" and value_after(argv, "--port") == "5000"
    assert value_after(argv, "--artifacts-destination") == str(tmp_path / "artifacts")
    assert "--allowed-hosts" not in argv and command.warnings == []
    assert command.url == "http://127.0.0.1:5000"
    assert command.env["MLFLOW_BACKEND_STORE_URI"] == URI  # through the environment: not in the process list
    assert not any("pa55word" in arg or "postgresql" in arg for arg in argv)
    assert "MLFLOW_BACKEND_STORE_URI='postgresql://***@db.internal:5432/mlflow'" in command.display()
    assert "pa55word" not in command.display()


def test_public_host_warns_that_there_is_no_authentication_and_accepts_its_own_names():
    command = build_command(
        ServerSettings(
            URI,
            "/srv/artifacts",
            host="0.0.0.0",
            port=8080,
            workers=2,
            allowed_hosts=("mlflow.example.org:8080",),
        )
    )
    assert value_after(command.argv, "--host") == "0.0.0.0" and value_after(command.argv, "--workers") == "2"
    allowed = value_after(command.argv, "--allowed-hosts").split(",")
    assert {"mlflow.example.org:8080", "localhost:*", "127.0.0.1:*", "10.*", f"{socket.gethostname()}:*"} <= {
        *allowed
    }
    assert command.url == f"http://{socket.gethostname()}:8080"  # the URL it prints is one it accepts
    assert len(command.warnings) == 1 and "no authentication" in command.warnings[0]
    assert "register model versions" in command.warnings[0] and "--auth" in command.warnings[0]
    public = build_command(ServerSettings(URI, "/srv/artifacts", host="203.0.113.5"))
    assert "203.0.113.5:*" in value_after(public.argv, "--allowed-hosts").split(",")
    assert public.url == "http://203.0.113.5:5000" and public.warnings


def test_auth_runs_mlflows_basic_auth_app_and_names_what_it_needs(monkeypatch):
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "a-long-random-secret")
    command = build_command(ServerSettings(URI, "/srv/artifacts", host="0.0.0.0", auth=True))
    assert value_after(command.argv, "--app-name") == "basic-auth" and command.warnings == []
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY")
    with pytest.raises(ValueError, match="--auth needs MLFLOW_FLASK_SERVER_SECRET_KEY"):
        build_command(ServerSettings(URI, "/srv/artifacts", auth=True))


@pytest.mark.slow
def test_an_auth_server_refuses_requests_without_a_password(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "a-long-random-secret")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "Adm1n-pass-for-tests!")  # used on the first start
    port = free_port()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = ServerSettings(store, str(tmp_path / "artifacts"), port=port, workers=1, auth=True)
    command = build_command(settings)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command.argv,
            env={**os.environ, **command.env},
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    search = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                anonymous = requests.get(search, timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        admin = requests.get(search, auth=("admin", "Adm1n-pass-for-tests!"), timeout=10)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    assert anonymous.status_code == 401 and admin.status_code == 200


def test_s3_artifacts_pass_through_unchanged():
    try:
        command = build_command(ServerSettings(URI, "s3://team-bucket/mlflow"))
    except ValueError as error:  # boto3 is not a dependency of segpipe
        assert "pip install boto3" in str(error)  # noqa: PT017 (either outcome is right; this one names the fix)
    else:
        assert value_after(command.argv, "--artifacts-destination") == "s3://team-bucket/mlflow"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (ServerSettings("", "/a"), "no backend store: pass --backend-store-uri"),
        (ServerSettings(URI, ""), "no artifact store: pass --artifacts-destination"),
        (ServerSettings("db.internal:5432", "/a"), "is not a database URI"),
        (ServerSettings("file:///srv/mlruns", "/a"), "must be a database MLflow supports"),
        (ServerSettings("postgresql+nosuchdriver://u:pa55word@h/db", "/a"), "unknown database driver"),
        (ServerSettings(URI, "s3:///no-bucket"), "names no bucket"),
        (ServerSettings(URI, "/a", port=70000), "--port must be between 1 and 65535"),
        (ServerSettings(URI, "/a", workers=0), "--workers must be at least 1"),
    ],
)
def test_bad_settings_are_refused_with_a_fix(settings, message):
    with pytest.raises(ValueError, match=message) as error:
        build_command(settings)
    assert "pa55word" not in str(error.value)


def test_missing_postgresql_driver_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on a machine without the `server` extra
    with pytest.raises(ValueError, match=r"pip install 'psycopg\[binary\]'"):
        build_command(ServerSettings(URI, "/a"))


def test_artifacts_destination_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        build_command(ServerSettings(URI, str(tmp_path / "file")))


def test_cli_error_is_one_line_without_the_password(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    assert main(["server", "--backend-store-uri", URI, "--artifacts-destination", "/a"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the postgresql driver 'psycopg' is not installed") and err.count("\n") == 1
    assert "pa55word" not in err


def test_make_server_passes_the_database_uri_through_the_environment():
    dry = subprocess.run(
        ["make", "-n", "server", f"BACKEND={URI}", "ARTIFACTS=/srv/artifacts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert "segpipe server" in dry.stdout and "pa55word" not in dry.stdout


# --- a real team server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class TeamServer:
    """``segpipe server`` as a subprocess (its own process group), on PostgreSQL and a local artifacts
    folder."""

    def __init__(self, database_uri: str, root: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = root / "server.log"
        env = {**os.environ}
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "segpipe"),
                    "server",
                    "--backend-store-uri",
                    database_uri,
                    "--port",
                    str(port),
                    "--workers",
                    "2",
                    "--artifacts-destination",
                    str(root / "artifacts"),
                ],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"segpipe server did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.25)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """SIGTERM to the whole process group (SIGKILL after 30 s); wait until it has exited."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory) -> Iterator[TeamServer]:
    team = TeamServer(postgres.create_database("mlflow"), tmp_path_factory.mktemp("team-server"))
    try:
        yield team
    finally:
        team.stop()


def api(server: TeamServer, endpoint: str, **query) -> dict:
    """One GET on the MLflow REST API, as any HTTP client would make it."""
    response = requests.get(f"{server.url}/api/2.0/mlflow/{endpoint}", params=query, timeout=30)
    response.raise_for_status()
    return response.json()


def search_runs(server: TeamServer, filter_string: str) -> list[dict]:
    experiment = api(server, "experiments/get-by-name", experiment_name="segpipe-folder")["experiment"]
    response = requests.post(
        f"{server.url}/api/2.0/mlflow/runs/search",
        timeout=30,
        json={"experiment_ids": [experiment["experiment_id"]], "filter": filter_string, "max_results": 100},
    )
    response.raise_for_status()
    return response.json().get("runs", [])


def tag(run_: dict, key: str) -> str | None:
    return next((t["value"] for t in run_["data"].get("tags", []) if t["key"] == key), None)


def subprocess_env(server: TeamServer) -> dict[str, str]:
    """The pipeline's environment: the team server's URL, one thread per process (two cores, several
    processes)."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": server.url,
        "OMP_NUM_THREADS": "1",
    }
    for role in ("AUTHOR", "COMMITTER"):  # CI machines may have no git identity
        env.setdefault(f"GIT_{role}_NAME", "segpipe test")
        env.setdefault(f"GIT_{role}_EMAIL", "test@segpipe.invalid")
    return env


def run(cmd: list[str], cwd: Path, server: TeamServer) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=cwd, env=subprocess_env(server), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (
        f"{cmd} failed ({result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-3000:]}"
    )
    return result


def tiny_params(**train) -> dict:
    """The project's params on a squares dataset a small U-Net learns in seconds (so it beats the majority
    class)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(dataset="folder", image_size=[32, 32], workers=1)
    params["train"].update(
        {"architectures": ["unet"], "epochs": 8, "lr": 0.005, "batch_size": 8, "device": "cpu", **train}
    )
    params["train"]["models"].update(
        unet={"depth": 2, "base_channels": 8},
        fcn8s={"width": 0.05},
        autoencoder={"depth": 2, "base_channels": 4},
    )
    params["denoise"].update(epochs=1)
    params["evaluate"]["speed_runs"] = 1
    params["models_table"]["image_size"] = [64, 64]
    params["promote"] = {"bootstrap_resamples": 200}
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory, server) -> Path:
    """A git + DVC copy of the project whose pipeline ran against the team server
    (``MLFLOW_TRACKING_URI``), up to ``register`` (all but ``models_table``, which logs nothing)."""
    dest = tmp_path_factory.mktemp("segpipe")
    for name in ("pipelines", "src"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "data/unlabelled/README.md"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, dest / name)
    write_squares_dataset(dest / "data/raw")
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny"],
        ["dvc", "repro", "register"],
    ):
        run(command, dest, server)
    return dest


@pytest.mark.slow
def test_pipeline_logs_registers_and_promotes_through_the_team_server(project, server):
    runs = search_runs(server, "")
    by_name = {tag(run_, "mlflow.runName"): run_ for run_ in runs}
    assert {"unet", "denoise-autoencoder"} <= set(by_name) and all(
        r["info"]["status"] == "FINISHED" for r in runs
    )
    unet = by_name["unet"]
    assert {"val_miou", "test_miou"} <= {m["key"] for m in unet["data"]["metrics"]}
    files = {f["path"] for f in api(server, "artifacts/list", run_id=unet["info"]["run_id"]).get("files", [])}
    assert "predictions.png" in files  # artifacts went through the server to its artifacts folder
    assert list((server.log.parent / "artifacts").rglob("predictions.png"))

    challenger = api(server, "registered-models/alias", name="segpipe-folder", alias="challenger")[
        "model_version"
    ]
    assert challenger["run_id"] == unet["info"]["run_id"]
    promoted = run([str(BIN / "segpipe"), "promote"], project, server)
    assert promoted.stdout.startswith("PROMOTED"), promoted.stdout + promoted.stderr
    champion = api(server, "registered-models/alias", name="segpipe-folder", alias="champion")[
        "model_version"
    ]
    assert champion["version"] == challenger["version"]


@pytest.mark.slow
def test_two_training_processes_logging_at_once_both_land_complete(project, server, tmp_path):
    """Two train stages with ``tracking.live`` log to the server at the same time, each in its own project
    root."""
    params = tiny_params(architectures=LIVE_ARCHITECTURES, epochs=LIVE_EPOCHS)
    params["tracking"]["live"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(project / "data/prepared", tmp_path / "data/prepared")
    shutil.copytree(project / "reports/validation", tmp_path / "reports/validation")
    command = [
        sys.executable,
        "pipelines/train.py",
        "--params",
        str(tmp_path / "params.yaml"),
        "--root",
        str(tmp_path),
    ]
    trainers = [
        subprocess.Popen(
            [*command, "--architecture", name],
            cwd=project,
            env=subprocess_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in LIVE_ARCHITECTURES
    ]
    try:
        outputs = [trainer.communicate(timeout=300)[0] for trainer in trainers]
    finally:
        for trainer in trainers:
            trainer.kill()
    assert [trainer.returncode for trainer in trainers] == [0, 0], "\n".join(outputs)[-6000:]

    runs = search_runs(server, f"params.epochs = '{LIVE_EPOCHS}'")
    assert sorted(tag(run, "architecture") for run in runs) == sorted(LIVE_ARCHITECTURES)
    for run_ in runs:
        run_id, name = run_["info"]["run_id"], tag(run_, "architecture")
        assert run_["info"]["status"] == "FINISHED"
        assert {"arch": name, "epochs": str(LIVE_EPOCHS), "lr": "0.005"}.items() <= {
            p["key"]: p["value"] for p in run_["data"]["params"]
        }.items()
        history = json.loads((tmp_path / "models" / name / "history.json").read_text())["epochs"]
        expected = {
            "train_loss": [(e["epoch"], e["train_loss"]) for e in history],
            "val_miou": [(e["epoch"], e["validation"]["val_miou"]) for e in history],
        }
        for key, points in expected.items():
            logged = api(server, "metrics/get-history", run_id=run_id, metric_key=key, max_results=1000)[
                "metrics"
            ]
            assert sorted((m["step"], m["value"]) for m in logged) == points, (name, key)
        (output,) = run_["outputs"]["model_outputs"]
        model = api(server, f"logged-models/{output['model_id']}")["model"]["info"]
        assert model["source_run_id"] == run_id and model["status"] == "LOGGED_MODEL_READY"
        assert list(
            (server.log.parent / "artifacts").glob(f"*/models/{output['model_id']}/artifacts/MLmodel")
        )


@pytest.mark.slow
def test_the_server_refuses_unknown_host_names(server):
    """DNS-rebinding protection stays on: a request naming another host is refused, the same one by IP is
    not."""
    path = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(path, headers={"Host": "attacker.example"}, timeout=30).status_code == 403
    assert requests.get(path, timeout=30).status_code == 200


@pytest.mark.slow
def test_the_database_password_is_never_printed(server, project):
    log = server.log.read_text()
    assert "postgresql://***@127.0.0.1" in log and PASSWORD not in log
