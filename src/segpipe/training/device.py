"""Device choice and reproducibility switches."""

from __future__ import annotations

import os
import random
from typing import Literal

import numpy as np
import torch

Precision = Literal["fp32", "bf16"]


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error, not a silent fallback."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is visible; set train.device: auto or cpu")
    return torch.device(choice)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Deterministic kernels when asked (else ``cudnn.benchmark``, for static input shapes); TF32 on CUDA."""
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible results
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_precision(choice: str, device: torch.device) -> Precision:
    """``auto``: bf16 autocast on CUDA, fp32 elsewhere."""
    if choice == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return "bf16" if choice == "bf16" else "fp32"


def resolve_channels_last(choice: str, device: torch.device) -> bool:
    """``auto``: channels_last on CUDA (tensor-core convolutions), NCHW on the CPU."""
    return device.type == "cuda" if choice == "auto" else choice == "channels_last"
