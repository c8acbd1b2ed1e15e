"""The pretrain stage: denoising pretraining of a segmentation model's encoder.

The architecture is trained as an image-to-image model (its segmentation network with a 3-channel
reconstruction head, ``task: denoise``) to restore corrupted training images, by the train stage's driver
with the ``pretrain`` settings. Its encoder is then written to ``models/pretrain/<architecture>/``
``encoder.safetensors`` with ``encoder.json`` (the normalisation it was trained with, the sha256), which
``train.models.<architecture>.init: pretrain`` loads. An architecture not in ``pretrain.architectures``
gets ``encoder.json`` alone (``"pretrained": false``), so every train stage has this folder to depend on.

The images of ``pretrain.unlabelled_root`` are trained on too: they are appended to a copy of the prepared
training split under ``.segpipe/pretrain/prepared`` (:mod:`segpipe.data.unlabelled`), rebuilt when the
prepared data, the images or their fitting settings change. Without any, the prepared data is read as is."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from segpipe import io
from segpipe.config import ConfigError, Params, parse_params
from segpipe.paths import ProjectPaths
from segpipe.training.initialise import pretrained_encoder_path


@dataclass(frozen=True)
class PretrainPaths(ProjectPaths):
    """The project layout with the reconstruction run's files under ``models/pretrain/<architecture>``, and
    its data with the unlabelled images when ``unlabelled`` (their data key) is set."""

    unlabelled: str | None = None

    @property
    def pretraining_data(self) -> Path:
        """The prepared data with the unlabelled images appended to its train split."""
        return self.root / ".segpipe" / "pretrain" / "prepared"

    @property
    def prepared(self) -> Path:
        return self.pretraining_data if self.unlabelled is not None else super().prepared

    def model_dir(self, architecture: str, task: str = "denoise") -> Path:
        return self.models / "pretrain" / architecture

    def curves(self, architecture: str, task: str = "denoise") -> Path:
        return self.model_dir(architecture) / "curves.csv"

    def training_states(self, architecture: str, task: str = "denoise") -> Path:
        folder = self.root / ".segpipe" / "resume" / "pretrain" / architecture
        # a state's key holds the prepared data's hash, not the unlabelled images': one folder per set of them
        return folder if self.unlabelled is None else folder / f"unlabelled-{self.unlabelled[:16]}"


def pretraining_params(params: Params, architecture: str) -> Params:
    """``params`` with the ``pretrain`` settings as the denoise task's, for ``architecture`` alone, and
    tracking off (a pretraining is a step of the segmentation run it initialises, not a leaderboard run)."""
    raw = params.model_dump(mode="json", by_alias=True)
    settings = raw["pretrain"]
    raw["denoise"] = {key: settings[key] for key in ("corruption", "level", "patch_size", "loss", "epochs")}
    raw["denoise"]["architectures"] = [architecture]
    raw["tracking"]["enabled"] = False
    return parse_params(raw)


def run_pretrain(params: Params, architecture: str, paths: ProjectPaths, progress: bool = True) -> Path:
    """Pretrain ``architecture``'s encoder if ``pretrain.architectures`` lists it; returns its
    ``encoder.json``."""
    meta_file = pretrained_encoder_path(paths, architecture).with_suffix(".json")
    if architecture not in params.pretrain.architectures:
        io.write_json(meta_file, {"architecture": architecture, "pretrained": False})
        return meta_file
    if params.train.warmup_epochs >= params.pretrain.epochs:
        raise ConfigError(
            f"params.yaml: train.warmup_epochs ({params.train.warmup_epochs}) must be below pretrain.epochs "
            f"({params.pretrain.epochs}): pretraining warms up too"
        )
    pretrain_paths, unlabelled = _pretraining_data(params, paths)
    from segpipe.stages.train import run_train  # torch only where an encoder is trained

    result = run_train(
        pretraining_params(params, architecture), architecture, pretrain_paths, progress, task="denoise"
    )
    return _write_encoder(pretrain_paths.checkpoint(architecture), meta_file, result.monitor, unlabelled)


def _pretraining_data(params: Params, paths: ProjectPaths) -> tuple[PretrainPaths, int]:
    """The pretraining's layout and how many unlabelled images it trains on, their data written first
    when missing or out of date (every image decoded, so a bad one stops the stage before training)."""
    from segpipe.data import unlabelled  # image decoding only where an encoder is trained

    folder = params.pretrain.unlabelled_path()
    if not folder.is_dir():
        raise ConfigError(
            f"params.yaml: pretrain.unlabelled_root {params.pretrain.unlabelled_root!r} is not a folder "
            f"({folder.resolve()}): create it (it may hold no images) or set the key to a folder of images"
        )
    images = unlabelled.list_images(folder)
    if not images:
        return PretrainPaths(paths.root), 0
    key = unlabelled.data_key(paths.prepared, folder, images, params.prepare)
    pretrain_paths = PretrainPaths(paths.root, unlabelled=key)
    if not unlabelled.is_written(pretrain_paths.pretraining_data, key):
        unlabelled.write_pretraining_data(
            paths.prepared, images, params.prepare, pretrain_paths.pretraining_data, key
        )
    return pretrain_paths, len(images)


def _write_encoder(checkpoint: Path, meta_file: Path, monitor: str, unlabelled: int) -> Path:
    """The best reconstruction checkpoint's encoder as safetensors, and its JSON record (with the number of
    ``unlabelled`` images trained on)."""
    import safetensors.torch

    from segpipe.training.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    network = model.network
    state = {
        key: value.detach().cpu().contiguous() for key, value in network.encoder_module().state_dict().items()
    }
    data = safetensors.torch.save(state, metadata={"format": "pt"})
    io.write_bytes(meta_file.with_suffix(".safetensors"), data)
    record = {
        "architecture": meta.architecture,
        "pretrained": True,
        "options": meta.options,
        "normalisation": model.normalisation.record(),
        "epoch": meta.epoch,
        monitor: meta.score,
        "sha256": hashlib.sha256(data).hexdigest(),
        "unlabelled_images": unlabelled,
    }
    io.write_json(meta_file, record)
    return meta_file
