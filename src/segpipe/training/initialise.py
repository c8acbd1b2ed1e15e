"""How a segmentation model starts: its encoder's initial weights (random, a local safetensors file, smp's
download or the ``pretrain`` stage's encoder) and the input normalisation that goes with them.

Weights are read as safetensors only (a JSON header and raw bytes), so nothing here unpickles. Importing
this module loads no torch (the pretrain stage of an architecture it does not pretrain needs none)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segpipe import io
from segpipe.models import validate_model_options
from segpipe.paths import ProjectPaths

if TYPE_CHECKING:
    import torch
    from torch import nn

    from segpipe.models.base import SegmentationNetwork

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_FILE = "encoder.safetensors"


def pretrained_encoder_path(paths: ProjectPaths, architecture: str) -> Path:
    """``models/pretrain/<architecture>/encoder.safetensors``, with ``encoder.json`` beside it."""
    return paths.models / "pretrain" / architecture / ENCODER_FILE


def initialise_model(
    model: SegmentationNetwork,
    architecture: str,
    options: dict[str, Any],
    paths: ProjectPaths,
    dataset_normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Load the encoder weights ``options`` name and set the model's input normalisation: ImageNet's for
    smp's or a file's weights, the pretraining's for ``init: pretrain``, else ``dataset_normalisation``
    ((mean, std); None keeps the identity). Returns what was done, for the run's records."""
    config = validate_model_options(architecture, options)
    weights_file = getattr(config, "encoder_weights_file", None)
    download = getattr(config, "encoder_weights", None)
    normalisation = dataset_normalisation
    if config.init == "pretrain":
        source, normalisation = "pretrain", load_pretrained_encoder(model, paths, architecture)
    elif weights_file is not None:
        load_encoder_weights(model, paths.root / weights_file, config.encoder_weights_sha256)
        source, normalisation = weights_file, (IMAGENET_MEAN, IMAGENET_STD)
    elif download is not None:
        _download_encoder(model, config.encoder, download)
        source, normalisation = f"smp:{download}", (IMAGENET_MEAN, IMAGENET_STD)
    else:
        source = "scratch"
    if normalisation is not None:
        model.set_normalisation(*normalisation)
    return {"init": source, "normalisation": model.normalisation.record()}


def load_encoder_weights(model: SegmentationNetwork, path: Path, sha256: str | None = None) -> None:
    """Load the safetensors file ``path`` into ``model``'s encoder, strictly: ValueError naming the missing,
    unexpected or differently shaped tensors; a file that is not safetensors (e.g. a pickled ``.pt``) or
    whose sha256 is not ``sha256`` is refused."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path}: encoder weights must be a .safetensors file (pickled .pt/.pth/.bin files are never "
            f"loaded); convert it with safetensors.torch.save_file(state_dict, 'encoder.safetensors')"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights file not found; check encoder_weights_file")
    import safetensors.torch

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ValueError(
            f"{path} has sha256 {digest}, not the encoder_weights_sha256 {sha256} in params; "
            f"set encoder_weights_sha256: {digest} if the new file is intended"
        )
    try:
        state = safetensors.torch.load(data)
    except Exception as error:
        raise ValueError(
            f"{path} is not a safetensors file ({type(error).__name__}: {error}); save the encoder's "
            f"state dict with safetensors.torch.save_file"
        ) from None
    load_encoder_state(model.encoder_module(), state, str(path))


def load_encoder_state(encoder: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``encoder.load_state_dict(state, strict=True)``, with a one-line ValueError naming what differs."""
    expected = set(encoder.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit the encoder: missing {_some(missing)}, unexpected {_some(unexpected)}; "
            f"it holds another encoder, or the encoder was built with other options"
        )
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as error:  # a tensor of another shape
        details = " ".join(line.strip() for line in str(error).splitlines()[1:])
        raise ValueError(f"{source} does not fit the encoder: {details[:300]}") from None


def load_pretrained_encoder(
    model: SegmentationNetwork, paths: ProjectPaths, architecture: str
) -> tuple[list[float], list[float]]:
    """Load the ``pretrain`` stage's encoder of ``architecture``; returns the (mean, std) it was trained
    with."""
    path = pretrained_encoder_path(paths, architecture)
    meta_file = path.with_suffix(".json")
    if not path.is_file() or not meta_file.is_file():
        raise FileNotFoundError(
            f"{path} is missing: train.models.{architecture}.init is pretrain, so list {architecture} in "
            f"pretrain.architectures and run `dvc repro pretrain@{architecture}`"
        )
    meta = io.read_json(meta_file)
    load_encoder_weights(model, path, meta["sha256"])
    normalisation = meta["normalisation"]
    return normalisation["mean"], normalisation["std"]


def _download_encoder(model: SegmentationNetwork, encoder: str, weights: str) -> None:
    """Copy smp's pretrained ``weights`` of ``encoder`` (downloaded by smp) into the model's encoder."""
    import segmentation_models_pytorch as smp  # only where an smp encoder is downloaded

    channels = model.normalisation.mean.numel()
    source = smp.encoders.get_encoder(encoder, in_channels=channels, depth=5, weights=weights)
    load_encoder_state(model.encoder_module(), source.state_dict(), f"smp {encoder} {weights}")


def _some(keys: list[str], shown: int = 5) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
