"""Benchmark every architecture on this device: segpipe's training loop against a bare PyTorch loop,
inference latency and throughput, peak memory, size and cost, and the data path alone.

    python pipelines/benchmark.py [--image-size 128 128] [--batch-size 8] [--steps 20] [--architectures unet fcn8s]

segpipe's loop is the real one (``segpipe.training.loop.fit``: the uint8 batch loader with flips, the task's
loss, AdamW + cosine schedule, the progress bar and MLflow tracking into a scratch store); the bare loop runs
forward, loss, backward and step on tensors already in memory, nothing else. Both start from the same
weights. Writes ``reports/benchmarks/benchmark.{csv,md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from segpipe import io
from segpipe.config import AugmentParams, TrackingParams
from segpipe.data.cache import SplitArrays
from segpipe.data.device_augment import DeviceAugmenter
from segpipe.data.loader import BatchLoader
from segpipe.training.throughput import bare_images_per_second, sync
from segpipe.models import available_architectures, build_model, count_params_m
from segpipe.models.profile import gflops_per_image
from segpipe.stages.evaluate import inference_images_per_second
from segpipe.tasks.segment import SegmentTask
from segpipe.training.device import describe_device, resolve_device
from segpipe.training.loop import LoopSettings, fit

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


def training_throughputs(name: str, fresh: Callable[[], nn.Module], train: BatchLoader, val: BatchLoader,
                         batch: tuple[torch.Tensor, torch.Tensor], tracking: TrackingParams,
                         rounds: int) -> tuple[float, float]:
    """Images/s of segpipe's real loop (tracking on; one epoch per round, its training part) and of the bare loop,
    measured in alternating rounds after a warm-up round of each, so that drift of this shared machine's speed
    hits both alike; medians over ``rounds``."""
    from segpipe.tracking.mlflow_tracking import start_run

    ours_model, bare_model = fresh(), fresh()
    ours, bare = [], []
    with start_run(tracking, "benchmark", name, {}) as tracker:
        for round_index in range(rounds + 1):
            result = fit(ours_model, train, val, SegmentTask(NUM_CLASSES, 255),
                         LoopSettings(1, 1e-3, 1e-4, progress=True), tracker, lambda *_: None)
            ours.append(len(train) * train.batch_size / result.history[0].train_seconds)
            bare.append(bare_images_per_second(bare_model, batch, len(train), 1, warmup=round_index == 0))
    return statistics.median(ours[1:]), statistics.median(bare[1:])


@torch.inference_mode()
def latency_ms(model: nn.Module, image: torch.Tensor, runs: int) -> tuple[float, float]:
    model.eval()
    for _ in range(5):
        model(image)
    timings = []
    for _ in range(runs):
        sync(image.device)
        started = time.perf_counter()
        model(image)
        sync(image.device)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings), float(np.percentile(timings, 95))


def loader_images_per_second(arrays: SplitArrays, batch_size: int, device: torch.device, augment: AugmentParams) -> float:
    augmenter = None
    if augment.needs_library:
        from segpipe.data.augment import SampleAugmenter

        augmenter = SampleAugmenter(augment, 255, seed=0)
    device_augmenter = DeviceAugmenter(augment, 255, 0, device) if augment.on_device else None
    loader = BatchLoader(arrays, batch_size, device, shuffle=True, hflip=augment.hflip, vflip=augment.vflip,
                         drop_last=True, augmenter=augmenter, device_augmenter=device_augmenter)
    started = time.perf_counter()
    seen = 0
    for epoch in range(3):
        loader.set_epoch(epoch)
        for images, _ in loader:
            seen += len(images)
    sync(device)
    return seen / (time.perf_counter() - started)


def benchmark_architecture(name: str, args: argparse.Namespace, device: torch.device, scratch: Path) -> dict[str, object]:
    size = tuple(args.image_size)
    train = BatchLoader(synthetic_split(args.steps * args.batch_size, size, 0), args.batch_size, device,
                        shuffle=True, hflip=True, vflip=True, seed=0, drop_last=True)
    val = BatchLoader(synthetic_split(args.batch_size, size, 1), args.batch_size, device)
    batch = next(iter(train))
    torch.manual_seed(0)
    initial = build_model(name, NUM_CLASSES).to(device).state_dict()

    def fresh() -> nn.Module:
        model = build_model(name, NUM_CLASSES).to(device)
        model.load_state_dict(initial)
        return model

    tracking = TrackingParams(uri=f"sqlite:///{scratch / 'mlflow.db'}")
    reset_peak_memory(device)
    ours, bare = training_throughputs(name, fresh, train, val, batch, tracking, args.rounds)
    peak = peak_memory_mb(device)
    model = fresh()
    median_ms, p95_ms = latency_ms(model, batch[0][:1], args.latency_runs)
    throughput = inference_images_per_second(model, torch.cat([batch[0]] * 2)[:16], runs=10)
    return {
        "architecture": name,
        "train_img_per_s_segpipe": round(ours, 2),
        "train_img_per_s_bare": round(bare, 2),
        "ratio": round(ours / bare, 3),
        "infer_latency_ms_median": round(median_ms, 2),
        "infer_latency_ms_p95": round(p95_ms, 2),
        "infer_img_per_s_b16": round(throughput, 1),
        "peak_memory_mb": round(peak, 1),
        "params_m": round(count_params_m(model), 3),
        "gflops": round(gflops_per_image(model, *size), 3),
    }


def markdown(frame: pd.DataFrame, env: dict[str, object], data: dict[str, float]) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    lines = [
        f"# segpipe benchmark ({env['device']}, torch {env['torch']}, {env['threads']} threads, "
        f"{env['image_size'][0]}×{env['image_size'][1]}, batch {env['batch_size']})",
        "",
        "Training throughput of segpipe's loop (loader, flips, loss, AdamW + schedule, progress bar, MLflow "
        "tracking; the training part of each epoch) against a bare loop (forward, loss, backward, step on "
        f"in-memory tensors), both the median of {env['rounds']} rounds of {env['steps']} steps, measured in "
        "alternating rounds after a warm-up round of each, from the same initial weights; inference latency "
        "at batch 1 (median and p95 over "
        f"{env['latency_runs']} runs) and throughput at batch 16; peak memory during training.",
        "",
        header,
        "|" + "---|" * len(frame.columns),
        *("| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)),
        "",
        "Data path alone (images/s, batch loader over the uint8 cache, 3 epochs): "
        + ", ".join(f"{k}: {v:.0f}" for k, v in data.items() if k.startswith("loader") and not k.endswith("_vs_fastest"))
        + f"; fastest model's training consumption: {data['fastest_model_img_per_s']:.0f} img/s "
        f"(loader with albumentations / fastest model = {data['loader_albumentations_vs_fastest']:.1f}×).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=available_architectures())
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (epochs) per loop; medians are reported")
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    env = {"device": describe_device(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "image_size": args.image_size, "batch_size": args.batch_size,
           "steps": args.steps, "rounds": args.rounds, "latency_runs": args.latency_runs}
    print(f"benchmark on {env['device']}, torch {env['torch']}, {env['threads']} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.architectures:
            row = benchmark_architecture(name, args, device, Path(scratch))
            print(row, flush=True)
            rows.append(row)
    frame = pd.DataFrame(rows)
    arrays = synthetic_split(max(64, 4 * args.batch_size), tuple(args.image_size), 2)
    fastest = float(frame["train_img_per_s_segpipe"].max())
    data = {
        "loader_flips_on_device": loader_images_per_second(arrays, args.batch_size, device, AugmentParams(hflip=True, vflip=True)),
        "loader_albumentations": loader_images_per_second(
            arrays, args.batch_size, device,
            AugmentParams(hflip=True, vflip=True, scale=(0.75, 1.25), color_jitter={"brightness": 0.2})),
        "loader_on_device_augment": loader_images_per_second(
            arrays, args.batch_size, device,
            AugmentParams(hflip=True, vflip=True, scale=(0.75, 1.25), color_jitter={"brightness": 0.2}, on_device=True)),
        "fastest_model_img_per_s": fastest,
    }
    data["loader_albumentations_vs_fastest"] = data["loader_albumentations"] / fastest
    io.write_text(args.out / "benchmark.csv", frame.to_csv(index=False))
    io.write_text(args.out / "benchmark.md", markdown(frame, env, data))
    io.write_json(args.out / "benchmark.json", {"environment": env, "models": rows, "data_path": data})
    print(markdown(frame, env, data))


if __name__ == "__main__":
    main()
