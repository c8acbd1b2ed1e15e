"""Wheels of installed distributions, for hosts with the same Python version and platform as this machine.

A wheel is a zip of the files listed in a distribution's ``RECORD``, with its ``.dist-info`` folder.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from importlib import metadata
from pathlib import Path

RUNTIME_DISTRIBUTIONS = (
    # segpipe.config and the model options
    *("pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection"),
    "pyyaml",  # params.yaml
    "tqdm",  # the training loop's progress
    "safetensors",  # checkpoints
)
"""What the train and evaluate stages import, with tracking off, besides torch, numpy and Pillow."""


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _tag(distribution: metadata.Distribution, name: str) -> str:
    """The first ``Tag:`` of the distribution's ``WHEEL`` file (how it was installed)."""
    text = distribution.read_text("WHEEL") or ""
    tags = re.findall(r"^Tag:\s*(\S+)\s*$", text, flags=re.MULTILINE)
    if not tags:
        raise ValueError(
            f"{name} was not installed from a wheel (no WHEEL tag): reinstall it with pip, or pass "
            f"a ready wheel with --wheels"
        )
    return tags[0]


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(name: str, dest: Path) -> Path:
    """Write ``<name>-<version>-<tag>.whl`` of the installed distribution ``name`` into ``dest``."""
    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise ValueError(
            f"{name} is not installed here, so it cannot be vendored: install it, or pass its "
            f"wheel with --wheels"
        ) from None
    files = [
        file
        for file in distribution.files or ()
        if ".." not in file.parts and "__pycache__" not in file.parts
    ]
    record = next(
        (file for file in files if file.name == "RECORD" and file.parent.name.endswith(".dist-info")), None
    )
    if record is None:
        raise ValueError(f"{name} has no RECORD file: reinstall it with pip, or pass its wheel with --wheels")
    target = Path(dest) / (
        f"{_normalised(distribution.metadata['Name'])}-{distribution.version}-{_tag(distribution, name)}.whl"
    )
    lines = []
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as wheel:
        for file in files:
            if file == record:
                continue
            data = Path(distribution.locate_file(file)).read_bytes()
            wheel.writestr(file.as_posix(), data)
            lines.append(_record_line(file.as_posix(), data))
        wheel.writestr(record.as_posix(), "\n".join([*lines, f"{record.as_posix()},,"]) + "\n")
    return target


def build_wheels(names: tuple[str, ...], dest: Path) -> list[Path]:
    """Wheels of ``names`` (installed distributions) in ``dest``."""
    return [build_wheel(name, dest) for name in names]
