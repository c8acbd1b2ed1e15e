"""``segpipe server``: a team MLflow tracking server that keeps runs and the registry in PostgreSQL (or
another SQLAlchemy database) and serves the artifacts itself, so clients need only
``MLFLOW_TRACKING_URI=http://...``.

The database URI reaches ``mlflow server`` through its ``MLFLOW_BACKEND_STORE_URI`` variable, never its
command line (which every user of the machine can read), and everything printed shows it with the password
masked."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from segpipe.tracking.redact import redact_uri
from segpipe.tracking.ui import experiments_url

WILDCARD_HOSTS = ("0.0.0.0", "::")
#: pip packages of the PostgreSQL drivers; ``postgresql://`` means psycopg (3) since SQLAlchemy 2.1.
POSTGRESQL_DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}


@dataclass(frozen=True)
class ServerSettings:
    """What ``segpipe server`` was asked for."""

    backend_store_uri: str
    artifacts_destination: str
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 4
    allowed_hosts: tuple[str, ...] = ()
    auth: bool = False
    """MLflow's basic-auth app: every request needs a user and password (see :func:`check_auth`)."""


@dataclass(frozen=True)
class ServerCommand:
    """The ``mlflow server`` process to run: its arguments, the variables to add to its environment, the URL
    clients use, and warnings for the operator."""

    argv: list[str]
    env: dict[str, str]
    url: str
    warnings: list[str]
    artifacts_folder: Path | None
    """The local artifacts folder to create before starting (None for s3:// and other stores)."""

    def display(self) -> str:
        """The command as one shell line, with every URI's credentials masked."""
        assignments = [f"{key}={shlex.quote(redact_uri(value))}" for key, value in self.env.items()]
        return " ".join([*assignments, shlex.join(redact_uri(arg) for arg in self.argv)])


def check_backend_store(uri: str) -> None:
    """Fail with a fix when ``uri`` is not a database MLflow supports or its Python driver is not
    installed."""
    from mlflow.store.db.db_types import DATABASE_ENGINES
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"
    try:
        url = make_url(uri)
    except ArgumentError:
        raise ValueError(
            f"--backend-store-uri {redact_uri(uri)!r} is not a database URI; use e.g. {example}"
        ) from None
    if url.get_backend_name() not in DATABASE_ENGINES:
        raise ValueError(
            f"--backend-store-uri must be a database MLflow supports ({', '.join(DATABASE_ENGINES)}), "
            f"not {url.get_backend_name()!r}; use e.g. {example}"
        )
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise ValueError(f"unknown database driver {url.drivername!r} in --backend-store-uri") from None
    except ImportError:
        dialect = url.get_dialect()
        package = POSTGRESQL_DRIVERS.get(dialect.driver, f"the package that provides {dialect.driver}")
        fix = f"pip install '{package}'" + (
            " (or: pip install -e '.[server]')" if dialect.driver == "psycopg" else ""
        )
        raise ValueError(
            f"the {url.get_backend_name()} driver {dialect.driver!r} is not installed: {fix}"
        ) from None


def check_auth() -> None:
    """Fail with the fix when MLflow's basic-auth app cannot start: it needs Flask-WTF and a secret key for
    its CSRF tokens (and, on its first start, ``MLFLOW_AUTH_ADMIN_PASSWORD`` for the admin user)."""
    if importlib.util.find_spec("flask_wtf") is None:
        raise ValueError("--auth needs Flask-WTF: pip install 'mlflow[auth]' (or: pip install Flask-WTF)")
    if not os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        raise ValueError(
            "--auth needs MLFLOW_FLASK_SERVER_SECRET_KEY set to a long random secret (the same on every "
            "server of the team), e.g. export MLFLOW_FLASK_SERVER_SECRET_KEY=$(openssl rand -hex 32)"
        )


