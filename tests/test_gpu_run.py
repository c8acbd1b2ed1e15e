"""The GPU-machine path on the CPU: the CamVid pack, a smoke gpu_run without MLflow/DVC/great-expectations,
and importing its output into MLflow (and refusing altered outputs).

The pack is made from a few CamVid images when ``SEGPIPE_CAMVID`` points at CamVid, else from a tiny synthetic
folder in CamVid's layout.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from segpipe.config import TrackingParams
from segpipe.remote.bundle import PackError, build_pack, open_pack, pad_to_multiple
from segpipe.data.sources.camvid import CLASS_NAMES
from segpipe.remote.importer import ReevaluationMismatch, RunFolderError, import_run
from segpipe.remote.weights import SHARD_LIMIT, WeightsError, check_exportable, load_model, transport_state, write_weights
from segpipe.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CAMVID = os.environ.get("SEGPIPE_CAMVID")
USE_CAMVID = bool(CAMVID) and Path(CAMVID).is_dir()
PER_SPLIT = 6
GPU = "NVIDIA H100 80GB HBM3"
BLOCKED = ("mlflow", "dvc", "great_expectations", "albumentations")


def synthetic_camvid(root: Path, size: tuple[int, int] = (60, 80)) -> Path:
    """CamVid's layout and labels: {split}/{images,masks}/*.png, classes.txt, ids 0..10 and void 11."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (12, 3), dtype=np.uint8)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for split in ("train", "val", "test"):
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True)
        for index in range(PER_SPLIT):
            mask = np.full(size, 11, dtype=np.uint8)
            for band, class_id in enumerate(rng.choice(11, size=4, replace=False)):
                mask[band * size[0] // 5 : (band + 1) * size[0] // 5] = class_id
            image = np.clip(palette[mask].astype(int) + rng.integers(-2, 3, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"seq_{index:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"seq_{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory) -> Path:
    return Path(CAMVID) if USE_CAMVID else synthetic_camvid(tmp_path_factory.mktemp("camvid"))


@pytest.fixture(scope="module")
def pack_file(camvid_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "camvid.npz"
    build_pack(camvid_root, out, max_per_split=PER_SPLIT, image_size=(360, 480) if USE_CAMVID else (60, 80))
    return out


@pytest.fixture(scope="module")
def smoke_run(pack_file, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``gpu_run.py --smoke`` in a fresh interpreter where MLflow, DVC, great-expectations (and albumentations,
    absent on the GPU machine) raise ModuleNotFoundError, as when they are not installed."""
    scratch = tmp_path_factory.mktemp("smoke")
    blocker = scratch / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys

        class NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
                return None

        sys.meta_path.insert(0, NotInstalled())
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT / "src")]),
           "OMP_NUM_THREADS": "1"}  # tiny models run fastest on one thread (as conftest sets for in-process tests)
    out = scratch / "out"
    done = subprocess.run([sys.executable, str(ROOT / "pipelines" / "gpu_run.py"), "--smoke", "--device", "cpu",
                           "--pack", str(pack_file), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    return out, done


def test_smoke_run_trains_evaluates_and_exports_without_mlflow_dvc_or_great_expectations(smoke_run):
    out, done = smoke_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(path.name for path in out.iterdir())
    shards = [name for name in files if name.endswith(".safetensors")]
    assert set(files) - set(shards) == {"run.json", "metrics.json", "leaderboard.csv", "leaderboard.md", "model.json"}
    assert 1 <= len(shards) <= 3 and len(files) <= 8  # the GPU machine hands back at most 8 files
    assert all((out / name).stat().st_size <= 16 * 2**20 for name in files)

    run = json.loads((out / "run.json").read_text())
    assert run["environment"]["device"].startswith("cpu (") and run["environment"]["gpu_name"] is None
    assert run["failures"] == {} and run["architectures"] == ["unet", "dilated", "smp_fpn"]
    assert run["data"]["image_size"] == [90, 120] and run["data"]["input_size"] == [96, 128]
    assert run["data"]["padding"] == {"top": 3, "bottom": 3, "left": 4, "right": 4}
    assert run["data"]["split_sizes"] == {"train": PER_SPLIT, "val": PER_SPLIT, "test": PER_SPLIT}
    assert set(run["timings"]) == set(run["architectures"])

    metrics = json.loads((out / "metrics.json").read_text())
    for name, record in metrics.items():
        assert 0.0 <= record["test_miou"] <= 1.0 and set(record["test_per_class_iou"]) == set(CLASS_NAMES)
        assert 1 <= record["epochs"] <= 2 and len(record["history"]) == record["epochs"]
        assert record["train_img_per_s"] > 0 and record["bare_img_per_s"] > 0
        assert record["loop_vs_bare"] == pytest.approx(record["train_img_per_s"] / record["bare_img_per_s"])
    best = max(metrics.values(), key=lambda record: record["test_miou"])["architecture"]
    assert run["best"]["architecture"] == best

    rows = (out / "leaderboard.csv").read_text().splitlines()
    assert rows[0].startswith("architecture,family,test_miou") and len(rows) == 4
    assert rows[1].split(",")[0] == best and f"| {best} |" in (out / "leaderboard.md").read_text()
    model_meta = json.loads((out / "model.json").read_text())
    assert model_meta["architecture"] == best and model_meta["dtype"] == "bfloat16"
    assert [shard["file"] for shard in model_meta["shards"]] == shards


def _copy(smoke_run, target: Path, gpu: str | None = GPU) -> Path:
    """The smoke output as a GPU run would have written it (run.json's device faked)."""
    out, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.copytree(out, target)
    if gpu:
        path = target / "run.json"
        run = json.loads(path.read_text())
        run["environment"].update(device=f"cuda ({gpu})", gpu_name=gpu)
        path.write_text(json.dumps(run))
    return target


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> TrackingParams:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts land under tmp_path/mlruns
    return TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_import_run_logs_runs_and_registers_the_best_model_as_cuda_trained(smoke_run, pack_file, tracking, tmp_path):
    folder = _copy(smoke_run, tmp_path / "gpu")
    imported = import_run(folder, pack_file, tracking)

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("segpipe-camvid")
    runs = client.search_runs([experiment.experiment_id])
    by_name = {run.info.run_name: run for run in runs if "architecture" in run.data.tags}
    assert set(by_name) == {"unet", "dilated", "smp_fpn"} and len(runs) == 4  # + the parent run
    for name, run in by_name.items():
        assert run.data.tags["device"] == f"cuda ({GPU})" and run.data.tags["gpu_name"] == GPU
        assert run.data.tags["mlflow.parentRunId"] == imported.parent_run_id and run.info.status == "FINISHED"
        assert "timing.fit_seconds" in run.data.tags and "test_miou" in run.data.metrics
    metrics = json.loads((folder / "metrics.json").read_text())
    best = imported.architecture
    assert by_name[best].data.metrics["test_miou"] == pytest.approx(metrics[best]["test_miou"])

    version = client.get_model_version_by_alias("segpipe-camvid", "challenger")
    assert str(version.version) == imported.registered.version and version.run_id == by_name[best].info.run_id
    assert version.tags["device"] == f"cuda ({GPU})" and version.tags["architecture"] == best
    assert client.get_run(version.run_id).data.tags["device"].startswith("cuda")  # what promote --require-gpu reads
    assert abs(imported.cpu_miou - metrics[best]["test_miou"]) <= 0.005
    assert "@challenger" in imported.summary() and best in imported.summary()
    with pytest.raises(RunFolderError, match="already imported"):
        import_run(folder, pack_file, tracking)


def test_cli_import_run_registers_and_writes_the_registry_record(smoke_run, pack_file, tracking, tmp_path, capsys):
    from segpipe.cli import main

    folder = _copy(smoke_run, tmp_path / "gpu")
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking: {{uri: '{tracking.uri}'}}\n")
    argv = ["--params", str(params), "--root", str(tmp_path), "import-run", str(folder), "--pack", str(pack_file)]
    assert main(argv) == 0
    assert "@challenger" in capsys.readouterr().out
    record = json.loads((tmp_path / "reports" / "registry.json").read_text())
    assert record["name"] == "segpipe-camvid" and record["alias"] == "challenger"
    assert main(argv) == 1  # the same folder again: refused in one line
    err = capsys.readouterr().err
    assert "already imported" in err and "Traceback" not in err


def _tamper_metrics(folder: Path) -> None:
    for name in ("metrics.json", "run.json"):
        path = folder / name
        record = json.loads(path.read_text())
        target = record[_best(folder)] if name == "metrics.json" else record["best"]
        target["test_miou"] += 0.01 if target["test_miou"] < 0.5 else -0.01
        path.write_text(json.dumps(record))


def _best(folder: Path) -> str:
    return json.loads((folder / "run.json").read_text())["best"]["architecture"]


def _flip_shard_byte(folder: Path) -> None:
    path = folder / "model-01.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rename_shard(name: str):
    def tamper(folder: Path) -> None:
        path = folder / "model.json"
        meta = json.loads(path.read_text())
        meta["shards"][0]["file"] = name
        path.write_text(json.dumps(meta))
    return tamper


class _Marker:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def _pickle_as_shard(folder: Path) -> None:
    import hashlib

    data = pickle.dumps({"payload": _Marker(folder / "UNPICKLED"), "weights": torch.zeros(3)})
    (folder / "model-01.safetensors").write_bytes(data)
    path = folder / "model.json"
    meta = json.loads(path.read_text())  # a producer that rewrote the meta to match passes the sha256 check
    meta["shards"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def refusal_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("refusals")


@pytest.fixture
def refusal_tracking(refusal_store, monkeypatch) -> TrackingParams:
    """One store for every refusal (none may leave anything in it), so that it is created once."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(refusal_store)
    return TrackingParams(uri=f"sqlite:///{refusal_store / 'mlflow.db'}")


def _assert_nothing_imported() -> None:
    client = mlflow.MlflowClient()
    assert client.search_registered_models() == []
    experiment = client.get_experiment_by_name("segpipe-camvid")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []


@pytest.mark.parametrize(("tamper", "error", "message"), [
    (_tamper_metrics, ReevaluationMismatch, "re-evaluated on the CPU"),
    (_flip_shard_byte, WeightsError, "does not match the size and sha256"),
    (_rename_shard("../x.safetensors"), WeightsError, "no paths"),
    (_rename_shard("/tmp/x.safetensors"), WeightsError, "no paths"),
    (_pickle_as_shard, WeightsError, "not a safetensors file"),
], ids=["metrics+0.01", "bad-sha256", "path-traversal", "absolute-path", "pickle-as-safetensors"])
def test_import_run_refuses_altered_outputs_and_registers_nothing(smoke_run, pack_file, refusal_tracking, tmp_path,
                                                                   tamper, error, message):
    folder = _copy(smoke_run, tmp_path / "gpu")
    tamper(folder)
    with pytest.raises(error, match=message):
        import_run(folder, pack_file, refusal_tracking)
    _assert_nothing_imported()
    assert not (folder / "UNPICKLED").exists()


def test_import_run_refuses_a_different_pack(smoke_run, camvid_root, tmp_path, refusal_tracking):
    folder = _copy(smoke_run, tmp_path / "gpu")
    other = tmp_path / "other.npz"
    build_pack(camvid_root, other, quality=80, max_per_split=PER_SPLIT, image_size=(360, 480) if USE_CAMVID else (60, 80))
    with pytest.raises(RunFolderError, match="is not the pack the run used"):
        import_run(folder, other, refusal_tracking)
    _assert_nothing_imported()


def test_weights_are_sharded_within_the_limit_and_load_back_exactly_as_bfloat16(tmp_path):
    model = build_model("unet", 11, options={"depth": 2, "base_channels": 8})
    state = transport_state(model)
    total = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    limit = total // 2 + 16 * 1024
    with pytest.raises(ValueError, match="more than the 1 that come back"):
        check_exportable("unet", state, limit, max_shards=1)
    (tmp_path / "model-09.safetensors").write_bytes(b"stale")
    meta = {"architecture": "unet", "options": {"depth": 2, "base_channels": 8}, "num_classes": 11,
            "class_names": list(CLASS_NAMES), "ignore_index": 255, "image_size": [90, 120], "input_size": [96, 128],
            "padding": {"top": 3, "bottom": 3, "left": 4, "right": 4}}
    written = write_weights(state, tmp_path, meta, limit=limit, max_shards=8)
    assert len(written["shards"]) >= 2 and all(shard["bytes"] <= limit <= SHARD_LIMIT for shard in written["shards"])
    assert not (tmp_path / "model-09.safetensors").exists()
    loaded, loaded_meta = load_model(tmp_path)
    assert loaded_meta.padding.top == 3 and loaded_meta.input_size == (96, 128)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key].to(value.dtype)), key


def test_pack_round_trip_size_and_corruption(camvid_root, pack_file, tmp_path):
    pack = open_pack(pack_file)
    info = pack.info
    assert info.class_names == CLASS_NAMES and info.ignore_index == 255 and info.jpeg_quality == 90
    assert info.split_sizes == {"train": PER_SPLIT, "val": PER_SPLIT, "test": PER_SPLIT}
    assert info.bytes == pack_file.stat().st_size
    raw_bytes = 3 * PER_SPLIT * info.image_size[0] * info.image_size[1] * 4  # RGB + mask, uint8
    assert info.bytes < raw_bytes / 3  # JPEG + PNG, not raw arrays

    test = pack.split("test")
    for index, sample_id in enumerate(pack.ids("test")):
        split, stem = sample_id.split("/")
        source_image = np.array(Image.open(camvid_root / split / "images" / f"{stem}.png").convert("RGB"))
        source_mask = np.array(Image.open(camvid_root / split / "masks" / f"{stem}.png"))
        assert np.array_equal(test.masks[index], np.where(source_mask == 11, 255, source_mask))  # lossless, void -> 255
        assert np.abs(test.images[index].astype(int) - source_image).mean() < 8  # JPEG q90 (CamVid: ~2)
    padded, padding = pad_to_multiple(test, 32, 255)
    assert padded.images.shape[1] % 32 == 0 and padded.images.shape[2] % 32 == 0
    assert (padded.masks[:, : padding.top] == 255).all() and (padded.images[:, : padding.top] == 0).all()

    data = pack_file.read_bytes()
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :])
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 3])
    relabelled = tmp_path / "relabelled.npz"
    with np.load(pack_file, allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    meta = json.loads(str(entries["meta"]))
    entries["meta"] = np.array(json.dumps({**meta, "class_names": [*meta["class_names"][1:], "Sky"]}))
    with relabelled.open("wb") as handle:
        np.savez(handle, **entries)
    for broken in (flipped, truncated, relabelled):
        with pytest.raises(PackError, match=r"re-create it with: python pipelines/pack.py"):
            open_pack(broken)
    with pytest.raises(ValueError, match="over the 0.01 MiB limit"):
        build_pack(camvid_root, tmp_path / "big.npz", max_per_split=PER_SPLIT, max_mib=0.01)
    assert not (tmp_path / "big.npz").exists()
