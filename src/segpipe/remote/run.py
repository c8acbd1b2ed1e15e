"""``segpipe remote run``: train and test every architecture of a bundle on the machine it was copied to.

The bundle's ``params.yaml`` goes through the same config classes as the pipeline, with the command-line
overrides applied and tracking off; each architecture runs the train stage's ``run_train`` and the evaluate
stage's ``run_evaluate`` in the output folder, which is laid out as a project (``models/<architecture>/``,
``reports/metrics/``, ``reports/curves/``, ...) plus ``run.json`` (host, settings, timings) and
``manifest.json``. Needs torch, numpy, Pillow and the bundle's wheels only.
"""

from __future__ import annotations

import csv
import io as text_io
import platform
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from segpipe import io
from segpipe.config import Params, load_params, parse_params
from segpipe.paths import ProjectPaths
from segpipe.remote.bundle import BUNDLE_FORMAT
from segpipe.remote.manifest import verify_folder, write_manifest

RUN_FORMAT = "segpipe-remote-run/1"
RUN_FILE = "run.json"
LEADERBOARD_COLUMNS = (
    "architecture",
    "test_miou",
    "test_pixel_acc",
    "test_mean_class_acc",
    "best_epoch",
    "params_m",
    "infer_img_per_s",
    "train_seconds",
)


@dataclass(frozen=True)
class RunOptions:
    bundle: Path
    out: Path
    device: str | None = None
    """``auto``, ``cpu`` or ``cuda`` instead of params' ``train.device``."""
    architectures: tuple[str, ...] | None = None
    epochs: int | None = None
    time_limit: float | None = None
    """Seconds: an architecture is not started when the run would likely pass this."""
    shard_mb: float | None = None
    """Split output files larger than this many MiB into parts."""


def host_params(options: RunOptions) -> Params:
    """The bundle's params with the overrides applied and tracking off, validated as ``params.yaml`` is."""
    source = Path(options.bundle) / "params.yaml"
    raw = load_params(source).model_dump(mode="json", by_alias=True)
    raw["tracking"]["enabled"] = False
    train = raw["train"]
    if options.device is not None:
        train["device"] = options.device
    if options.epochs is not None:
        train["epochs"] = options.epochs
    if options.architectures is not None:
        train["architectures"] = list(options.architectures)
    return parse_params(raw, source)


def describe_host(params: Params) -> dict[str, Any]:
    from segpipe.training.device import describe_device, resolve_device

    device = resolve_device(params.train.device)
    cuda = device.type == "cuda"
    return {
        "device": describe_device(device),
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_properties": _gpu_properties(device) if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "platform": platform.platform(),
    }


def _gpu_properties(device: torch.device) -> dict[str, Any]:
    """What the GPU reports of itself: timing evidence for the import beside the device's name."""
    properties = torch.cuda.get_device_properties(device)
    return {
        "total_memory_gib": round(properties.total_memory / 2**30, 1),
        "multi_processor_count": properties.multi_processor_count,
        "capability": f"{properties.major}.{properties.minor}",
    }


def fits(elapsed: float, durations: list[float], limit: float | None) -> bool:
    """Whether another architecture likely ends within ``limit`` seconds, judged by the slowest one so far."""
    if limit is None:
        return True
    return elapsed + max(durations, default=0.0) <= limit


def _link_data(bundle: Path, out: Path) -> ProjectPaths:
    """A project rooted at ``out`` that reads the bundle's prepared data (linked) and validation summary."""
    paths = ProjectPaths(out)
    paths.prepared.parent.mkdir(parents=True)
    paths.prepared.symlink_to((bundle / "data" / "prepared").resolve(), target_is_directory=True)
    paths.validation_summary.parent.mkdir(parents=True)
    shutil.copyfile(bundle / "reports" / "validation" / "summary.json", paths.validation_summary)
    return paths


def _unlink_data(paths: ProjectPaths) -> None:
    paths.prepared.unlink()
    paths.prepared.parent.rmdir()
    paths.validation_summary.unlink()
    paths.validation_summary.parent.rmdir()


def _train_and_test(params: Params, architecture: str, paths: ProjectPaths) -> dict[str, Any]:
    from segpipe.stages.evaluate import run_evaluate
    from segpipe.stages.train import run_train

    started = time.monotonic()
    run_train(params, architecture, paths, progress=False)
    trained = time.monotonic()
    metrics = run_evaluate(params, architecture, paths)
    seconds = {"train": trained - started, "evaluate": time.monotonic() - trained}
    return {"status": "trained", "test_miou": metrics["test_miou"], "seconds": seconds}


