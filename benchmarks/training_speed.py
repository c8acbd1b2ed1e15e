"""Benchmark every architecture on this device, in fp32 and in bf16: segpipe's trainer against a bare PyTorch
loop, inference latency and throughput, peak memory, size and cost, and the data path alone.

    python benchmarks/training_speed.py [--image-size 128 128] [--batch-size 8] [--steps 20]
                                        [--architectures unet fcn8s] [--precisions fp32 bf16]

segpipe's side is the real trainer (:class:`segpipe.training.trainer.Trainer`: the uint8 batch loader with
flips, the task's loss, AdamW + cosine schedule, the progress bar and MLflow tracking into a scratch store);
the bare loop runs forward, loss, backward and step on tensors already in memory, nothing else. Both start
from the same weights and run in the same precision and memory format (those ``train.precision: <precision>``
with ``memory_format: auto`` picks: bf16 autocast with channels_last, fp32 with NCHW on the CPU). Writes
``reports/benchmarks/benchmark.{csv,md,json}``, one row per architecture and precision.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from segpipe import io
from segpipe.config import AugmentParams, TrackingParams
from segpipe.data.cache import SplitArrays
from segpipe.data.device_augment import DeviceAugmenter
from segpipe.data.loader import BatchLoader
from segpipe.models import available_architectures, build_model, count_params_m
from segpipe.models.profile import gflops_per_image
from segpipe.tasks.segment import SegmentTask
from segpipe.training.device import ComputeMode, describe_device, resolve_device
from segpipe.training.throughput import (
    bare_images_per_second,
    forward_seconds,
    inference_images_per_second,
    sync,
)
from segpipe.training.trainer import Trainer, TrainerSettings

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 6


def synthetic_split(count: int, size: tuple[int, int], seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *size, 3), dtype=np.uint8)
    masks = rng.integers(0, NUM_CLASSES, (count, *size), dtype=np.uint8)
    return SplitArrays(images, masks)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) on Linux


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True)
class Workload:
    """What one architecture is benchmarked on: loaders, one in-memory batch, and fresh models that all start
    from the same weights."""

    name: str
    train: BatchLoader
    val: BatchLoader
    batch: tuple[torch.Tensor, torch.Tensor]
    fresh: Callable[[], nn.Module]
    tracking: TrackingParams


def training_throughputs(work: Workload, mode: ComputeMode, rounds: int) -> tuple[float, float]:
    """Images/s of segpipe's trainer (tracking on; one epoch per round, its training part) and of the bare
    loop, both in ``mode``, measured in alternating rounds after a warm-up round of each, so that drift in the
    machine's speed hits both alike; medians over ``rounds``."""
    from segpipe.tracking.mlflow_tracking import start_run

    ours_model, bare_model = work.fresh(), work.fresh()
    ours, bare = [], []
    settings = TrainerSettings(
        1, 1e-3, 1e-4, progress=True, precision=mode.precision, channels_last=mode.channels_last
    )
    steps = len(work.train)
    with start_run(work.tracking, "benchmark", f"{work.name}-{mode.precision}", {}) as tracker:
        for round_index in range(rounds + 1):
            trainer = Trainer(SegmentTask(NUM_CLASSES, 255), settings, tracker)
            result = trainer.fit(ours_model, work.train, work.val)
            ours.append(steps * work.train.batch_size / result.history[0].train_seconds)
            bare.append(
                bare_images_per_second(
                    bare_model,
                    work.batch,
                    steps,
                    1,
                    mode.precision,
                    mode.channels_last,
                    warmup=round_index == 0,
                )
            )
    return statistics.median(ours[1:]), statistics.median(bare[1:])


def latency_ms(model: nn.Module, image: torch.Tensor, runs: int, mode: ComputeMode) -> tuple[float, float]:
    """Median and p95 milliseconds of one forward pass of ``image`` in ``mode``, after 5 warm-up passes."""
    timings = [seconds * 1000 for seconds in forward_seconds(model, image, runs, mode, warmup=5)]
    return statistics.median(timings), float(np.percentile(timings, 95))


