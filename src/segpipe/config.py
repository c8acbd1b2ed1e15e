"""Typed, validated view of ``params.yaml`` (one section per pipeline stage).

Every stage loads the whole file through :func:`load_params`, so a wrong key or
value anywhere is reported, naming the key, before any stage does work.
"""

from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segpipe.data.decode import MAX_PIXELS, MAX_SIDE
from segpipe.models.zoo import available_architectures, validate_model_options


class ConfigError(ValueError):
    """``params.yaml`` is missing, unreadable or does not match the schema."""


class _Section(BaseModel):
    # allow_inf_nan: a float key of any section refuses .inf, -.inf and .nan (YAML's non-finite floats)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_architecture_names(names: list[str]) -> list[str]:
    known = available_architectures()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; choose from {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"architectures listed twice: {names}")
    return names


def _check_size(key: str, value: tuple[int, int] | None) -> tuple[int, int] | None:
    """An optional [height, width] of at least 16 px; the error names ``key``."""
    if value is not None and min(value) < 16:
        raise ValueError(f"{key} {list(value)} is too small: use [height, width] of at least 16 px")
    return value


class SplitSizes(_Section):
    """Number of generated samples per split (synthetic dataset)."""

    train: int = Field(512, ge=1)
    val: int = Field(64, ge=1)
    test: int = Field(128, ge=1)


class SplitRatios(_Section):
    """Fractions carved from the labelled data for splits a dataset does not provide."""

    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _leave_training_data(self) -> SplitRatios:
        if self.val + self.test >= 1:
            raise ValueError(
                f"val + test = {self.val + self.test:g} leaves nothing to train on; keep it below 1"
            )
        return self


DatasetName = Literal["synthetic", "folder", "camvid", "oxford_pets", "voc", "cityscapes", "ade20k"]


class PrepareParams(_Section):
    """``prepare``: which dataset to build and how."""

    dataset: DatasetName = "synthetic"
    root: str = "data/raw"
    """Folder holding the dataset (unused by ``synthetic``); relative to the project, ``~`` and ``$VARS``
    expanded."""
    download: bool = False
    seed: int = 2026
    image_size: tuple[int, int] | None = (64, 64)
    """[height, width] every sample is fitted to; None keeps each image's native size (masks untouched)."""
    max_side: int | None = Field(None, ge=16)
    """With ``image_size: null``: images whose longest side is above this are downscaled to it (masks by
    nearest neighbour); None keeps native sizes."""
    resize: Literal["stretch", "pad", "crop"] = "stretch"
    splits: SplitSizes = SplitSizes()
    split_ratios: SplitRatios = SplitRatios()
    max_per_split: int | None = Field(None, ge=1)
    classes: list[str] | None = None
    palette: list[tuple[int, int, int]] | None = None
    mask_format: Literal["auto", "ids", "binary", "rgb"] = "auto"
    trimap: Literal["three_class", "binary"] = "three_class"
    ignore_index: int = Field(255, ge=0, le=255)
    workers: int = Field(2, ge=1)
    max_image_side: int = Field(MAX_SIDE, ge=16)
    """Longest image or mask side (px) prepare decodes; a larger file is refused from its header."""
    max_image_pixels: int = Field(MAX_PIXELS, ge=256)
    """Largest image or mask area (pixels) prepare decodes, checked from the header (default 64 megapixels,
    as predict); Pillow's own decompression-bomb limit (about 179 megapixels) still applies above it."""

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        return _check_size("image_size", value)

    @field_validator("palette")
    @classmethod
    def _colours(cls, palette: list[tuple[int, int, int]] | None) -> list[tuple[int, int, int]] | None:
        if palette is not None and any(not 0 <= c <= 255 for colour in palette for c in colour):
            raise ValueError("palette colours are [r, g, b] with values 0..255")
        if palette is not None and len(set(palette)) != len(palette):
            raise ValueError("palette lists a colour twice")
        return palette

    @model_validator(mode="after")
    def _consistent(self) -> PrepareParams:
        if self.palette is not None and self.classes is not None and len(self.palette) != len(self.classes):
            raise ValueError(
                f"palette has {len(self.palette)} colours but classes has {len(self.classes)} names"
            )
        if self.max_side is not None and self.image_size is not None:
            raise ValueError("max_side applies to native sizes only: set image_size: null to use it")
        if self.image_size is None and self.dataset == "synthetic":
            raise ValueError("the synthetic dataset is rendered at one size: set image_size: [height, width]")
        if self.mask_format == "rgb" and self.palette is None:
            raise ValueError("mask_format rgb needs prepare.palette: one [r, g, b] per class, in class order")
        return self

    def root_path(self) -> Path:
        """``root`` with ``~`` and environment variables expanded."""
        return Path(os.path.expandvars(os.path.expanduser(self.root)))


