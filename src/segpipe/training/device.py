"""Device choice, numeric precision and memory format, and reproducibility switches."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

Precision = Literal["fp32", "bf16"]

CPU_BF16_OVERRIDE = "SEGPIPE_CPU_BF16"
"""Environment variable: ``1`` treats the CPU as running bfloat16 natively, ``0`` as not; unset: detected."""
NATIVE_BF16_FEATURES = ("amx_bf16", "avx512_bf16", "bf16")
"""CPU features with native bfloat16 matrix maths: x86 AMX-BF16 and AVX512-BF16, Arm BF16."""


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error, not a silent
    fallback."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "train.device is 'cuda' but no CUDA device is visible; set train.device: auto or cpu"
        )
    return torch.device(choice)


def describe_device(device: torch.device) -> str:
    """``cuda (<GPU name>)``, or ``cpu (<n> threads, bf16: <native bf16 features or none>)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, bf16: {cpu_bf16_capability()})"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Deterministic kernels when asked (else ``cudnn.benchmark``, for static input shapes); TF32 on CUDA."""
    if deterministic and device.type == "cuda":
        # cuBLAS needs it for reproducible results
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def cpu_bf16_features() -> tuple[str, ...]:
    """This CPU's native bfloat16 features, as torch's cpuinfo query reports them."""
    capabilities = torch.cpu.get_capabilities()
    return tuple(feature for feature in NATIVE_BF16_FEATURES if capabilities.get(feature))


def cpu_bf16_override() -> bool | None:
    """``SEGPIPE_CPU_BF16`` as a bool; None when unset."""
    value = os.environ.get(CPU_BF16_OVERRIDE, "").strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise ValueError(
            f"{CPU_BF16_OVERRIDE}={value!r}: set it to 1 (use bf16 on this CPU), 0 (fp32) "
            f"or unset it to detect the CPU's bf16 support"
        )
    return value == "1"


def cpu_has_native_bf16() -> bool:
    """Whether ``auto`` trains and infers in bf16 on this CPU: the override, else the detected features."""
    override = cpu_bf16_override()
    return bool(cpu_bf16_features()) if override is None else override


def cpu_bf16_capability() -> str:
    """The CPU's native bf16 features for records (``amx_bf16 avx512_bf16``, ``none``), and the override
    where set."""
    features = " ".join(cpu_bf16_features()) or "none"
    override = cpu_bf16_override()
    return features if override is None else f"{features}, {CPU_BF16_OVERRIDE}={int(override)}"


def resolve_precision(choice: str, device: torch.device) -> Precision:
    """``auto``: bf16 autocast on CUDA and on a CPU with native bf16 (:func:`cpu_has_native_bf16`), fp32
    elsewhere; an explicit choice is kept."""
    if choice != "auto":
        return "bf16" if choice == "bf16" else "fp32"
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return "bf16" if native else "fp32"


def resolve_channels_last(choice: str, device: torch.device, precision: Precision) -> bool:
    """``auto``: channels_last on CUDA (tensor-core convolutions) and for bf16 on the CPU (oneDNN's bf16
    convolutions run in NHWC); NCHW for fp32 on the CPU."""
    if choice != "auto":
        return choice == "channels_last"
    return device.type == "cuda" or precision == "bf16"


@dataclass(frozen=True)
class ComputeMode:
    """How a model runs on ``device``: fp32 or bf16 autocast (weights stay fp32), NCHW or channels_last.

    One object for training, evaluation, promotion and predict, so that all run a model alike."""

    device: torch.device
    precision: Precision = "fp32"
    channels_last: bool = False

    @classmethod
    def resolve(
        cls, device: torch.device, precision: str = "auto", memory_format: str = "auto"
    ) -> ComputeMode:
        """The mode for ``train.precision`` and ``train.memory_format`` (``auto``: per device and CPU)."""
        chosen = resolve_precision(precision, device)
        return cls(device, chosen, resolve_channels_last(memory_format, device, chosen))

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` with its weights in this memory format (in place); its dtype is unchanged."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def record(self) -> dict[str, str]:
        """Precision, memory format and the CPU's bf16 capability, for run tags and metrics records."""
        return {
            "precision": self.precision,
            "memory_format": self.memory_format,
            "cpu_bf16": cpu_bf16_capability(),
        }
