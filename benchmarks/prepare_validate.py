"""Benchmark: wall time of prepare + validate over a real dataset (default: CamVid from $SEGPIPE_CAMVID).

    python benchmarks/prepare_validate.py [--dataset camvid] [--root PATH] [--image-size 96 128] [--workers 2]

Prepares into a temporary folder (the project's data/prepared is not touched), validates it, and writes
``reports/benchmarks/prepare_validate_<dataset>.{json,md}`` with the times, sample counts and machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from segpipe import io
from segpipe.config import parse_params
from segpipe.data.prepare import prepare_dataset
from segpipe.data.validation import validate_prepared

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument(
        "--root",
        default=os.environ.get("SEGPIPE_CAMVID"),
        required="SEGPIPE_CAMVID" not in os.environ,
        help="dataset folder (default: $SEGPIPE_CAMVID)",
    )
    parser.add_argument("--image-size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "reports" / "benchmarks", help="folder for the report files"
    )
    args = parser.parse_args()
    params = parse_params(
        {
            "prepare": {
                "dataset": args.dataset,
                "root": args.root,
                "image_size": args.image_size,
                "workers": args.workers,
            }
        }
    )
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared"
        started = time.perf_counter()
        info = prepare_dataset(params.prepare, prepared)
        prepared_at = time.perf_counter()
        summary = validate_prepared(prepared, Path(scratch) / "summary.json")
        validated_at = time.perf_counter()
    samples = sum(info.split_sizes.values())
    result = {
        "dataset": args.dataset,
        "image_size": args.image_size,
        "samples": info.split_sizes,
        "prepare_seconds": round(prepared_at - started, 2),
        "validate_seconds": round(validated_at - prepared_at, 2),
        "total_seconds": round(validated_at - started, 2),
        "samples_per_second": round(samples / (validated_at - started), 1),
        "validation_passed": bool(summary["success"]),
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    target = args.out / f"prepare_validate_{args.dataset}"
    io.write_json(target.with_suffix(".json"), result)
    io.write_text(
        target.with_suffix(".md"),
        "\n".join(
            [
                f"# prepare + validate: {args.dataset} "
                f"({samples} samples → {args.image_size[0]}×{args.image_size[1]})",
                "",
                "| prepare s | validate s | total s | samples/s | workers | CPUs |",
                "|---:|---:|---:|---:|---:|---:|",
                f"| {result['prepare_seconds']} | {result['validate_seconds']} | {result['total_seconds']} | "
                f"{result['samples_per_second']} | {args.workers} | {result['cpu_count']} |",
                "",
            ]
        ),
    )
    print(result)


if __name__ == "__main__":
    main()