class DataParams(_Section):
    """``data``: how training and evaluation read the prepared cache."""

    in_memory: Literal["auto", "true", "false"] = "auto"
    """``auto``: a split is copied into memory (and onto the device) when it fits ``memory_budget_mb``,
    else streamed from the memory-mapped cache batch by batch; ``true`` / ``false`` force one path."""
    memory_budget_mb: int = Field(4096, ge=1)
    """Largest decoded split (images + masks, MB) the in-memory path takes under ``in_memory: auto``."""
    workers: int = Field(2, ge=0)
    """Worker processes that read and assemble batches on the streaming path (0: in the training process)."""


class ValidateParams(_Section):
    """``validate``: the data-quality gate."""

    max_listed_failures: int = Field(20, ge=1)


class ColorJitterParams(_Section):
    """Random brightness / contrast / saturation / hue changes of the image (the mask is untouched)."""

    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.2, ge=0, le=1)
    saturation: float = Field(0.2, ge=0, le=1)
    hue: float = Field(0.02, ge=0, le=0.5)


class AugmentParams(_Section):
    """Training-time augmentation applied identically to image and mask (albumentations).

    Flips alone run on the training device; ``scale`` or ``color_jitter`` switch to albumentations
    on the CPU, per sample, with flips included.
    """

    hflip: bool = True
    vflip: bool = True
    scale: tuple[float, float] | None = None
    """Random zoom range, e.g. [0.75, 1.25]: zooming in crops, zooming out pads (mask with ignore_index)."""
    color_jitter: ColorJitterParams | None = None
    on_device: bool = False
    """Run ``scale`` and ``color_jitter`` as batched tensor operations on the training device (GPU) instead
    of albumentations per sample on the CPU; flips always run on the device."""

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"scale is a [min, max] zoom range with 0 < min <= max, got {list(value)}")
        return value

    @property
    def needs_library(self) -> bool:
        """True when albumentations (CPU, per sample) must run instead of the on-device flips."""
        return not self.on_device and self.needs_transforms

    @property
    def needs_transforms(self) -> bool:
        """True when a zoom or colour jitter is asked for (beyond flips)."""
        return self.scale is not None or self.color_jitter is not None


LOSS_TERMS = ("ce", "dice", "focal", "lovasz", "tversky", "jaccard")
"""Segmentation loss terms ``train.loss.name`` combines with ``+`` (see :mod:`segpipe.tasks.losses`)."""
ClassWeighting = Literal["none", "median_frequency", "inverse_sqrt_frequency"]


