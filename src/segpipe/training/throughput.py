"""Timing helpers for the benchmarks and the evaluate stage: a bare training loop and inference throughput,
synchronised with the device so that CUDA's asynchronous launches are counted when they finish."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from segpipe.training.device import ComputeMode, Precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    mode = ComputeMode(device, precision, channels_last)
    mode.prepare(model)
    images = mode.inputs(images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
    model.train()
    timings = []
    for _ in range(rounds + warmup):
        sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with mode.autocast():
                loss = criterion(model(images), masks)
            loss.backward()
            optimizer.step()
        sync(device)
        timings.append(time.perf_counter() - started)
    return steps * len(images) / statistics.median(timings[int(warmup) :])


@torch.inference_mode()
def forward_seconds(
    model: nn.Module, images: torch.Tensor, runs: int, mode: ComputeMode, warmup: int = 1
) -> list[float]:
    """Seconds of each of ``runs`` timed forward passes of ``images`` in ``mode`` (eval mode), after
    ``warmup`` untimed ones; a channels_last mode leaves the model's weights channels_last."""
    model.eval()
    mode.prepare(model)
    images = mode.inputs(images)
    timings = []
    for run in range(runs + warmup):
        sync(images.device)
        started = time.perf_counter()
        with mode.autocast():
            model(images)
        sync(images.device)
        if run >= warmup:
            timings.append(time.perf_counter() - started)
    return timings


def inference_images_per_second(
    model: nn.Module,
    images: torch.Tensor,
    runs: int,
    precision: Precision = "fp32",
    channels_last: bool = False,
) -> float:
    """Median throughput of ``model`` on one batch over ``runs`` timed passes after a warm-up pass (autocast
    and memory format as given; a channels_last run leaves the model's weights channels_last)."""
    timings = forward_seconds(model, images, runs, ComputeMode(images.device, precision, channels_last))
    return len(images) / statistics.median(timings)
