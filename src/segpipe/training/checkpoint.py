"""Checkpoints as plain tensors + metadata, written atomically and read back with ``weights_only=True``."""

from __future__ import annotations

import pickle
from io import BytesIO
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segpipe import io
from segpipe.models import build_model, build_reconstruction_model
from segpipe.tasks import TaskName


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything needed to rebuild the model without params.yaml."""

    architecture: str
    options: dict[str, Any]
    num_classes: int
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    epoch: int
    monitor: str
    """The validation metric that picked this epoch (``val_miou`` or ``val_psnr``)."""
    score: float
    task: TaskName = "segment"
    """``segment``: ``num_classes`` logits; ``denoise``: an image of ``num_classes`` = input channels."""
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, model: nn.Module, meta: CheckpointMeta) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = BytesIO()  # serialised first, so a full disk shows as an OSError of the write, not a torch error
    torch.save({"meta": asdict(meta), "state_dict": state}, buffer)
    io.write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from a checkpoint; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the train stage for this architecture first")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refuses code objects, classes, reducers
        raise ValueError(
            f"{path} holds Python objects other than tensors and plain data, so it was not loaded "
            f"({str(error).splitlines()[0][:200]}); use a checkpoint written by segpipe's train stage"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable checkpoint ({error}): re-run the train stage that wrote it") from None
    try:
        raw = payload["meta"]
        meta = CheckpointMeta(
            architecture=raw["architecture"],
            options=dict(raw["options"]),
            num_classes=int(raw["num_classes"]),
            class_names=tuple(raw["class_names"]),
            image_size=(int(raw["image_size"][0]), int(raw["image_size"][1])),
            epoch=int(raw["epoch"]),
            monitor=str(raw["monitor"]),
            score=float(raw["score"]),
            task=raw["task"],
            extra=dict(raw.get("extra", {})),
        )
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a segpipe checkpoint of this version (no {error}): re-run the train stage that wrote it"
        ) from None
    if meta.task == "denoise":
        model: nn.Module = build_reconstruction_model(meta.architecture, meta.num_classes, meta.options)
    else:
        model = build_model(meta.architecture, meta.num_classes, options=meta.options)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not fit the current {meta.architecture} code ({str(error).splitlines()[0]}): "
            f"re-run train for {meta.architecture}"
        ) from None
    return model.to(device).eval(), meta
