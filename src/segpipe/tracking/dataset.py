"""The prepared data as the dataset input of a training run: name, split sizes, classes and DVC's hash of
``data/prepared``, so the MLflow runs list's Dataset column and filter tell runs on different data apart.

Nothing here imports MLflow: a deferred train stage spools the record, and
:mod:`segpipe.tracking.mlflow_dataset` turns it into an MLflow dataset where it is sent."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from segpipe.data.manifest import DatasetInfo
from segpipe.training.tracker import Tracker

PREPARED_OUT = "data/prepared"
"""The prepare stage's out in ``dvc.lock`` whose hash names the data."""
TRAINING_CONTEXT = "training"
CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_directory_md5(directory: Path) -> str:
    """DVC's ``md5`` of a directory (``<hex>.dir``, as ``dvc.lock`` records it): the md5 of the JSON list of
    its files' ``{"md5", "relpath"}``, sorted by relative path."""
    directory = Path(directory)
    entries = []
    for folder, _, files in os.walk(directory):
        for name in files:
            path = Path(folder) / name
            entries.append({"md5": file_md5(path), "relpath": path.relative_to(directory).as_posix()})
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing).hexdigest() + ".dir"


def locked_md5(lock_file: Path) -> str | None:
    """The md5 ``dvc.lock`` records for ``data/prepared`` (None: no lock file, or no such out in it)."""
    try:
        import yaml  # only where a lock file is read: training hosts need not have PyYAML
    except ImportError:
        return None
    try:
        lock = yaml.safe_load(Path(lock_file).read_text(encoding="utf-8"))
        for out in lock["stages"]["prepare"]["outs"]:
            if Path(out["path"]) == Path(PREPARED_OUT):
                return str(out["md5"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return None


def prepared_digest(prepared: Path, lock_file: Path) -> str:
    """DVC's hash of the prepared data without ``.dir`` (32 hex digits): from ``dvc.lock``, else computed."""
    md5 = locked_md5(lock_file) or dvc_directory_md5(prepared)
    return md5.removesuffix(".dir")


def dataset_record(prepared: Path, lock_file: Path) -> dict[str, object]:
    """What a training run records of its data, as JSON-ready values."""
    info = DatasetInfo.load(prepared)
    return {
        "name": info.name,
        "digest": prepared_digest(prepared, lock_file),
        "source": str(Path(prepared).absolute()),
        "split_sizes": dict(info.split_sizes),
        "class_names": list(info.class_names),
        "image_size": None if info.image_size is None else list(info.image_size),  # None: sizes differ
    }


def log_training_data(tracker: Tracker, prepared: Path, lock_file: Path) -> None:
    """Record the prepared data as the training run's dataset input (nothing for an untracked run)."""
    if tracker.run_key is not None:
        tracker.log_dataset(dataset_record(prepared, lock_file))
