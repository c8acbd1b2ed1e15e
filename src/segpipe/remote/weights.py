"""Model weights for transport: safetensors shards in bfloat16, each within the GPU machine's 16 MiB file limit,
and a JSON meta that rebuilds the model (architecture, options, classes, input size, padding, shard sha256s).

Reading checks everything before use: shard names (plain names, no paths), sizes and sha256, the safetensors
format (never pickle), and every tensor's name, dtype and shape against the rebuilt model.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from segpipe import io
from segpipe.remote.bundle import Padding
from segpipe.models import build_model

META_FILE = "model.json"
FORMAT = "segpipe-weights/1"
DTYPE = torch.bfloat16
DTYPE_NAME = "bfloat16"
SHARD_LIMIT = 16 * 2**20
"""Largest file the GPU machine hands back."""
MAX_SHARDS = 3
"""Shards beside the run's other five files: the GPU machine hands back at most 8 files."""
SHARD_NAME = re.compile(r"^model-\d{2}\.safetensors$")
_HEADER_PER_TENSOR = 256
"""Generous bound on a tensor's entry in the safetensors JSON header (name, dtype, shape, offsets)."""
_META_LIMIT = 1 << 20


class WeightsError(ValueError):
    """Exported weights that are missing, altered, unsafe or do not fit the model they claim to be."""


@dataclass(frozen=True)
class WeightsMeta:
    architecture: str
    options: dict[str, Any]
    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int
    image_size: tuple[int, int]
    """The model's input before padding (the pack's size, or the size the run stretched it to)."""
    input_size: tuple[int, int]
    padding: Padding
    shards: tuple[dict[str, Any], ...]
    """``{"file", "bytes", "sha256"}`` per shard, in order."""


def transport_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as exported: floating tensors in bfloat16, the rest (BatchNorm step counts) unchanged,
    contiguous on the CPU."""
    return {
        key: (value.detach().to(DTYPE) if value.is_floating_point() else value.detach()).cpu().contiguous()
        for key, value in model.state_dict().items()
    }


def load_transport_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load exported tensors into ``model`` in its own dtypes (the bfloat16 values, widened)."""
    own = model.state_dict()
    model.load_state_dict({key: value.to(own[key].dtype) for key, value in state.items()})


