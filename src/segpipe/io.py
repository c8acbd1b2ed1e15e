"""Atomic file writes: a reader sees either the old file or the complete new one, never half."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class OutputWriteError(ValueError):
    """An output could not be written (disk full, read-only file system, no permission)."""


_FIXES = {
    errno.ENOSPC: "free disk space (or point the project at a larger disk) and re-run",
    errno.EDQUOT: "free space within your disk quota and re-run",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or free space, and re-run",
    errno.EROFS: "the file system is read-only: run the project from a writable folder",
    errno.EACCES: "make the folder writable for this user (chmod / chown) and re-run",
    errno.EPERM: "make the folder writable for this user (chmod / chown) and re-run",
}


@contextmanager
def _explained(target: Path) -> Iterator[None]:
    """Turn disk-full / read-only / permission errors into one message naming the file and the fix."""
    try:
        yield
    except OSError as error:
        if error.errno not in _FIXES:
            raise
        raise OutputWriteError(
            f"{target}: cannot be written ({error.strerror}); {_FIXES[error.errno]}. "
            f"Nothing was half-written: the previous {target.name}, if any, is unchanged"
        ) from None


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only if the block succeeds."""
    target = Path(target)
    with _explained(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _explained(target):
            yield tmp
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())  # on disk before the rename publishes it


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: Path, payload: Any) -> None:
    write_text(target, json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_with(target: Path, writer: Callable[[Path], None]) -> None:
    """Let ``writer`` fill a temporary file (e.g. ``torch.save``, ``savefig``), then publish it."""
    with atomic_path(target) as tmp:
        writer(tmp)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Build a directory under a temporary name; swap it in for ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        retired = None
        if target.exists():
            retired = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, retired)
        os.replace(staging, target)
        if retired is not None:
            shutil.rmtree(retired)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
