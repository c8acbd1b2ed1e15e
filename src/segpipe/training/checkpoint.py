"""Checkpoints: the tensors in ``model.safetensors``, the metadata in ``model.json`` beside it.

Loading reads JSON and safetensors only, so nothing on the load path unpickles. The JSON records the weights'
size and sha256, so a pair from two different saves (a file copied alone, a save cut short between its two
renames) is refused instead of loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from segpipe import io
from segpipe.models import build_model, build_reconstruction_model
from segpipe.models.base import is_normalisation_key
from segpipe.tasks import TaskName

FORMAT = "segpipe-checkpoint/1"
_META_LIMIT = 16 * 2**20
_PICKLE_STARTS = (b"PK\x03\x04", b"\x80")
"""``torch.save``'s zip container and a bare pickle: what a checkpoint of the previous format starts with."""
_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
"""torch dtypes as a safetensors header names them."""


class CheckpointError(ValueError):
    """A checkpoint that is missing a file, altered, of the previous format or not for this code."""


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
    normalisation: dict[str, Any] | None = None
    """Per-channel ``mean`` / ``std`` applied after scaling to [0, 1], if the model expects any."""


def meta_path(path: Path) -> Path:
    """The metadata file of the checkpoint ``path``: ``model.safetensors`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def _record(meta: CheckpointMeta, model: nn.Module, data: bytes, weights: Path) -> dict[str, Any]:
    raw = asdict(meta)
    return {
        "format": FORMAT,
        "architecture": meta.architecture,
        "options": raw["options"],
        "task": meta.task,
        "num_classes": meta.num_classes,
        "class_names": list(meta.class_names),
        "image_size": list(meta.image_size),
        "output_stride": int(getattr(model, "output_stride", 1)),
        "normalisation": meta.normalisation,
        "training": {"epoch": meta.epoch, "monitor": meta.monitor, "score": meta.score},
        "extra": raw["extra"],
        "weights": {"file": weights.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
    }


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def save_checkpoint(path: Path, model: nn.Module, meta: CheckpointMeta) -> None:
    """Write ``path`` (safetensors) and its ``.json``: both are complete on disk before either is renamed into
    place, the JSON last. A process killed between the two renames leaves new weights beside the old JSON,
    whose sha256 then disagrees: load refuses that pair instead of mixing two saves."""
    path = Path(path)
    state = {
        key: value.detach().cpu().clone(memory_format=torch.contiguous_format)
        for key, value in model.state_dict().items()
    }
    data = safetensors.torch.save(state, metadata={"format": "pt"})
    text = json.dumps(_record(meta, model, data, path), indent=2, allow_nan=False) + "\n"
    with io.atomic_path(meta_path(path)) as meta_tmp, io.atomic_path(path) as weights_tmp:
        _write_synced(weights_tmp, data)
        _write_synced(meta_tmp, text.encode("utf-8"))


def _convert_hint(path: Path) -> str:
    return f"convert it once with `segpipe convert-checkpoint {path}`, or re-run the train stage"


def _check_current_format(path: Path) -> None:
    """CheckpointError naming the conversion when ``path`` (or a ``model.pt`` beside it) is the old format."""
    if path.suffix != ".pt" and path.is_file() and meta_path(path).is_file():
        return
    old = path if path.suffix == ".pt" else path.with_name("model.pt")
    if path.is_file() and path.suffix != ".pt":
        with path.open("rb") as file:
            if not file.read(4).startswith(_PICKLE_STARTS):
                return  # the missing JSON is reported next
        old = path
    elif not old.is_file():
        raise FileNotFoundError(f"{path} is missing: run the train stage for this architecture first")
    raise CheckpointError(
        f"{old} is a checkpoint of segpipe's previous (pickled) format, which is no longer "
        f"read: {_convert_hint(old)}"
    )


def _read_record(path: Path) -> dict[str, Any]:
    json_path = meta_path(path)
    if not json_path.is_file():
        raise CheckpointError(
            f"{json_path} is missing: a checkpoint is {path.name} with {json_path.name} beside "
            f"it; copy both, or re-run the train stage"
        )
    if json_path.stat().st_size > _META_LIMIT:
        raise CheckpointError(
            f"{json_path} is over {_META_LIMIT} bytes: it is not a segpipe checkpoint's metadata"
        )
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{json_path} is not JSON ({error}): re-run the train stage that wrote it"
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a {FORMAT} file: re-run the train stage that wrote it")
    return record


def _meta(record: dict[str, Any], json_path: Path) -> CheckpointMeta:
    try:
        training = record["training"]
        return CheckpointMeta(
            architecture=str(record["architecture"]),
            options=dict(record["options"]),
            num_classes=int(record["num_classes"]),
            class_names=tuple(str(n) for n in record["class_names"]),
            image_size=(int(record["image_size"][0]), int(record["image_size"][1])),
            epoch=int(training["epoch"]),
            monitor=str(training["monitor"]),
            score=float(training["score"]),
            task=record["task"],
            extra=dict(record.get("extra") or {}),
            normalisation=record.get("normalisation"),
        )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise CheckpointError(
            f"{json_path} lacks a valid {error} field: re-run the train stage that wrote it"
        ) from None


def _read_tensors(path: Path, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, from the very bytes checked against the size and sha256 in its JSON."""
    data = path.read_bytes()
    weights = record.get("weights")
    if (
        not isinstance(weights, dict)
        or weights.get("bytes") != len(data)
        or weights.get("sha256") != hashlib.sha256(data).hexdigest()
    ):
        raise CheckpointError(
            f"{path} does not match the size and sha256 in {meta_path(path).name}: it is "
            f"truncated, altered or from another save; re-run the train stage"
        )
    try:
        return safetensors.torch.load(data)  # safetensors parses a JSON header and raw bytes, never code
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a safetensors file ({type(error).__name__}: {error}); {_convert_hint(path)}"
        ) from None