def _run_architectures(params: Params, paths: ProjectPaths, limit: float | None) -> dict[str, dict[str, Any]]:
    started = time.monotonic()
    records: dict[str, dict[str, Any]] = {}
    durations: list[float] = []
    for name in params.train.architectures:
        if not fits(time.monotonic() - started, durations, limit):
            records[name] = {
                "status": "skipped",
                "reason": f"--time-limit {limit:g} s would likely be passed",
            }
            print(f"{name}: skipped, the time limit would likely be passed", flush=True)
            continue
        try:
            records[name] = _train_and_test(params, name, paths)
        # out of memory, diverged, a library the host lacks: record it, go on with the others
        except (RuntimeError, ValueError, ImportError) as error:
            records[name] = {
                "status": "failed",
                "reason": f"{type(error).__name__}: {str(error).splitlines()[0]}",
            }
            print(f"{name}: FAILED {records[name]['reason']}", flush=True)
            continue
        durations.append(sum(records[name]["seconds"].values()))
        print(f"{name}: test mIoU {records[name]['test_miou']:.4f} in {durations[-1]:.1f} s", flush=True)
    return records


def _write_leaderboard(paths: ProjectPaths, records: dict[str, dict[str, Any]], host: dict[str, Any]) -> None:
    trained = [name for name, record in records.items() if record["status"] == "trained"]
    rows = sorted((io.read_json(paths.metrics(name)) for name in trained), key=lambda m: -m["test_miou"])
    table = [{column: row.get(column, "") for column in LEADERBOARD_COLUMNS} for row in rows]
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LEADERBOARD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    io.write_text(paths.leaderboard_csv, buffer.getvalue())
    lines = [
        f"# Remote run on {host['device']} (torch {host['torch']}, Python {host['python']})",
        "",
        "| " + " | ".join(LEADERBOARD_COLUMNS) + " |",
        "|" + "---|" * len(LEADERBOARD_COLUMNS),
        *(
            "| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()) + " |"
            for row in table
        ),
    ]
    lines += [
        f"- {name}: {record['status']}, {record['reason']}"
        for name, record in records.items()
        if record["status"] != "trained"
    ]
    io.write_text(paths.leaderboard_md, "\n".join(lines) + "\n")


def run_bundle(options: RunOptions) -> dict[str, Any]:
    """Train and test the bundle's architectures into ``options.out``; run.json's content."""
    started = time.monotonic()
    bundle, out = Path(options.bundle), Path(options.out)
    manifest = verify_folder(bundle)
    if manifest.get("kind") != BUNDLE_FORMAT or not isinstance(manifest.get("data_sha256"), str):
        raise ValueError(
            f"{bundle} is not a {BUNDLE_FORMAT} folder: give a folder `segpipe remote pack` wrote"
        )
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} is not empty: give a new folder for this run's outputs")
    params = host_params(options)
    host = describe_host(params)
    print(
        f"remote run on {host['device']}, torch {host['torch']}: {', '.join(params.train.architectures)}",
        flush=True,
    )
    paths = _link_data(bundle, out)
    try:
        from segpipe.data.manifest import DatasetInfo

        dataset = DatasetInfo.load(paths.prepared).name
        records = _run_architectures(params, paths, options.time_limit)
    finally:
        _unlink_data(paths)
    _write_leaderboard(paths, records, host)
    trained = {name: record["test_miou"] for name, record in records.items() if record["status"] == "trained"}
    run = {
        "format": RUN_FORMAT,
        "run_id": uuid.uuid4().hex,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host,
        "settings": {
            "device": params.train.device,
            "epochs": params.train.epochs,
            "batch_size": params.train.batch_size,
            "architectures": params.train.architectures,
            "time_limit": options.time_limit,
        },
        "data": {"dataset": dataset, "sha256": manifest["data_sha256"]},
        "architectures": records,
        "best": max(trained, key=trained.get) if trained else None,
        "wall_seconds": time.monotonic() - started,
    }
    io.write_json(out / RUN_FILE, run)
    part_bytes = None if options.shard_mb is None else int(options.shard_mb * 2**20)
    write_manifest(out, {"kind": RUN_FORMAT}, part_bytes)
    return run
