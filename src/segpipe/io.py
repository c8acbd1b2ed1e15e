"""Atomic file writes: a reader sees either the old file or the complete new one, never half.

Temporary files and folders are created with the modes an ordinary ``open`` / ``mkdir`` would give them
(0666 / 0777 less the umask), so what segpipe publishes is as readable as any other file the user writes.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
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


def _create_beside(target: Path, make: Callable[[Path], None]) -> Path:
    """A new, unused ``.<name>.<random>.tmp`` path beside ``target``, created by ``make`` (which must fail
    with FileExistsError when the path is taken)."""
    while True:
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue


def _new_file(path: Path) -> None:
    # O_EXCL: never reuse a path someone else holds; mode 0o666 lets the umask decide, as open() would
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _new_folder(path: Path) -> None:
    path.mkdir(mode=0o777)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only if the block succeeds."""
    target = Path(target)
    with _explained(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_beside(target, _new_file)
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
    staging = _create_beside(target, _new_folder)
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
