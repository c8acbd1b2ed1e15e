"""``segpipe remote pack``: a self-contained folder to train on another machine.

A bundle holds segpipe's code (``src/segpipe``), the prepared data of any dataset as the prepare stage wrote
it (``data/prepared``) with its validation summary, ``params.yaml``, optional wheels (``wheels/``), the
bootstrap ``run.py`` and ``manifest.json`` (size and sha256 of every file, and a digest of the prepared data
that ``segpipe remote import`` compares with the data it re-evaluates on).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segpipe
from segpipe import io
from segpipe.paths import ProjectPaths
from segpipe.remote.manifest import listed_files, write_manifest
from segpipe.remote.wheels import RUNTIME_DISTRIBUTIONS, build_wheels

BUNDLE_FORMAT = "segpipe-bundle/1"
BOOTSTRAP = "run.py"
MiB = 2**20


@dataclass(frozen=True)
class PackOptions:
    out: Path
    root: Path = Path(".")
    """The project whose ``data/prepared`` and ``reports/validation/summary.json`` travel."""
    params: Path = Path("params.yaml")
    wheels: Path | None = None
    """A folder of ready wheels to include."""
    vendor_environment: bool = False
    """Also build wheels of segpipe's runtime dependencies from this environment."""
    shard_mb: float | None = None
    """Split files larger than this many MiB into parts (None: no splitting)."""
    max_bundle_mb: float | None = None
    """Refuse a bundle larger than this many MiB (None: no limit)."""


def data_digest(prepared: Path) -> str:
    """sha256 over the prepared data's file names and contents: equal digests mean the same prepared data."""
    prepared = Path(prepared)
    digest = hashlib.sha256()
    for relative in listed_files(prepared):
        digest.update(f"{relative}\0".encode())
        digest.update(hashlib.sha256((prepared / relative).read_bytes()).digest())
    return digest.hexdigest()


def _check_project(options: PackOptions) -> ProjectPaths:
    from segpipe.config import load_params
    from segpipe.data.manifest import DatasetInfo
    from segpipe.data.validation import require_passed

    load_params(options.params)
    paths = ProjectPaths(options.root)
    DatasetInfo.load(paths.prepared)
    require_passed(paths.validation_summary)
    if options.shard_mb is not None and options.shard_mb < 1:
        raise ValueError(f"--shard-mb {options.shard_mb:g} is too small: give at least 1 (MiB)")
    if options.wheels is not None and not sorted(Path(options.wheels).glob("*.whl")):
        raise FileNotFoundError(f"--wheels {options.wheels} holds no .whl files: give a folder of wheels")
    return paths


def _copy_contents(staging: Path, options: PackOptions, paths: ProjectPaths) -> None:
    package = Path(segpipe.__file__).resolve().parent
    shutil.copytree(
        package, staging / "src" / "segpipe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    shutil.copytree(paths.prepared, staging / "data" / "prepared")
    summary = staging / "reports" / "validation" / "summary.json"
    summary.parent.mkdir(parents=True)
    shutil.copyfile(paths.validation_summary, summary)
    shutil.copyfile(options.params, staging / "params.yaml")
    shutil.copyfile(package / "remote" / "bootstrap.py", staging / BOOTSTRAP)
    wheels = staging / "wheels"
    wheels.mkdir()
    if options.wheels is not None:
        for wheel in sorted(Path(options.wheels).glob("*.whl")):
            shutil.copyfile(wheel, wheels / wheel.name)
    if options.vendor_environment:
        build_wheels(RUNTIME_DISTRIBUTIONS, wheels)


def _check_size(staging: Path, limit_mb: float | None) -> int:
    total = sum((staging / relative).stat().st_size for relative in listed_files(staging))
    if limit_mb is not None and total > limit_mb * MiB:
        raise ValueError(
            f"the bundle would hold {total / MiB:.1f} MiB, over --max-bundle-mb {limit_mb:g}: "
            f"leave out wheels the host has, or prepare the data at a smaller size"
        )
    return total


def pack_bundle(options: PackOptions) -> dict[str, Any]:
    """Write the bundle folder ``options.out`` (swapped in whole, only when complete); its manifest."""
    paths = _check_project(options)
    part_bytes = None if options.shard_mb is None else int(options.shard_mb * MiB)
    with io.atomic_directory(Path(options.out)) as staging:
        _copy_contents(staging, options, paths)
        total = _check_size(staging, options.max_bundle_mb)
        extra = {
            "kind": BUNDLE_FORMAT,
            "data_sha256": data_digest(staging / "data" / "prepared"),
            "bytes": total,
        }
        manifest = write_manifest(staging, extra, part_bytes, whole=("src/", BOOTSTRAP))
    return manifest