def resolve_artifacts(destination: str) -> str:
    """A local folder as an absolute path (it must not be a file); ``s3://`` and other store URIs as given."""
    parts = urlsplit(destination)
    if parts.scheme in ("", "file"):
        folder = Path(parts.path if parts.scheme else destination).expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--artifacts-destination {folder} is a file, not a folder")
        return str(folder)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(
                f"--artifacts-destination {redact_uri(destination)!r} names no bucket: use s3://BUCKET/PREFIX"
            )
        if importlib.util.find_spec("boto3") is None:
            raise ValueError("an s3:// artifacts destination needs boto3: pip install boto3")
    return destination


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_patterns(name: str) -> list[str]:
    """``--allowed-hosts`` patterns matching a Host header of ``name`` with or without a port."""
    if ":" in name:  # an IPv6 address: "[addr]:port" in Host headers; "[[]" is fnmatch's literal "["
        return [f"[{name}]", f"[[]{name}]:*"]
    return [name, f"{name}:*"]


def allowed_host_headers(settings: ServerSettings) -> list[str]:
    """Host headers the server accepts, or [] for MLflow's default (localhost and private IPs): beyond
    loopback, that default plus this machine's names and the address it listens on, so the URL it prints
    works; plus ``settings.allowed_hosts``. Other names stay refused (DNS-rebinding protection)."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = [] if is_loopback(settings.host) else [socket.gethostname(), socket.getfqdn()]
    if names and settings.host not in WILDCARD_HOSTS:
        names.append(settings.host)
    if not names and not settings.allowed_hosts:
        return []
    patterns = [pattern for name in names for pattern in _host_patterns(name)]
    return list(dict.fromkeys([*get_default_allowed_hosts(), *patterns, *settings.allowed_hosts]))


def build_command(settings: ServerSettings) -> ServerCommand:
    """Validate ``settings`` and build the ``mlflow server`` invocation (nothing is started or created)."""
    if not settings.backend_store_uri:
        raise ValueError(
            "no backend store: pass --backend-store-uri postgresql://USER:PASSWORD@HOST:5432/DATABASE "
            "or set MLFLOW_BACKEND_STORE_URI"
        )
    if not settings.artifacts_destination:
        raise ValueError(
            "no artifact store: pass --artifacts-destination (a folder or s3://BUCKET/PREFIX) "
            "or set MLFLOW_ARTIFACTS_DESTINATION"
        )
    if not 1 <= settings.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, not {settings.port}")
    if settings.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {settings.workers}")
    check_backend_store(settings.backend_store_uri)
    destination = resolve_artifacts(settings.artifacts_destination)
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
        "--serve-artifacts",
        "--artifacts-destination",
        destination,
    ]
    allowed = allowed_host_headers(settings)
    if allowed:
        argv += ["--allowed-hosts", ",".join(allowed)]
    if settings.auth:
        check_auth()
        argv += ["--app-name", "basic-auth"]
    warnings = (
        []
        if is_loopback(settings.host) or settings.auth
        else [
            f"listening on {settings.host}: this MLflow server has no authentication, so anyone who can "
            f"reach port {settings.port} can read, change and delete runs, and register model versions "
            "that promote, predict and serving jobs then load; keep it on a trusted network or behind an "
            "authenticating proxy, or pass --auth (MLflow's basic-auth app)"
        ]
    )
    client_host = socket.gethostname() if settings.host in WILDCARD_HOSTS else settings.host
    if ":" in client_host:
        client_host = f"[{client_host}]"  # an IPv6 address in a URL
    # Job execution (GenAI jobs) is off unless the operator's environment turns it on: fewer processes,
    # ~5 s start.
    env = {
        "MLFLOW_BACKEND_STORE_URI": settings.backend_store_uri,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }
    folder = None if urlsplit(destination).scheme else Path(destination)
    return ServerCommand(argv, env, f"http://{client_host}:{settings.port}", warnings, folder)


def serve(settings: ServerSettings) -> NoReturn:
    """Print what will run, create a local artifacts folder, then become the ``mlflow server`` process."""
    command = build_command(settings)
    for warning in command.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if command.artifacts_folder is not None:
        try:
            command.artifacts_folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"cannot create the artifacts folder {command.artifacts_folder}: {error.strerror}"
            ) from None
    print(f"$ {command.display()}")
    print(
        f"MLflow server on {command.url}; point the pipeline at it with: export "
        f"MLFLOW_TRACKING_URI={command.url}",
    )
    print(f"MLflow UI (model training view): {experiments_url(command.url)}", flush=True)
    sys.stderr.flush()
    os.execve(sys.executable, command.argv, {**os.environ, **command.env})
