"""Timing helpers shared by the benchmark and the GPU run: a bare training loop and inference throughput,
synchronised with the device so that CUDA's asynchronous launches are counted when they finish."""

from __future__ import annotations

import functools
import statistics
import time

import torch
from torch import nn

from segpipe.training.device import Precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: Precision) -> functools.partial:
    return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def bare_images_per_second(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    rounds: int,
    precision: Precision = "fp32",
    channels_last: bool = False,
    ignore_index: int = 255,
    warmup: bool = True,
) -> float:
    """Forward, loss, backward, step on one in-memory batch, nothing else (AdamW, fused on CUDA as in the real
    loop; autocast and memory format as given); median over ``rounds`` rounds after a warm-up round (none
    with ``warmup=False``, for a model that already ran). Changes the model's weights."""
    images, masks = batch
    device = images.device
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
    autocast = _autocast(device, precision)
    model.train()
    timings = []
    for _ in range(rounds + warmup):
        sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = criterion(model(images), masks)
            loss.backward()
            optimizer.step()
        sync(device)
        timings.append(time.perf_counter() - started)
    return steps * len(images) / statistics.median(timings[int(warmup):])


@torch.inference_mode()
def inference_images_per_second(
    model: nn.Module, images: torch.Tensor, runs: int, precision: Precision = "fp32", channels_last: bool = False
) -> float:
    """Median throughput of ``model`` on one batch over ``runs`` timed passes after a warm-up pass."""
    model.eval()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = _autocast(images.device, precision)
    timings = []
    for _ in range(runs + 1):
        sync(images.device)
        started = time.perf_counter()
        with autocast():
            model(images)
        sync(images.device)
        timings.append(time.perf_counter() - started)
    return len(images) / statistics.median(timings[1:])