def build_from_meta(meta: CheckpointMeta) -> nn.Module:
    """The untrained model that ``meta`` describes."""
    if meta.task == "denoise":
        return build_reconstruction_model(meta.architecture, meta.num_classes, meta.options)
    return build_model(meta.architecture, meta.num_classes, options=meta.options)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, architecture: str) -> None:
    """Load ``state`` strictly: missing, extra or differently shaped tensors are a CheckpointError."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path} does not fit the current {architecture} code "
            f"({str(error).splitlines()[0]}): re-run train for {architecture}"
        ) from None


def _weights_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor in ``path``, from its safetensors header (no tensor is read)."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as file:
            return {
                key: (tuple(file.get_slice(key).get_shape()), file.get_slice(key).get_dtype())
                for key in file.keys()  # noqa: SIM118 (a safe_open handle is not a mapping)
            }
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a safetensors file ({type(error).__name__}: {error}); {_convert_hint(path)}"
        ) from None


def _check_against_header(meta: CheckpointMeta, path: Path) -> None:
    """Build ``meta``'s model on the meta device (no memory) and refuse it unless its tensors' names, shapes
    and dtypes are exactly those in ``path``'s header, so options in the JSON cannot size an allocation."""
    try:
        with torch.device("meta"):
            expected = {
                key: (tuple(value.shape), _DTYPE_NAMES.get(value.dtype, str(value.dtype)))
                for key, value in build_from_meta(meta).state_dict().items()
            }
    except ValueError as error:
        raise CheckpointError(f"{meta_path(path)} describes no model segpipe can build ({error})") from None
    found = _weights_header(path)
    # weights saved before models normalised their input lack those buffers; loading keeps the identity
    expected = {
        key: value for key, value in expected.items() if key in found or not is_normalisation_key(key)
    }
    differing = sorted(key for key in expected.keys() | found.keys() if expected.get(key) != found.get(key))
    if differing:
        key = differing[0]
        raise CheckpointError(
            f"{path} does not fit the current {meta.architecture} code with the options in "
            f"{meta_path(path).name} ({len(differing)} tensors differ, e.g. {key}: model "
            f"{expected.get(key, 'none')}, file {found.get(key, 'none')}): the pair is altered or from "
            f"another code version; re-run train for {meta.architecture}"
        )


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model of ``path`` (``model.safetensors`` with its ``model.json``), in eval mode.

    The model is first built on the meta device and checked against the weights' header, so only a model
    exactly the size of the weights file is ever allocated."""
    path = Path(path)
    _check_current_format(path)
    record = _read_record(path)
    meta = _meta(record, meta_path(path))
    state = _read_tensors(path, record)
    _check_against_header(meta, path)
    try:
        model = build_from_meta(meta)
    except (RuntimeError, MemoryError) as error:
        raise CheckpointError(
            f"{path}: building its {meta.architecture} ran out of memory "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); load it on a larger machine"
        ) from None
    load_state(model, state, path, meta.architecture)
    return model.to(device).eval(), meta


def convert_checkpoint(old: Path, new: Path | None = None) -> Path:
    """Rewrite a previous-format ``model.pt`` as ``model.safetensors`` + ``model.json`` (default: beside it).

    Reads it with ``torch.load(weights_only=True)``, which refuses code objects; use it on files you trust."""
    old = Path(old)
    new = Path(new) if new is not None else old.with_name("model.safetensors")
    if not old.is_file():
        raise FileNotFoundError(
            f"{old} is missing: give the path of a model.pt written by segpipe's train stage"
        )
    try:
        payload = torch.load(old, map_location="cpu", weights_only=True)
        raw = payload["meta"]
        meta = CheckpointMeta(
            raw["architecture"],
            dict(raw["options"]),
            int(raw["num_classes"]),
            tuple(raw["class_names"]),
            (int(raw["image_size"][0]), int(raw["image_size"][1])),
            int(raw["epoch"]),
            str(raw["monitor"]),
            float(raw["score"]),
            raw["task"],
            dict(raw.get("extra", {})),
        )
        state = payload["state_dict"]
    except Exception as error:
        raise CheckpointError(
            f"{old} is not a checkpoint of segpipe's previous format "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); re-run the train "
            f"stage instead"
        ) from None
    model = build_from_meta(meta)
    load_state(model, state, old, meta.architecture)
    save_checkpoint(new, model, meta)
    return new
