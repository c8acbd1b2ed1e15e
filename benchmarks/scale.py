"""Benchmark: memory and time of a dataset larger than memory, and streaming against in-memory throughput.

    python benchmarks/scale.py --images 20000 --size 256 [--workers 2] [--batch-size 16] [--device auto]
    python benchmarks/scale.py --throughput [--rounds 3] [--throughput-size 352 480] [--throughput-images 367]

Scale mode writes a synthetic folder dataset of ``--images`` PNG pairs (90 % train, 5 % val, 5 % test) to a
temporary folder, runs segpipe's ``prepare`` on it, then trains one epoch of a small U-Net (base_channels 8)
on the streaming path (``data.in_memory: false``). Each phase runs in its own process; its wall time and
peak resident memory are measured as the largest single process (``wait4``'s ``ru_maxrss``) and as the
proportional set size summed over the process tree, loader workers included (sampled every 0.2 s).
Throughput mode trains the same model on a CamVid-sized split (367 images of 352×480: sides divisible by 32),
alternating rounds of the in-memory and the streaming path. Results go to
``reports/benchmarks/scale.{md,csv}`` (throughput: ``scale_throughput.{md,csv}``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io as io_text
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_OPTIONS = {"depth": 4, "base_channels": 8}
SAMPLE_EVERY_S = 0.2


def tree_memory(pid: int) -> int:
    """Proportional resident bytes (PSS: a page shared by k processes counts 1/k in each) of a process and
    all its descendants (0 once it is gone); RSS would count the pages forked workers share once each."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class TreeSampler(threading.Thread):
    """Samples :func:`tree_memory` of ``pid`` until the process ends; ``peak`` holds the largest sum."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY_S):
            self.peak = max(self.peak, tree_memory(self.pid))


def run_phase(name: str, args: list[str]) -> dict[str, object]:
    """Run this script's ``--phase name`` in a child process: wall time and peak memory."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--phase", name, *args])
    sampler = TreeSampler(child.pid)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    sampler.done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"phase {name} failed with exit status {child.returncode}")
    return {
        "phase": name,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb_largest_process": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "peak_pss_mb_process_tree": round(sampler.peak / 2**20, 1),
    }


SCENES = 64  # distinct rendered scenes; rendering all 20,000 would dominate the benchmark