def loader_images_per_second(
    arrays: SplitArrays, batch_size: int, device: torch.device, augment: AugmentParams
) -> float:
    augmenter = None
    if augment.needs_library:
        from segpipe.data.augment import SampleAugmenter

        augmenter = SampleAugmenter(augment, 255, seed=0)
    device_augmenter = DeviceAugmenter(augment, 255, 0, device) if augment.on_device else None
    loader = BatchLoader(
        arrays,
        batch_size,
        device,
        shuffle=True,
        hflip=augment.hflip,
        vflip=augment.vflip,
        drop_last=True,
        augmenter=augmenter,
        device_augmenter=device_augmenter,
    )
    started = time.perf_counter()
    seen = 0
    for epoch in range(3):
        loader.set_epoch(epoch)
        for images, _ in loader:
            seen += len(images)
    sync(device)
    return seen / (time.perf_counter() - started)


def fresh_model(name: str, device: torch.device, initial: dict[str, Any]) -> nn.Module:
    """A new ``name`` model holding the weights ``initial``."""
    model = build_model(name, NUM_CLASSES).to(device)
    model.load_state_dict(initial)
    return model


def workload(name: str, args: argparse.Namespace, device: torch.device, scratch: Path) -> Workload:
    size = tuple(args.image_size)
    train = BatchLoader(
        synthetic_split(args.steps * args.batch_size, size, 0),
        args.batch_size,
        device,
        shuffle=True,
        hflip=True,
        vflip=True,
        seed=0,
        drop_last=True,
    )
    val = BatchLoader(synthetic_split(args.batch_size, size, 1), args.batch_size, device)
    torch.manual_seed(0)
    initial = build_model(name, NUM_CLASSES).to(device).state_dict()
    fresh = functools.partial(fresh_model, name, device, initial)
    tracking = TrackingParams(uri=f"sqlite:///{scratch / 'mlflow.db'}")
    return Workload(name, train, val, next(iter(train)), fresh, tracking)


def benchmark_architecture(work: Workload, mode: ComputeMode, args: argparse.Namespace) -> dict[str, object]:
    """One row: training, inference and memory figures of ``work`` in ``mode``."""
    reset_peak_memory(mode.device)
    ours, bare = training_throughputs(work, mode, args.rounds)
    peak = peak_memory_mb(mode.device)
    model = work.fresh()
    images = work.batch[0]
    median_ms, p95_ms = latency_ms(model, images[:1], args.latency_runs, mode)
    throughput = inference_images_per_second(
        model, torch.cat([images] * 2)[:16], 10, mode.precision, mode.channels_last
    )
    return {
        "architecture": work.name,
        "precision": mode.precision,
        "memory_format": mode.memory_format,
        "train_img_per_s_segpipe": round(ours, 2),
        "train_img_per_s_bare": round(bare, 2),
        "ratio": round(ours / bare, 3),
        "infer_latency_ms_median": round(median_ms, 2),
        "infer_latency_ms_p95": round(p95_ms, 2),
        "infer_img_per_s_b16": round(throughput, 1),
        "peak_memory_mb": round(peak, 1),
        "params_m": round(count_params_m(model), 3),
        "gflops": round(gflops_per_image(work.fresh(), *args.image_size), 3),
    }