def _shards(state: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in state-dict order, greedily grouped so that each shard file stays within ``limit`` bytes."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 8 + 1024  # length prefix + header framing and metadata
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size() + _HEADER_PER_TENSOR + len(key)
        if size + 8 + 1024 > limit:
            raise ValueError(f"tensor {key} {tuple(tensor.shape)} needs {size / 2**20:.1f} MiB, over the "
                             f"{limit / 2**20:g} MiB file limit: choose smaller model options")
        if used + size > limit and shards[-1]:
            shards.append({})
            used = 8 + 1024
        shards[-1][key] = tensor
        used += size
    return shards


def check_exportable(architecture: str, state: dict[str, torch.Tensor], limit: int = SHARD_LIMIT,
                     max_shards: int = MAX_SHARDS) -> None:
    """ValueError before any training when ``architecture``'s exported weights would not come back."""
    count = len(_shards(state, limit))
    if count > max_shards:
        total = sum(t.numel() * t.element_size() for t in state.values())
        raise ValueError(f"{architecture}'s weights need {count} files of {limit / 2**20:g} MiB ({total / 2**20:.1f} MiB "
                         f"in {DTYPE_NAME}), more than the {max_shards} that come back: choose smaller model options")


def write_weights(state: dict[str, torch.Tensor], folder: Path, meta: dict[str, Any],
                  limit: int = SHARD_LIMIT, max_shards: int = MAX_SHARDS) -> dict[str, Any]:
    """Write ``model-NN.safetensors`` shards and ``model.json`` (``meta`` plus format, dtype and the shard list)
    into ``folder``; shards of an earlier export that are no longer listed are removed."""
    check_exportable(meta["architecture"], state, limit, max_shards)
    entries = []
    for index, shard in enumerate(_shards(state, limit), start=1):
        data = safetensors.torch.save(shard, metadata={"format": "pt"})
        name = f"model-{index:02d}.safetensors"
        io.write_bytes(folder / name, data)
        entries.append({"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    record = {"format": FORMAT, **meta, "dtype": DTYPE_NAME, "shards": entries}
    io.write_json(folder / META_FILE, record)
    listed = {entry["file"] for entry in entries}
    for stale in folder.glob("model-*.safetensors"):
        if stale.name not in listed:
            stale.unlink()
    return record


def _fail(folder: Path, problem: str) -> WeightsError:
    return WeightsError(f"{folder / META_FILE}: {problem}. Use the folder exactly as pipelines/gpu_run.py wrote it")


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(type(side) is int and 0 < side <= 8192 for side in value):
        return value[0], value[1]
    return None


def read_meta(folder: Path) -> WeightsMeta:
    """The validated ``model.json`` of an exported model (types, sizes, shard names; not the shards yet)."""
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file() or path.is_symlink():
        raise WeightsError(f"{path} is missing (or not a plain file): copy the whole gpu_run output folder")
    if path.stat().st_size > _META_LIMIT:
        raise _fail(folder, f"it is over {_META_LIMIT} bytes")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(folder, f"it is not JSON ({error})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("dtype") != DTYPE_NAME:
        raise _fail(folder, f"expected format {FORMAT} with dtype {DTYPE_NAME}")
    names, options, padding = raw.get("class_names"), raw.get("options"), raw.get("padding")
    image_size, input_size = _pair(raw.get("image_size")), _pair(raw.get("input_size"))
    if not isinstance(raw.get("architecture"), str) or not isinstance(options, dict):
        raise _fail(folder, "architecture must be a name and options a mapping")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise _fail(folder, "class_names must be a list of names")
    if raw.get("num_classes") != len(names) or type(raw.get("ignore_index")) is not int:
        raise _fail(folder, "num_classes must equal the number of class_names and ignore_index be an integer")
    if image_size is None or input_size is None:
        raise _fail(folder, "image_size and input_size must be [height, width] of positive integers")
    if not isinstance(padding, dict) or set(padding) != {"top", "bottom", "left", "right"} or not all(
            type(value) is int and value >= 0 for value in padding.values()):
        raise _fail(folder, "padding must give top, bottom, left and right pixels")
    pad = Padding(**padding)
    if (image_size[0] + pad.top + pad.bottom, image_size[1] + pad.left + pad.right) != input_size:
        raise _fail(folder, f"image_size {list(image_size)} plus padding {padding} is not input_size {list(input_size)}")
    shards = raw.get("shards")
    if not isinstance(shards, list) or not 1 <= len(shards) <= 8:
        raise _fail(folder, "shards must list 1 to 8 files")
    for entry in shards:
        if not isinstance(entry, dict) or set(entry) != {"file", "bytes", "sha256"}:
            raise _fail(folder, f"shard entry {entry!r} must have exactly file, bytes and sha256")
        name, size, digest = entry["file"], entry["bytes"], entry["sha256"]
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise _fail(folder, f"shard file name {name!r} is not of the form model-NN.safetensors (no paths)")
        if type(size) is not int or not 0 < size <= SHARD_LIMIT:
            raise _fail(folder, f"shard {name} size {size!r} must be 1..{SHARD_LIMIT} bytes")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _fail(folder, f"shard {name} sha256 {digest!r} is not 64 hex digits")
    if len({entry["file"] for entry in shards}) != len(shards):
        raise _fail(folder, "a shard file is listed twice")
    return WeightsMeta(raw["architecture"], options, len(names), tuple(names), raw["ignore_index"], image_size,
                       input_size, pad, tuple(shards))


def _read_shard(folder: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = folder / entry["file"]
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
        raise WeightsError(f"{path} is missing or not a plain file in {folder}: copy the whole gpu_run output folder")
    data = path.read_bytes()
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise WeightsError(f"{path} does not match the size and sha256 in {META_FILE}: the file is corrupt or was "
                           f"changed; copy it again from the GPU run's output")
    try:
        return safetensors.torch.load(data)  # the bytes that were checked; safetensors never runs code
    except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError and others on bad headers
        raise WeightsError(f"{path} is not a safetensors file ({type(error).__name__}: {error}); "
                           f"only safetensors weights are read, never pickles") from None


def load_model(folder: Path) -> tuple[nn.Module, WeightsMeta]:
    """Rebuild the exported model on the CPU (eval mode) after checking every shard and tensor."""
    folder = Path(folder)
    meta = read_meta(folder)
    try:
        model = build_model(meta.architecture, meta.num_classes, options=meta.options)
    except ValueError as error:
        raise _fail(folder, f"it does not describe a model segpipe can build ({error})") from None
    if any(side % model.output_stride for side in meta.input_size):
        raise _fail(folder, f"input_size {list(meta.input_size)} is not divisible by {meta.architecture}'s output "
                            f"stride {model.output_stride}")
    expected = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for entry in meta.shards:
        for key, tensor in _read_shard(folder, entry).items():
            if key in tensors:
                raise WeightsError(f"{folder / entry['file']}: tensor {key} is also in an earlier shard")
            tensors[key] = tensor
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{folder}: the shards do not hold {meta.architecture}'s tensors (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}): they belong to another model or version")
    for key, reference in expected.items():
        tensor = tensors[key]
        dtype = DTYPE if reference.is_floating_point() else reference.dtype
        if tensor.dtype != dtype or tensor.shape != reference.shape:
            raise WeightsError(f"{folder}: tensor {key} is {tensor.dtype} {tuple(tensor.shape)}, the rebuilt "
                               f"{meta.architecture} needs {dtype} {tuple(reference.shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"{folder}: tensor {key} holds NaN or infinite values")
    load_transport_state(model, tensors)
    return model.eval(), meta