class LossParams(_Section):
    """``train.loss``: the segmentation loss, a weighted sum of terms, and per-class weights."""

    name: str = "ce+dice"
    """One term or a sum such as ``ce+dice``; terms: ce, dice, focal, lovasz, tversky, jaccard."""
    weights: list[float] | None = None
    """One weight per term of ``name`` (None: 1 each)."""
    class_weights: ClassWeighting | list[float] = "median_frequency"
    """``median_frequency`` or ``inverse_sqrt_frequency`` (from the training split's pixel counts), or one
    weight per class; used by ce, focal, dice, tversky and jaccard (lovasz takes none)."""

    @field_validator("name")
    @classmethod
    def _known_terms(cls, name: str) -> str:
        unknown = [term for term in name.split("+") if term not in LOSS_TERMS]
        if unknown:
            raise ValueError(
                f"unknown loss term(s) {unknown}; combine {list(LOSS_TERMS)} with '+', e.g. ce+dice"
            )
        return name

    @field_validator("class_weights")
    @classmethod
    def _non_negative(cls, value: ClassWeighting | list[float]) -> ClassWeighting | list[float]:
        if isinstance(value, list) and (not value or min(value) < 0 or max(value) == 0):
            raise ValueError("class_weights lists one weight >= 0 per class, not all zero")
        return value

    @model_validator(mode="after")
    def _one_weight_per_term(self) -> LossParams:
        if self.weights is not None and len(self.weights) != len(self.terms):
            raise ValueError(
                f"weights has {len(self.weights)} value(s) but name {self.name!r} has {len(self.terms)} "
                f"term(s); give one weight per term"
            )
        if self.weights is not None and min(self.weights) <= 0:
            raise ValueError(f"weights {self.weights} must all be above 0")
        return self

    @property
    def terms(self) -> list[str]:
        return self.name.split("+")

    @property
    def term_weights(self) -> list[float]:
        return list(self.weights) if self.weights is not None else [1.0] * len(self.terms)


