"""What a tracking run is tagged with, worked out without importing MLflow (so a train stage that only spools
its calls never pays MLflow's start-up)."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

PIPELINE_TAG = "segpipe.pipeline"
"""Tag of a pipeline execution's parent run: the execution's key (see :func:`pipeline_key`)."""
PIPELINE_ENV = "SEGPIPE_PIPELINE_RUN"
RUN_KEY_TAG = "segpipe.run_key"
"""Tag naming a training run for good: its run id is only known once the run reaches the server."""
MODEL_URI_TAG = "segpipe.model_uri"
"""Tag holding the URI of the run's logged model, set once the model is stored."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""Experiment tag MLflow's UI reads to pick its view; without it an experiment opens in the GenAI view."""
MODEL_TRAINING_KIND = "custom_model_development"
"""``mlflow.experimentKind`` value of a model-training experiment (the UI's "Model training" view)."""


def project_root(cwd: Path | None = None) -> Path:
    """The working directory; for a stage of a queued DVC experiment, which runs in a temporary copy
    (``<repository>/.dvc/tmp/exps/<tmp>``, deleted afterwards), the repository it was queued from, so that its
    tracking store, artifacts and spools outlive the copy."""
    here = (cwd or Path.cwd()).absolute()
    parts = here.parts
    for index in range(len(parts) - 3, 0, -1):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return here


def experiment_name(dataset: str) -> str:
    return f"segpipe-{dataset}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def process_tags(commit: str) -> dict[str, str]:
    """The tags MLflow gives a run made by this process (user, source, code ``commit``), recorded where the
    run is made, not where it is sent."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    tags = {
        "mlflow.user": user,
        "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "<console>",
        "mlflow.source.type": "LOCAL",
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def _dvc_ancestor() -> str | None:
    """``<pid>-<start time>`` of the ``dvc repro`` / ``dvc exp`` process running this stage (Linux
    ``/proc``)."""
    pid = os.getppid()
    for _ in range(8):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        if any(Path(part.decode(errors="replace")).name == "dvc" for part in cmdline[:2]):
            return f"{pid}-{fields[19]}"  # field 22 of stat: start time since boot
        pid = int(fields[1])  # field 4: parent pid
        if pid <= 1:
            return None
    return None


def pipeline_key(config_digest: str) -> str:
    """Identifies one pipeline execution: ``$SEGPIPE_PIPELINE_RUN``, else the ``dvc`` process that runs the
    stages, else (a stage run by hand) the code commit + params + data digest."""
    explicit = os.environ.get(PIPELINE_ENV)
    if explicit:
        return explicit
    ancestor = _dvc_ancestor()
    if ancestor:
        return f"dvc-{ancestor}"
    return f"config-{git_commit()[:12]}-{config_digest[:12]}"
