"""Resumable training state: everything needed to continue a run exactly, saved atomically with a checksum.

A state file holds the model, optimizer and scheduler states, the loop position (epoch, batch), the
running epoch loss, best-so-far score and history, every RNG state and the tracking run id. It is a
safetensors file: the tensors, and the structure around them as JSON in its header, so reading one runs no
code. Each file has a ``.sha256`` sidecar; a file whose bytes do not match (cut short, disk error, edited) is
skipped with a warning and the previous state is used. States of other settings (a different config digest)
are never resumed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from segpipe import io

_NAME = re.compile(r"^state-(\d{8})\.safetensors$")
_STRUCTURE = "segpipe.training_state"
"""The header metadata key of the payload's structure (JSON, tensors replaced by their names)."""


def encode_state(payload: dict[str, Any]) -> bytes:
    """``payload`` (dicts with str or int keys, lists, tuples, tensors, numbers, strings, None) as bytes."""
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_flatten(payload, tensors))
    return safetensors.torch.save(tensors, metadata={_STRUCTURE: structure})


def decode_state(data: bytes) -> dict[str, Any]:
    """The payload :func:`encode_state` wrote (tensors on the CPU); ValueError for anything else."""
    try:
        header_size = int.from_bytes(data[:8], "little")
        structure = json.loads(json.loads(data[8 : 8 + header_size])["__metadata__"][_STRUCTURE])
        return _unflatten(structure, safetensors.torch.load(data))
    except (safetensors.SafetensorError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a segpipe training state ({type(error).__name__}: {error})") from None


def read_state(path: Path) -> dict[str, Any]:
    """The payload of the state file ``path``, unchecked (:meth:`StateStore.latest` checks the checksum)."""
    return decode_state(Path(path).read_bytes())


def _flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for ``value``: each container tagged with its kind, each tensor moved into ``tensors``."""
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous().clone()  # safetensors refuses shared storage
        return {"tensor": name}
    if isinstance(value, dict):
        if not all(isinstance(key, str | int) for key in value):
            raise TypeError(f"a training state's dict keys must be str or int, not {list(value)[:5]}")
        return {"dict": [[key, _flatten(item, tensors)] for key, item in value.items()]}
    if isinstance(value, list | tuple):
        return {type(value).__name__: [_flatten(item, tensors) for item in value]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a training state cannot hold {type(value).__name__} values")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(value, dict):
        return value
    [(kind, content)] = value.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {key: _unflatten(item, tensors) for key, item in content}
    items = [_unflatten(item, tensors) for item in content]
    return tuple(items) if kind == "tuple" else items


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as numbers, strings and tensors."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
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
        data = encode_state({**payload, "config_digest": self.config_digest})
        path = self.folder / f"state-{global_step:08d}.safetensors"
        io.write_bytes(path, data)
        io.write_text(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest() + "\n")
        for old in self._files()[self.keep :]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        return path

    def latest(self) -> SavedState | None:
        """The newest state that passes its checksum and belongs to this configuration (None: start
        afresh)."""
        for path in self._files():
            problem, payload = self._read(path)
            if payload is not None:
                if payload.get("config_digest") == self.config_digest:
                    return SavedState(path, payload)
                problem = "it was saved with different settings (params, data or code)"
            _warn(f"not resuming from {path}: {problem}; trying an older state")
        return None

    def _read(self, path: Path) -> tuple[str, dict[str, Any] | None]:
        """The payload of ``path`` if its bytes match their checksum, else why not."""
        sidecar = path.with_name(path.name + ".sha256")
        try:
            expected = sidecar.read_text().strip()
            data = path.read_bytes()
        except OSError as error:
            return f"it cannot be read or has no checksum ({error.strerror or error})", None
        if hashlib.sha256(data).hexdigest() != expected:
            return "its checksum does not match (a partial or corrupted write)", None
        try:
            return "", decode_state(data)
        except ValueError as error:
            return str(error), None

    def clear(self) -> None:
        """Remove the folder with every state in it (a finished run leaves nothing to resume)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _warn(message: str) -> None:
    print(f"[segpipe] warning: {message}", file=sys.stderr, flush=True)
