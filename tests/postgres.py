"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temporary folder, a server on 127.0.0.1 and a
free port, password authentication over TCP. PostgreSQL refuses to run as root, so under root the cluster
belongs to the ``postgres`` user (Debian's package creates it) or ``nobody``."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

USER = "segpipe"
PASSWORD = "s3cret-Pg-pass"  # tests check that it is never printed


def server_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: from ``PATH``, else Debian's newest
    ``/usr/lib/postgresql``."""
    found = [Path(shutil.which(name)).resolve().parent for name in ("pg_ctl", "initdb") if shutil.which(name)]
    debian = sorted(
        glob.glob("/usr/lib/postgresql/[0-9]*/bin"), key=lambda p: float(Path(p).parent.name), reverse=True
    )
    for folder in [*found, *map(Path, debian)]:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _owner() -> pwd.struct_passwd:
    """Who runs the cluster: this user, or an unprivileged one when this is root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    raise RuntimeError(
        "running as root and neither a 'postgres' nor a 'nobody' user exists to own PostgreSQL"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresCluster:
    """``start()`` a fresh cluster, ``create_database(name)`` for a URI, ``stop()`` it and delete its
    files."""

    def __init__(self) -> None:
        binaries = server_binaries()
        if binaries is None:
            pytest.skip(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql "
                "(.ci/run does)"
            )
        self.bin = binaries
        self.owner = _owner()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="segpipe-pg-"))  # not under pytest's root-only 0700 folders
        self.data = self.root / "data"
        self.log = self.root / "server.log"

    def _run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """A PostgreSQL program as the cluster's owner; its output in the error when it fails."""
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            user=self.owner.pw_uid,
            group=self.owner.pw_gid,
            extra_groups=[],
            cwd=self.root,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}{log}"
            )
        return result

    def _env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            "LC_ALL": "C",
            "HOME": str(self.root),
            "PGPASSWORD": PASSWORD,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": USER,
        }

    def start(self) -> None:
        os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        os.chown(password_file, self.owner.pw_uid, self.owner.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            USER,
            "--pwfile",
            str(password_file),
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )  # a test cluster: speed only
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log),
            "--options",
            options,
            "--wait",
            "--timeout",
            "60",
            "start",
        )

    def create_database(self, name: str) -> str:
        """A new database; its URI with user and password (``postgresql://USER:PASSWORD@127.0.0.1:PORT/name``)."""
        self._run("createdb", name)
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server (fast shutdown, else SIGKILL to the postmaster) and delete the cluster's files."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    "pg_ctl",
                    "--pgdata",
                    str(self.data),
                    "--mode",
                    "fast",
                    "--wait",
                    "--timeout",
                    "30",
                    "stop",
                )
        except (RuntimeError, subprocess.TimeoutExpired):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
