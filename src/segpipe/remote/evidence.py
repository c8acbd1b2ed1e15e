"""How plausible a remote run's claimed training device is, from the run's own timing.

The device in run.json is provenance written by whoever ran the training, not proof. A run that claims CUDA
but trained no faster than this machine's CPU trains the same architecture is marked implausible, and
``promote --require-gpu`` refuses it.
"""

from __future__ import annotations

import getpass
import math
import socket
import time
from typing import Any

import torch

from segpipe.training.checkpoint import CheckpointMeta, build_from_meta

DEFAULT_BATCH = 8
"""The batch measured here for a run record that does not say its batch size."""
EVIDENCE_TAG = "device_evidence"
IMPLAUSIBLE = "implausible"


def run_images_per_second(record: dict[str, Any], train_images: int, epochs: Any) -> float | None:
    """Training images per second the run's own record implies (None where it lacks the timing)."""
    seconds = record.get("seconds")
    train = seconds.get("train") if isinstance(seconds, dict) else None
    if type(train) not in (int, float) or not math.isfinite(train) or train <= 0:
        return None
    if type(epochs) is not int or epochs <= 0:
        return None
    return train_images * epochs / train


def cpu_images_per_second(meta: CheckpointMeta, batch_size: int, steps: int = 2) -> float:
    """Training images per second of ``meta``'s architecture on this machine's CPU: forward, backward and an
    optimiser step at the run's image size and batch, after one warm-up step. Global RNG state is kept."""
    with torch.random.fork_rng(devices=[]):
        model = build_from_meta(meta).train()
        optimiser = torch.optim.SGD(model.parameters(), lr=0.0)
        images = torch.rand(batch_size, 3, *meta.image_size)
        started = 0.0
        for step in range(steps + 1):
            if step == 1:
                started = time.perf_counter()
            optimiser.zero_grad()
            model(images).float().square().mean().backward()  # the loss's kind does not change the cost
            optimiser.step()
    return batch_size * steps / (time.perf_counter() - started)


def importer_tags() -> dict[str, str]:
    """Who imported the run and where: the login name (MLflow's user) and this host's name."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name, e.g. a container user without a passwd entry
        user = "unknown"
    return {"imported_by": user, "imported_on_host": socket.gethostname()}


def device_evidence(device: str, claimed: float | None, local_cpu: float | None) -> str:
    """``implausible: ...`` for a CUDA claim not faster than this CPU, else a short statement of the check."""
    if not device.startswith("cuda"):
        return "not checked: the run does not claim CUDA"
    if claimed is None or local_cpu is None or claimed <= local_cpu:
        shown = "unknown" if claimed is None else f"{claimed:.1f}"
        return (
            f"{IMPLAUSIBLE}: the run claims {device} but trained {shown} images/s, not faster than "
            f"{local_cpu or 0:.1f} images/s on this machine's CPU"
        )
    return f"consistent: {claimed:.1f} images/s against {local_cpu:.1f} on this machine's CPU"