def precision_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Per architecture: segpipe's training and the batch-16 inference img/s in fp32 and in bf16, and bf16's
    speed-up; empty unless both precisions were measured."""
    if not {"fp32", "bf16"} <= set(frame["precision"]):
        return pd.DataFrame()
    by_precision = frame.set_index(["architecture", "precision"])
    rows = []
    for name in frame["architecture"].unique():
        train = [by_precision.loc[(name, p), "train_img_per_s_segpipe"] for p in ("fp32", "bf16")]
        infer = [by_precision.loc[(name, p), "infer_img_per_s_b16"] for p in ("fp32", "bf16")]
        rows.append(
            {
                "architecture": name,
                "train_img_per_s_fp32": train[0],
                "train_img_per_s_bf16": train[1],
                "train_speedup": round(train[1] / train[0], 2),
                "infer_img_per_s_fp32": infer[0],
                "infer_img_per_s_bf16": infer[1],
                "infer_speedup": round(infer[1] / infer[0], 2),
            }
        )
    return pd.DataFrame(rows)


def table(frame: pd.DataFrame) -> list[str]:
    """``frame`` as markdown table lines."""
    return [
        "| " + " | ".join(frame.columns) + " |",
        "|" + "---|" * len(frame.columns),
        *("| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)),
    ]


def markdown(frame: pd.DataFrame, env: dict[str, object], data: dict[str, float]) -> str:
    comparison = precision_comparison(frame)
    title = "bf16 against fp32 (segpipe's training img/s; inference img/s at batch 16):"
    comparison_lines = [] if comparison.empty else [title, "", *table(comparison), ""]
    lines = [
        f"# segpipe benchmark ({env['device']}, torch {env['torch']}, {env['threads']} threads, "
        f"{env['image_size'][0]}×{env['image_size'][1]}, batch {env['batch_size']})",
        "",
        "Training throughput of segpipe's trainer (loader, flips, loss, AdamW + schedule, progress bar, "
        "MLflow tracking; the training part of each epoch) against a bare loop (forward, loss, backward, "
        f"step on in-memory tensors), both the median of {env['rounds']} rounds of {env['steps']} steps, "
        "measured in alternating rounds after a warm-up round of each, from the same initial weights; "
        f"inference latency at batch 1 (median and p95 over {env['latency_runs']} runs) and throughput at "
        "batch 16; peak memory during training. Each loop runs in the row's precision and memory format "
        "(bf16: autocast with fp32 weights).",
        "",
        *table(frame),
        "",
        *comparison_lines,
        "Data path alone (images/s, batch loader over the uint8 cache, 3 epochs): "
        + ", ".join(
            f"{k}: {v:.0f}"
            for k, v in data.items()
            if k.startswith("loader") and not k.endswith("_vs_fastest")
        )
        + f"; fastest model's training consumption: {data['fastest_model_img_per_s']:.0f} img/s "
        f"(loader with albumentations / fastest model = {data['loader_albumentations_vs_fastest']:.1f}×).",
        "",
    ]
    return "\n".join(lines)


def data_path_speeds(args: argparse.Namespace, device: torch.device, fastest: float) -> dict[str, float]:
    """Images/s of the batch loader alone (flips; albumentations; augmentation on the device) against the
    fastest model's training consumption ``fastest``."""
    arrays = synthetic_split(max(64, 4 * args.batch_size), tuple(args.image_size), 2)
    flips = AugmentParams(hflip=True, vflip=True)
    augment = {"hflip": True, "vflip": True, "scale": (0.75, 1.25), "color_jitter": {"brightness": 0.2}}
    data = {
        "loader_flips_on_device": loader_images_per_second(arrays, args.batch_size, device, flips),
        "loader_albumentations": loader_images_per_second(
            arrays, args.batch_size, device, AugmentParams(**augment)
        ),
        "loader_on_device_augment": loader_images_per_second(
            arrays, args.batch_size, device, AugmentParams(**augment, on_device=True)
        ),
        "fastest_model_img_per_s": fastest,
    }
    data["loader_albumentations_vs_fastest"] = data["loader_albumentations"] / fastest
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--architectures", nargs="+", default=available_architectures())
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed rounds (epochs) per loop; medians are reported"
    )
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16"],
        choices=("fp32", "bf16"),
        help="measure each architecture in these precisions (memory format: auto)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    env = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "latency_runs": args.latency_runs,
    }
    print(f"benchmark on {env['device']}, torch {env['torch']}, {env['threads']} threads", flush=True)
    modes = [ComputeMode.resolve(device, precision) for precision in dict.fromkeys(args.precisions)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.architectures:
            work = workload(name, args, device, Path(scratch))
            for mode in modes:
                rows.append(benchmark_architecture(work, mode, args))
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    data = data_path_speeds(args, device, float(frame["train_img_per_s_segpipe"].max()))
    comparison = precision_comparison(frame).to_dict("records")
    io.write_text(args.out / "benchmark.csv", frame.to_csv(index=False))
    io.write_text(args.out / "benchmark.md", markdown(frame, env, data))
    io.write_json(
        args.out / "benchmark.json",
        {"environment": env, "models": rows, "bf16_vs_fp32": comparison, "data_path": data},
    )
    print(markdown(frame, env, data))


if __name__ == "__main__":
    main()
