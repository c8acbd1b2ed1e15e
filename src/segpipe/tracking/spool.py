"""A run's tracking calls that have not reached the MLflow server yet, kept durably on local disk.

A spool is one JSON-lines file per run: call records (``{"op": ...}``) in the order they were made, and
progress records (``{"progress": ...}``) appended after each call reaches the server, so a replay picks up
where the last one stopped. Saved models lie in a folder beside it."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests
import urllib3

from segpipe.tracking.context import project_root

SPOOL_ENV = "SEGPIPE_TRACKING_SPOOL"
DEFAULT_SPOOL_DIR = Path(".segpipe/tracking-spool")
UNREACHABLE = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    # retries used up on 429/5xx answers, e.g. a proxy in front of a stopped server
    requests.exceptions.RetryError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


class ServerUnreachable(RuntimeError):
    """The tracking server did not answer (connection refused, timed out)."""


def spool_dir() -> Path:
    """``$SEGPIPE_TRACKING_SPOOL``, else ``.segpipe/tracking-spool`` under the project (see
    :func:`~segpipe.tracking.context.project_root`)."""
    return project_root() / Path(os.environ.get(SPOOL_ENV) or DEFAULT_SPOOL_DIR)


def new_spool_path(run_label: str, directory: Path | None = None) -> Path:
    """``<directory>/<run label>-<timestamp>.jsonl`` (``directory`` defaults to :func:`spool_dir`)."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"{now % 1:.3f}"[1:]
    safe_label = re.sub(r"[^\w.-]+", "_", run_label)
    return (directory or spool_dir()) / f"{safe_label}-{stamp}.jsonl"


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps, as ``MlflowException`` wraps ``requests`` errors) says the server
    could not be reached, rather than that it refused the call."""
    return any(isinstance(link, UNREACHABLE) for link in _chain(error))


def unreachable_reason(error: BaseException) -> str:
    """The root cause in a few words, e.g. ``[Errno 111] Connection refused``."""
    root = list(_chain(error))[-1]
    return str(root) or type(root).__name__


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


@contextmanager
def fail_fast(timeout_s: int) -> Iterator[None]:
    """MLflow HTTP calls in this block give up at the first failure, after ``timeout_s`` at most, instead of
    MLflow's default of 7 retries with exponential back-off (minutes against a stopped server); the spool is
    the retry."""
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
    }
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class Progress:
    """How much of a spool has reached the server, and the ids the server gave it."""

    sent: int = 0
    run_id: str | None = None
    parent_run_id: str | None = None
    model_uri: str | None = None


class Spool:
    """One run's spool file; the process that writes it holds an exclusive lock on it, so a concurrent
    ``segpipe sync`` leaves it alone. Records appended from several threads stay whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._writing = threading.Lock()

    @property
    def models_dir(self) -> Path:
        return self.path.with_suffix(".models")

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def create(self, progress: Progress) -> None:
        """Start the file, locked, with ``progress`` as its first record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        fcntl.flock(self._file, fcntl.LOCK_EX)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the new file's name survives a crash too
        finally:
            os.close(directory)
        self.record_progress(progress)

    def lock(self) -> bool:
        """Open and lock an existing spool for replay; False if a running training holds it, or it is gone."""
        try:
            handle = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8")
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        if not self.path.exists() or os.stat(self.path).st_ino != os.fstat(handle.fileno()).st_ino:
            handle.close()  # its writer sent and removed it between our open and lock
            return False
        self._file = handle
        if self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            self._write("\n")  # a crash cut the last record short: keep it on its own (ignored) line
        return True

    def append(self, record: dict[str, object]) -> None:
        """Append one call record durably (flushed and fsynced before returning)."""
        self._write(json.dumps(record) + "\n")

    def _write(self, text: str) -> None:
        assert self._file is not None, "create() or lock() the spool first"
        with self._writing:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())

    def record_progress(self, progress: Progress) -> None:
        self.append({"progress": dataclasses.asdict(progress)})

    def read(self) -> tuple[list[dict[str, object]], Progress]:
        """The call records in order, and the latest progress."""
        calls: list[dict[str, object]] = []
        progress = Progress()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn end of a write cut short by a crash
            if "progress" in record:
                progress = Progress(**record["progress"])
            else:
                calls.append(record)
        return calls, progress

    def remove(self) -> None:
        """Delete the spool and its saved models (everything in it has reached the server)."""
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.models_dir, ignore_errors=True)
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