class TrainParams(_Section):
    """``train``: shared training settings plus per-architecture model options."""

    architectures: list[str] = Field(default_factory=available_architectures, min_length=1)
    """Names from the architecture table (``segpipe.models.zoo``), each trained by its own stage."""
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)
    schedule: Literal["cosine", "poly"] = "cosine"
    """Learning-rate decay to 0 over the training: half a cosine, or polynomial of power 0.9."""
    warmup_epochs: int = Field(0, ge=0)
    """Epochs of linear warm-up to ``lr`` before the decay starts."""
    weight_decay: float = Field(1e-4, ge=0)
    loss: LossParams = LossParams()
    crop: tuple[int, int] | None = None
    """[height, width] random crop per training sample (padded with ignore_index where the image is smaller);
    None trains on whole images."""
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    augment: AugmentParams = AugmentParams()
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    resume: Literal["auto", "never"] = "auto"
    """``auto``: an interrupted run of the same settings continues from its latest valid training state."""
    checkpoint_every_steps: int = Field(0, ge=0)
    """Also save the training state every N optimizer steps (0: only at the end of each epoch)."""
    deterministic: bool = False
    """Deterministic kernels (``torch.use_deterministic_algorithms``); no ``cudnn.benchmark``."""
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    """``auto``: bf16 autocast (fp32 weights) on CUDA and on a CPU with native bf16 (AMX-BF16, AVX512-BF16,
    Arm BF16; override with ``SEGPIPE_CPU_BF16=1|0``), fp32 elsewhere. An explicit value is never
    overridden."""
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    """``auto``: channels_last on CUDA and for bf16 on the CPU; contiguous (NCHW) for fp32 on the CPU."""
    compile: bool = False
    """``torch.compile`` the model (worth it on a GPU for long runs; compile time dominates short CPU
    runs)."""
    nproc: int = Field(1, ge=1)
    """Processes per node: above 1 the stage trains data-parallel under ``torchrun`` (``batch_size`` per
    process)."""
    sync_batchnorm: bool = False
    """Under ``torchrun``: BatchNorm statistics over the global batch (``SyncBatchNorm``; CUDA only)."""

    @field_validator("architectures")
    @classmethod
    def _known_architectures(cls, names: list[str]) -> list[str]:
        return _check_architecture_names(names)

    @field_validator("models")
    @classmethod
    def _known_model_names(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        _check_architecture_names(list(models))
        return models

    @field_validator("crop")
    @classmethod
    def _crop_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        return _check_size("crop", value)

    @model_validator(mode="after")
    def _valid_model_options(self) -> TrainParams:
        for name, options in self.models.items():
            validate_model_options(name, options)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self

    def model_options(self, architecture: str) -> dict[str, Any]:
        """Options for one architecture (empty when params give none)."""
        return dict(self.models.get(architecture) or {})


class DenoiseParams(_Section):
    """``denoise``: image reconstruction (``task: denoise``), clean image from a corrupted one.

    Models take their options from ``train.models.<architecture>`` and share ``train``'s batch size,
    learning rate, weight decay, seed, device and augmentation; only the epochs are set here.
    """

    architectures: list[str] = Field(default_factory=lambda: ["autoencoder"])
    corruption: Literal["gaussian", "salt_pepper", "masked_patches"] = "gaussian"
    level: float = Field(0.2, ge=0, le=1)
    """Noise std (gaussian), fraction of pixels hit (salt_pepper) or of patches masked (masked_patches)."""
    patch_size: int = Field(8, ge=1)
    loss: Literal["l1", "l2", "ssim", "l1+ssim"] = "l1"
    """``ssim``: 1 - SSIM; ``l1+ssim``: their sum."""
    epochs: int = Field(5, ge=1)

    @field_validator("architectures")
    @classmethod
    def _known_architectures(cls, names: list[str]) -> list[str]:
        return _check_architecture_names(names)


class PretrainParams(_Section):
    """``pretrain``: self-supervised denoising pretraining of segmentation encoders (stage ``pretrain@``).

    Each listed architecture is trained to reconstruct clean training images (and the images of
    ``unlabelled_root``) from corrupted ones; ``train.models.<architecture>.init: pretrain`` starts its
    segmentation training from the pretrained encoder. Batch size, lr, seed and device come from ``train``.
    """

    architectures: list[str] = Field(default_factory=list)
    epochs: int = Field(5, ge=1)
    corruption: Literal["gaussian", "salt_pepper", "masked_patches"] = "masked_patches"
    level: float = Field(0.5, ge=0, le=1)
    patch_size: int = Field(8, ge=1)
    loss: Literal["l1", "l2", "ssim", "l1+ssim"] = "l1"
    unlabelled_root: str = "data/unlabelled"
    """Folder of extra images (PNG, JPEG, TIFF, BMP; any depth) the pretraining also trains on, fitted as
    prepare fits training images; relative to the project, ``~`` and ``$VARS`` expanded. A folder without
    images: the training split alone."""

    @field_validator("architectures")
    @classmethod
    def _known_architectures(cls, names: list[str]) -> list[str]:
        return _check_architecture_names(names)

    def unlabelled_path(self) -> Path:
        """``unlabelled_root`` with ``~`` and environment variables expanded."""
        return Path(os.path.expandvars(os.path.expanduser(self.unlabelled_root)))


class EvaluateParams(_Section):
    """``evaluate``: test-split metrics and inference speed."""

    batch_size: int = Field(16, ge=1)
    speed_runs: int = Field(5, ge=1)
    inference: Literal["whole", "slide"] = "whole"
    """``slide``: overlapping ``window``-sized tiles ``stride`` apart, their logits averaged."""
    window: tuple[int, int] | None = None
    """[height, width] of a sliding window (``inference: slide``)."""
    stride: tuple[int, int] | None = None
    """[height, width] between windows, at most ``window`` (None: half the window)."""
    tta: list[Literal["hflip"]] = Field(default_factory=list)
    """Test-time augmentation: ``[hflip]`` also predicts the mirrored image and averages the logits."""

    @model_validator(mode="after")
    def _window_fits(self) -> EvaluateParams:
        if self.inference == "slide" and self.window is None:
            raise ValueError("inference: slide needs window: [height, width]")
        if self.window is not None and min(self.window) < 1:
            raise ValueError(f"window {list(self.window)} must have sides of at least 1 px")
        if self.stride is not None and (
            min(self.stride) < 1
            or self.window is None
            or any(s > w for s, w in zip(self.stride, self.window, strict=True))
        ):
            raise ValueError(f"stride {list(self.stride)} must be positive and at most window")
        return self


class CompareParams(_Section):
    """``compare``: leaderboard ordering."""

    metric: Literal["test_miou", "test_dice", "test_pixel_acc", "test_mean_class_acc"] = "test_miou"


class RegisterParams(_Section):
    """``register``: which run becomes the new registered version."""

    metric: Literal["test_miou", "test_dice", "test_pixel_acc", "test_mean_class_acc"] = "test_miou"
    alias: str = Field("challenger", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")


class PromoteParams(_Section):
    """``promote``: when the challenger may replace the champion (``segpipe promote``)."""

    min_delta: float = Field(0.005, ge=0)
    """Smallest test-mIoU gain over the champion that counts as better."""
    require_gpu: bool = False
    """Production setting: only a model trained on CUDA can become champion."""
    bootstrap_resamples: int = Field(1000, ge=100)
    seed: int = 0


class ModelsTableParams(_Section):
    """``models_table``: reference size of the models table."""

    image_size: tuple[int, int] = (256, 256)


class TrackingParams(_Section):
    """``tracking``: where MLflow runs go (``MLFLOW_TRACKING_URI`` overrides ``uri``)."""

    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    live: bool = False
    """True: each train stage logs to MLflow as it trains. False: it records its calls in a local spool,
    and the track stage sends every spool in one process (MLflow starts once per pipeline, not once per
    model)."""
    system_metrics: bool = True
    """Record CPU, memory (and GPU) use of each training run as MLflow system metrics."""
    system_metrics_interval_s: float = Field(10.0, ge=1)
    """Seconds between two system-metric samples."""


class Params(_Section):
    """The whole ``params.yaml``."""

    prepare: PrepareParams = PrepareParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    pretrain: PretrainParams = PretrainParams()
    denoise: DenoiseParams = DenoiseParams()
    evaluate: EvaluateParams = EvaluateParams()
    compare: CompareParams = CompareParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    promote: PromoteParams = PromoteParams()
    models_table: ModelsTableParams = ModelsTableParams()
    tracking: TrackingParams = TrackingParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _denoise_warmup(self) -> Params:
        if self.denoise.architectures and self.train.warmup_epochs >= self.denoise.epochs:
            raise ValueError(
                f"train.warmup_epochs ({self.train.warmup_epochs}) must be below denoise.epochs "
                f"({self.denoise.epochs}): denoisers warm up too"
            )
        return self


_SHORT = reprlib.Repr()  # shows a bad value in an error message without pages of nested data
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 60, 60


def _key_part(part: str | int) -> str:
    """A key as written, or quoted when it is empty, padded or holds unprintable characters (a newline)."""
    plain = isinstance(part, int) or (part.isprintable() and part.strip() == part != "")
    return str(part) if plain else repr(part)


def _format_errors(error: ValidationError, source: Path) -> str:
    """One line per bad key: ``  <dotted.key>: <problem> (got <value, shortened>)``; continuation lines
    indented."""
    lines = [f"{source}: {error.error_count()} invalid setting(s):"]
    for item in error.errors():
        key = ".".join(_key_part(part) for part in item["loc"]) or "<top level>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and section)"
        value = item.get("input")
        hidden = (
            item["type"] in ("extra_forbidden", "missing") or isinstance(value, dict) or "got " in message
        )
        shown = "" if hidden else f" (got {_SHORT.repr(value)})"
        lines.append(f"  {key}: {message}{shown}".replace("\n", "\n    "))
    return "\n".join(lines)


def parse_params(raw: Any, source: Path = Path("params.yaml")) -> Params:
    """Validate an already-loaded mapping; raise :class:`ConfigError` naming each bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of stage sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run the stage from the project root or pass --params")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
            "save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"{path}: could not be read ({error.strerror or error}); check that it is a readable file"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: nested too deeply to read; write each section as a plain mapping of settings"
        ) from None
    return parse_params(raw, path)
