"""Resumable training state: everything needed to continue a run exactly, saved atomically with a checksum.

A state file holds the model, optimizer and scheduler states, the loop position (epoch, batch), the
running epoch loss, best-so-far score and history, every RNG state and the tracking run id. Each file
has a ``.sha256`` sidecar; a file whose bytes do not match (cut short, disk error, edited) is skipped
with a warning and the previous state is used. States of other settings (a different config digest)
are never resumed.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import sys
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segpipe import io

_NAME = re.compile(r"^state-(\d{8})\.pt$")


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as plain data ``weights_only`` loading accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class SavedState:
    """A verified state file and its contents."""

    path: Path
    payload: dict[str, Any]

    @property
    def run_key(self) -> str | None:
        """The key of the tracking run the interrupted training logged to (continue it instead of starting
        another)."""
        return self.payload.get("run_key")


class StateStore:
    """Numbered state files in ``folder`` (the newest ``keep`` are kept), for one training configuration."""

    def __init__(self, folder: Path, config_digest: str, keep: int = 2) -> None:
        self.folder = Path(folder)
        self.config_digest = config_digest
        self.keep = keep

    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.iterdir() if _NAME.match(p.name)), reverse=True)

    def save(self, global_step: int, payload: dict[str, Any]) -> Path:
        """Write the state after ``global_step`` optimizer steps; the checksum sidecar is written last."""
        buffer = BytesIO()
        torch.save({**payload, "config_digest": self.config_digest}, buffer)
        data = buffer.getvalue()
        path = self.folder / f"state-{global_step:08d}.pt"
        io.write_bytes(path, data)
        io.write_text(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest() + "\n")
        for old in self._files()[self.keep:]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        return path

    def latest(self) -> SavedState | None:
        """The newest state that passes its checksum and belongs to this configuration (None: start afresh)."""
        for path in self._files():
            problem = self._check(path)
            if problem is None:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                if payload.get("config_digest") == self.config_digest:
                    return SavedState(path, payload)
                problem = "it was saved with different settings (params, data or code)"
            _warn(f"not resuming from {path}: {problem}; trying an older state")
        return None

    def _check(self, path: Path) -> str | None:
        sidecar = path.with_name(path.name + ".sha256")
        try:
            expected = sidecar.read_text().strip()
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as error:
            return f"it cannot be read or has no checksum ({error.strerror or error})"
        if actual != expected:
            return "its checksum does not match (a partial or corrupted write)"
        return None

    def clear(self) -> None:
        """Remove the folder with every state in it (a finished run leaves nothing to resume)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _warn(message: str) -> None:
    print(f"[segpipe] warning: {message}", file=sys.stderr, flush=True)
