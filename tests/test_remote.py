"""Remote training end to end: pack a tiny project, run the bundle where only torch, numpy and Pillow are
installed (plus the bundle's wheels), import the output into MLflow; and the refusals on the way."""

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import mlflow
import pytest
import yaml
from packaging.requirements import Requirement

from segpipe.cli import main
from segpipe.config import TrackingParams
from segpipe.models import build_model
from segpipe.paths import ProjectPaths
from segpipe.remote.bundle import PackOptions, pack_bundle
from segpipe.remote.importer import ReevaluationMismatch, RunFolderError, import_run
from segpipe.remote.manifest import MANIFEST, ManifestError, read_manifest, verify_folder, write_manifest
from segpipe.remote.run import RUN_FORMAT, RunOptions, fits, run_bundle
from segpipe.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

HOST_PACKAGES = ("torch", "numpy", "pillow")
ABSENT = (
    "mlflow",
    "dvc",
    "great_expectations",
    "albumentations",
    "matplotlib",
    "pandas",
    "pydantic",
    "yaml",
    "segpipe",
)
GPU = "NVIDIA Test GPU"


def host_site(dest: Path) -> Path:
    """Links to ``HOST_PACKAGES`` and the distributions they require (with their extras), from this
    environment: a machine that has torch, numpy and Pillow and nothing else."""
    dest.mkdir()
    todo, seen = [(name, ("",)) for name in HOST_PACKAGES], set()
    while todo:
        name, extras = todo.pop()
        if (name.lower(), extras) in seen:
            continue
        seen.add((name.lower(), extras))
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for top in {file.parts[0] for file in distribution.files or () if file.parts[0] != ".."}:
            if not (dest / top).is_symlink():
                (dest / top).symlink_to(Path(distribution.locate_file(top)))
        for requirement in map(Requirement, distribution.requires or ()):
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
                todo.append((requirement.name, ("", *sorted(requirement.extras))))
    return dest