@functools.lru_cache(maxsize=SCENES)
def _scene(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from segpipe.data.synthetic import render_scene

    return render_scene(np.random.default_rng(seed), size, size)


def write_sample(job: tuple[Path, str, int, int]) -> None:
    """A synthetic scene as ``<split>/images/<id>.png`` and ``<split>/masks/<id>.png``: one of ``SCENES``
    rendered scenes, with the sample's index written into its first pixels so no two images are equal
    (prepare refuses an image found in two splits)."""
    from PIL import Image

    folder, split, index, size = job
    image, mask = _scene(index % SCENES, size)
    image = image.copy()
    image.reshape(-1)[:4] = np.frombuffer(index.to_bytes(4, "little"), dtype=np.uint8)
    Image.fromarray(image).save(folder / split / "images" / f"{index:06d}.png", compress_level=1)
    Image.fromarray(mask).save(folder / split / "masks" / f"{index:06d}.png", compress_level=1)


def write_dataset(folder: Path, images: int, size: int, workers: int) -> None:
    """The synthetic folder dataset, written by ``workers`` processes."""
    from multiprocessing import Pool

    from segpipe.data.synthetic import CLASS_NAMES

    val = test = max(1, images // 20)
    splits = ["val"] * val + ["test"] * test + ["train"] * (images - val - test)
    for split in ("train", "val", "test"):
        for kind in ("images", "masks"):
            (folder / split / kind).mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    jobs = [(folder, split, index, size) for index, split in enumerate(splits)]
    with Pool(workers) as pool:
        for _ in pool.imap_unordered(write_sample, jobs, chunksize=64):
            pass


def prepare(folder: Path, prepared: Path, workers: int) -> None:
    from segpipe.config import parse_params
    from segpipe.data.prepare import prepare_dataset

    params = parse_params(
        {"prepare": {"dataset": "folder", "root": str(folder), "image_size": None, "workers": workers}}
    )
    info = prepare_dataset(params.prepare, prepared)
    print(f"prepared {info.split_sizes} at {info.image_size}")


def train_epoch(prepared: Path, workers: int, batch_size: int, device_name: str, in_memory: str) -> float:
    """One epoch of the small U-Net on the prepared data; the training images per second."""
    import torch

    from segpipe.config import DataParams
    from segpipe.data.cache import load_split
    from segpipe.data.loader import make_loader
    from segpipe.data.manifest import DatasetInfo
    from segpipe.models import build_model
    from segpipe.tasks.segment import SegmentTask
    from segpipe.training.device import ComputeMode, resolve_device
    from segpipe.training.trainer import Trainer, TrainerSettings

    device = resolve_device(device_name)
    info = DatasetInfo.load(prepared)
    data = DataParams(in_memory=in_memory, workers=workers)
    train = make_loader(
        load_split(prepared, "train"),
        data,
        batch_size,
        device,
        shuffle=True,
        hflip=True,
        seed=0,
        drop_last=True,
    )
    val = make_loader(load_split(prepared, "val"), data, batch_size, device)
    torch.manual_seed(0)
    model = build_model("unet", info.num_classes, options=MODEL_OPTIONS).to(device)
    mode = ComputeMode.resolve(device)  # bf16 + channels_last where the hardware has it, as precision: auto
    settings = TrainerSettings(1, 2e-3, 1e-4, precision=mode.precision, channels_last=mode.channels_last)
    trainer = Trainer(SegmentTask(info.num_classes, info.ignore_index), settings)
    record = trainer.fit(model, train, val).history[0]
    rate = len(train) * batch_size / record.train_seconds
    print(f"{type(train).__name__}: {rate:.1f} training images/s")
    return rate


def run_child(args: argparse.Namespace) -> None:
    """The work of one phase, in this (child) process."""
    if args.phase == "write":
        write_dataset(args.scratch / "raw", args.images, args.size, args.workers)
    elif args.phase == "prepare":
        prepare(args.scratch / "raw", args.scratch / "prepared", args.workers)
    else:
        rate = train_epoch(args.scratch / "prepared", args.workers, args.batch_size, args.device, "false")
        (args.scratch / "train.json").write_text(json.dumps({"images_per_second": rate}))


def scale(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="segpipe-scale-") as scratch:
        common = ["--scratch", scratch, *_shared_flags(args)]
        rows = [run_phase(name, common) for name in ("write", "prepare", "train")]
        rate = json.loads((Path(scratch) / "train.json").read_text())["images_per_second"]
        cache_bytes = sum(p.stat().st_size for p in (Path(scratch) / "prepared" / "cache").iterdir())
    rows[2]["train_images_per_second"] = round(rate, 1)
    setting = (
        f"{args.images} synthetic images of {args.size}×{args.size} (cache {cache_bytes / 2**30:.2f} GiB), "
        f"unet {MODEL_OPTIONS}, batch {args.batch_size}, {args.workers} workers, device {args.device} "
        "(bf16 autocast where the hardware has it, as `precision: auto`)"
    )
    write_report(args.out / "scale", "Scale: prepare and one streaming training epoch", setting, rows)


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--images", str(args.images), "--size", str(args.size), "--workers", str(args.workers),
        "--batch-size", str(args.batch_size), "--device", args.device,
    ]  # fmt: skip


def throughput(args: argparse.Namespace) -> None:
    """Alternating rounds of in-memory and streaming training epochs on one CamVid-sized split."""
    from segpipe.data.cache import SplitArrays, save_split
    from segpipe.data.manifest import DatasetInfo

    height, width = args.throughput_size
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="segpipe-throughput-") as scratch:
        prepared = Path(scratch)
        for split, count in (("train", args.throughput_images), ("val", args.batch_size)):
            images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
            save_split(prepared, split, SplitArrays(images, (images[..., 0] // 43).astype(np.uint8)))
        names = tuple(f"class{k}" for k in range(6))
        DatasetInfo("throughput", names, 255, (height, width), {"train": args.throughput_images}).save(
            prepared
        )
        rates: dict[str, list[float]] = {"true": [], "false": []}
        for _ in range(args.rounds):
            for in_memory in rates:
                rates[in_memory].append(
                    train_epoch(prepared, args.workers, args.batch_size, args.device, in_memory)
                )
    rows = [
        {"path": name, "median_images_per_second": round(statistics.median(rates[key]), 1),
         "rounds": " ".join(f"{rate:.1f}" for rate in rates[key])}
        for name, key in (("in-memory", "true"), ("streaming", "false"))
    ]  # fmt: skip
    ratio = rows[1]["median_images_per_second"] / rows[0]["median_images_per_second"]
    setting = (
        f"{args.throughput_images} images of {height}×{width}, unet {MODEL_OPTIONS}, "
        f"batch {args.batch_size}, {args.workers} workers, device {args.device}, "
        f"{args.rounds} alternating rounds; streaming / in-memory = {ratio:.3f}"
    )
    write_report(args.out / "scale_throughput", "Streaming against in-memory training", setting, rows)


def write_report(target: Path, title: str, setting: str, rows: list[dict[str, object]]) -> None:
    """``target.csv`` and a Markdown table in ``target.md``."""
    from segpipe import io

    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io_text.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    io.write_text(target.with_suffix(".csv"), text.getvalue())
    processor = platform.processor() or platform.machine()
    machine = f"{processor}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    table = [
        f"# {title}",
        "",
        f"{setting}. Machine: {machine}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(row.get(column, "")) for column in columns) + " |" for row in rows),
        "",
    ]
    io.write_text(target.with_suffix(".md"), "\n".join(table))
    print("\n".join(table))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=256, help="image side (px)")
    parser.add_argument("--workers", type=int, default=2, help="prepare and loader worker processes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--throughput", action="store_true", help="streaming vs in-memory throughput")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--throughput-size", type=int, nargs=2, default=[352, 480], metavar=("H", "W"))
    parser.add_argument("--throughput-images", type=int, default=367)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    parser.add_argument("--phase", choices=["write", "prepare", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.phase is not None:
        run_child(args)
    elif args.throughput:
        throughput(args)
    else:
        scale(args)


if __name__ == "__main__":
    main()