def bare_python(site: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """This Python without site-packages (``-S``): only the standard library and ``site`` are importable."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    return subprocess.run(
        [sys.executable, "-S", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_project) -> Path:
    # weighted cross-entropy: the Dice term of the default loss comes from smp, which a bare host lacks
    loss = {"name": "ce", "class_weights": "median_frequency"}
    train = {"epochs": 1, "device": "cpu", "loss": loss}
    return tiny_project(tmp_path_factory.mktemp("project"), train=train)


@pytest.fixture(scope="module")
def bundle(project, tmp_path_factory) -> Path:
    """The packed bundle, copied to a fresh folder as it would be to another machine."""
    packed = tmp_path_factory.mktemp("packed") / "bundle"
    code = main(
        [
            "--params",
            str(project / "params.yaml"),
            "--root",
            str(project),
            "remote",
            "pack",
            str(packed),
            "--vendor-environment",
            "--shard-mb",
            "1",
        ]
    )
    assert code == 0
    copied = tmp_path_factory.mktemp("host") / "bundle"
    shutil.copytree(packed, copied)
    return copied


@pytest.fixture(scope="module")
def host_run(bundle, tmp_path_factory) -> Path:
    """The bundle's bootstrap, run by a Python that has torch, numpy and Pillow only; its output folder."""
    site = host_site(tmp_path_factory.mktemp("site") / "site-packages")
    found = bare_python(
        site,
        "-c",
        "import importlib.util as u, sys; "
        f"print([m for m in {ABSENT!r} if u.find_spec(m)]); import torch, numpy, PIL",
    )
    assert found.returncode == 0 and found.stdout.strip() == "[]", found.stdout + found.stderr
    out = bundle.parent / "out"
    done = bare_python(site, str(bundle / "run.py"), "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "unet: test mIoU" in done.stdout
    return out


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> TrackingParams:
    """A fresh MLflow store per test (the environment variable wins over params.yaml, also for the CLI)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts land under tmp_path/mlruns
    return TrackingParams(uri=uri)


def copy_run(host_run: Path, target: Path) -> Path:
    shutil.copytree(host_run, target)
    return target


def reseal(folder: Path) -> None:
    """Rewrite the manifest after a change, as someone altering the folder on purpose would."""
    write_manifest(folder, {"kind": RUN_FORMAT})


def test_bundle_holds_code_data_params_wheels_and_sha256_of_every_file(bundle, project):
    manifest = read_manifest(bundle)
    paths = {entry["path"] for entry in manifest["files"]}
    assert {
        "run.py",
        "params.yaml",
        "src/segpipe/cli.py",
        "data/prepared/dataset.json",
        "reports/validation/summary.json",
    } <= paths
    wheels = {path.split("/")[1].split("-")[0] for path in paths if path.startswith("wheels/")}
    assert {"pydantic", "pydantic_core", "pyyaml", "safetensors", "tqdm", "typing_extensions"} <= wheels
    split = [entry for entry in manifest["files"] if entry.get("parts")]
    assert split and all(part["bytes"] <= 2**20 for entry in split for part in entry["parts"])
    assert not any(entry["path"].startswith("src/") for entry in split)
    assert (bundle / "params.yaml").read_text() == (project / "params.yaml").read_text()


def test_host_run_writes_checkpoint_pairs_metrics_and_a_run_record(host_run):
    run = json.loads((host_run / "run.json").read_text())
    assert run["host"]["device"].startswith("cpu (") and run["host"]["torch"] and run["host"]["python"]
    assert run["settings"]["epochs"] == 1 and run["architectures"]["unet"]["status"] == "trained"
    assert run["best"] == "unet"
    paths = ProjectPaths(host_run)
    assert paths.checkpoint("unet").is_file() and paths.checkpoint("unet").with_suffix(".json").is_file()
    assert not list(host_run.rglob("*.pt")) and not (host_run / "data").exists()
    assert (
        json.loads(paths.metrics("unet").read_text())["test_miou"]
        == run["architectures"]["unet"]["test_miou"]
    )
    assert paths.leaderboard_csv.read_text().startswith("architecture,test_miou")


def test_import_logs_and_registers_with_the_host_device(host_run, project, tracking, tmp_path, capsys):
    folder = copy_run(host_run, tmp_path / "out")
    code = main(
        ["--params", str(project / "params.yaml"), "--root", str(project), "remote", "import", str(folder)]
    )
    assert code == 0, capsys.readouterr().err
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("segpipe-synthetic", "challenger")
    run = json.loads((folder / "run.json").read_text())
    assert version.tags["device"] == run["host"]["device"] and version.tags["gpu_name"] == "none"
    assert version.tags["architecture"] == "unet"
    assert client.get_run(version.run_id).data.tags["device"] == run["host"]["device"]
    assert json.loads((project / "reports" / "registry.json").read_text())["version"] == str(version.version)
    with pytest.raises(RunFolderError, match="already imported"):
        import_run(folder, ProjectPaths(project), tracking)


def test_a_cuda_host_is_tagged_so_promotion_can_require_it(host_run, project, tracking, tmp_path):
    folder = copy_run(host_run, tmp_path / "out")
    run = json.loads((folder / "run.json").read_text())
    run["host"].update(device=f"cuda ({GPU})", gpu_name=GPU)
    (folder / "run.json").write_text(json.dumps(run))
    reseal(folder)
    imported = import_run(folder, ProjectPaths(project), tracking)
    client = mlflow.MlflowClient()
    version = client.get_model_version("segpipe-synthetic", imported.registered.version)
    assert version.tags["gpu_name"] == GPU
    assert client.get_run(version.run_id).data.tags["device"] == f"cuda ({GPU})"  # what promote reads


def test_a_relabelled_cpu_run_is_marked_implausible_with_its_evidence(host_run, project, tracking, tmp_path):
    folder = copy_run(host_run, tmp_path / "out")
    run = json.loads((folder / "run.json").read_text())
    run["host"].update(device="cuda (NVIDIA H100)", gpu_name="NVIDIA H100")
    (folder / "run.json").write_text(json.dumps(run))
    reseal(folder)
    imported = import_run(folder, ProjectPaths(project), tracking)
    client = mlflow.MlflowClient()
    tags = client.get_run(imported.run_ids["unet"]).data.tags
    claimed, local = float(tags["train_images_per_second"]), float(tags["local_cpu_train_images_per_second"])
    assert 0 < claimed <= local
    assert tags["device_evidence"].startswith("implausible: the run claims cuda (NVIDIA H100)")
    version = client.get_model_version("segpipe-synthetic", imported.registered.version)
    assert version.tags["device_evidence"] == tags["device_evidence"]
    assert version.tags["imported_by"] and version.tags["imported_on_host"]
    assert "provenance recorded by whoever ran the training, not proof" in version.description


def test_a_changed_file_is_refused_by_its_sha256(host_run, project, tracking, tmp_path):
    folder = copy_run(host_run, tmp_path / "out")
    metrics = ProjectPaths(folder).metrics("unet")
    metrics.write_text(metrics.read_text().replace('"test_miou": 0.', '"test_miou": 1.'))
    with pytest.raises(ManifestError, match="does not match its sha256"):
        import_run(folder, ProjectPaths(project), tracking)
    assert mlflow.MlflowClient(tracking.uri).search_registered_models() == []


def test_a_pickle_in_the_weights_is_refused_and_never_executed(host_run, project, tracking, tmp_path):
    folder = copy_run(host_run, tmp_path / "out")
    marker = tmp_path / "executed"
    weights = ProjectPaths(folder).checkpoint("unet")
    data = pickle.dumps({"state_dict": Touch(marker)})
    weights.write_bytes(data)
    meta = json.loads(weights.with_suffix(".json").read_text())
    meta["weights"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    weights.with_suffix(".json").write_text(json.dumps(meta))
    reseal(folder)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        import_run(folder, ProjectPaths(project), tracking)
    assert not marker.exists()


def test_a_recorded_score_the_weights_do_not_reproduce_is_refused(host_run, project, tracking, tmp_path):
    folder = copy_run(host_run, tmp_path / "out")
    metrics = ProjectPaths(folder).metrics("unet")
    record = json.loads(metrics.read_text())
    record["test_miou"] = min(1.0, record["test_miou"] + 0.2)
    metrics.write_text(json.dumps(record))
    reseal(folder)
    with pytest.raises(ReevaluationMismatch, match="re-evaluated here is .* nothing was registered"):
        import_run(folder, ProjectPaths(project), tracking)
    assert mlflow.MlflowClient(tracking.uri).search_registered_models() == []


def add_segnet(folder: Path, test_miou: float) -> None:
    """A second trained architecture in the run folder (untrained weights, a recorded score), resealed."""
    name = "segnet"
    paths = ProjectPaths(folder)
    options = {"width": 0.25}
    unet_meta = load_checkpoint(paths.checkpoint("unet"))[1]
    meta = replace(unet_meta, architecture=name, options=options)
    save_checkpoint(paths.checkpoint(name), build_model(name, meta.num_classes, options=options), meta)
    record = {**json.loads(paths.metrics("unet").read_text()), "architecture": name, "test_miou": test_miou}
    paths.metrics(name).write_text(json.dumps(record))
    run = json.loads((folder / "run.json").read_text())
    run["architectures"][name] = {**run["architectures"]["unet"], "test_miou": test_miou}
    (folder / "run.json").write_text(json.dumps(run))
    reseal(folder)


def test_a_non_best_score_is_verified_and_never_ranked_first(host_run, project, tracking, tmp_path):
    folder = copy_run(host_run, tmp_path / "out")
    add_segnet(folder, 0.99)
    with pytest.raises(RunFolderError, match="best is 'unet', but the highest recorded test_miou is segnet"):
        import_run(folder, ProjectPaths(project), tracking)
    run = json.loads((folder / "run.json").read_text())
    run["best"] = "segnet"  # a consistent forgery: only re-evaluating segnet shows it
    (folder / "run.json").write_text(json.dumps(run))
    reseal(folder)
    with pytest.raises(ReevaluationMismatch, match="segnet's test mIoU re-evaluated here is .* 0.9900"):
        import_run(folder, ProjectPaths(project), tracking)
    assert mlflow.MlflowClient(tracking.uri).search_registered_models() == []


def test_other_prepared_data_is_refused_before_re_evaluating(host_run, project, tracking, tmp_path):
    other = ProjectPaths(tmp_path / "other")
    shutil.copytree(ProjectPaths(project).prepared, other.prepared)
    with (other.prepared / "dataset.json").open("a") as file:
        file.write("\n")
    with pytest.raises(RunFolderError, match="is not the prepared data the run trained on"):
        import_run(copy_run(host_run, tmp_path / "out"), other, tracking)


def test_split_files_are_joined_and_each_part_is_checked(tmp_path):
    folder = tmp_path / "folder"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "weights.bin").write_bytes(bytes(range(25)))
    manifest = write_manifest(folder, {}, part_bytes=10)
    assert [part["bytes"] for part in manifest["files"][0]["parts"]] == [10, 10, 5]
    assert not (folder / "models" / "weights.bin").exists()
    copy = shutil.copytree(folder, tmp_path / "copy")
    verify_folder(folder)
    assert (folder / "models" / "weights.bin").read_bytes() == bytes(range(25))
    (copy / "models" / "weights.bin.part-0001").write_bytes(bytes(10))
    with pytest.raises(ManifestError, match=r"weights.bin.part-0001 is missing or does not match its sha256"):
        verify_folder(copy)
    assert not (copy / "models" / "weights.bin").exists()


def test_a_changed_or_added_bundle_file_stops_the_run(bundle, tmp_path):
    changed = shutil.copytree(bundle, tmp_path / "changed", ignore=shutil.ignore_patterns(".site"))
    with (changed / "params.yaml").open("a") as file:
        file.write("# edited\n")
    with pytest.raises(ManifestError, match="params.yaml does not match its sha256"):
        run_bundle(RunOptions(changed, tmp_path / "out1"))
    added = shutil.copytree(bundle, tmp_path / "added", ignore=shutil.ignore_patterns(".site"))
    (added / "src" / "segpipe" / "extra.py").write_text("")
    with pytest.raises(ManifestError, match="does not list .src/segpipe/extra.py"):
        run_bundle(RunOptions(added, tmp_path / "out2"))
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_time_limit_skips_architectures_that_would_not_fit(bundle, tmp_path, capsys):
    assert fits(0.0, [], 10.0) and fits(4.0, [5.0, 3.0], 10.0) and not fits(6.0, [5.0, 3.0], 10.0)
    assert fits(1e9, [1e9], None)
    out = tmp_path / "out"
    code = main(["remote", "run", str(bundle), "--out", str(out), "--device", "cpu", "--time-limit", "0"])
    assert code == 1 and "no architecture finished" in capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["architectures"]["unet"] == {
        "status": "skipped",
        "reason": "--time-limit 0 s would likely be passed",
    }
    assert run["best"] is None and not (out / "models").exists()


def test_pack_refuses_a_bundle_over_its_size_limit(project, tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(ValueError, match="over --max-bundle-mb 0.01"):
        pack_bundle(PackOptions(target, project, project / "params.yaml", max_bundle_mb=0.01))
    assert not target.exists() and not list(tmp_path.iterdir())


def test_overrides_go_through_the_config_checks(bundle, tmp_path):
    with pytest.raises(ValueError, match="train.epochs"):
        run_bundle(RunOptions(bundle, tmp_path / "out", epochs=0))
    assert yaml.safe_load((bundle / "params.yaml").read_text())["tracking"]["enabled"] is True
    assert MANIFEST in {path.name for path in bundle.iterdir()}


class Touch:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.mkdir, (Path(self.path),))
