"""CPU inference speed of every architecture: onnxruntime against torch eager, images/s at batch 1 and 16.

    python benchmarks/onnx_speed.py [--image-size 256 256] [--batches 1 16] [--runs 5]
                                    [--architectures unet segnet] [--threads N] [--out reports/benchmarks]

Each architecture is built untrained (speed does not depend on the weights), exported with
:func:`segpipe.serving.onnx_export.export_onnx` and run on the same random float32 batch by both: torch in
fp32 under ``inference_mode``, onnxruntime with its CPU provider and default graph optimisations, both with
the same number of threads. After one warm-up run each, the median of ``--runs`` timed runs is reported,
with the largest logit difference between the two. Writes ``onnx_speed.json`` and ``onnx_speed.md`` to
``--out``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from segpipe import io
from segpipe.models import available_architectures, build_model
from segpipe.serving.onnx_export import OPSET, export_onnx

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 12


def median_seconds(run: Callable[[], object], runs: int) -> float:
    run()  # warm-up: allocations, onnxruntime's first-run graph work
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(architecture: str, size: tuple[int, int], batches: list[int], runs: int, threads: int) -> dict:
    """One architecture's row: images/s per engine and batch, and the largest logit difference."""
    model = build_model(architecture, NUM_CLASSES).eval()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, architecture, Path(folder) / "model.onnx")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    row: dict[str, object] = {"architecture": architecture}
    for batch in batches:
        images = np.random.default_rng(0).random((batch, 3, *size), dtype=np.float32)
        tensor = torch.from_numpy(images)
        with torch.inference_mode():
            eager = median_seconds(lambda tensor=tensor: model(tensor), runs)
            expected = model(tensor).numpy()
        onnx = median_seconds(lambda images=images: session.run(None, {"images": images}), runs)
        [logits] = session.run(None, {"images": images})
        row[f"torch_img_s_b{batch}"] = round(batch / eager, 2)
        row[f"onnx_img_s_b{batch}"] = round(batch / onnx, 2)
        row[f"speedup_b{batch}"] = round(eager / onnx, 2)
        row[f"max_abs_diff_b{batch}"] = float(np.abs(logits - expected).max())
    return row


def markdown(rows: list[dict], settings: dict) -> str:
    columns = list(rows[0])
    lines = [
        "# CPU inference: onnxruntime vs torch eager",
        "",
        f"{settings['cpu']}, {settings['threads']} threads, torch {settings['torch']}, onnxruntime "
        f"{settings['onnxruntime']}, ONNX opset {OPSET}; images {settings['image_size'][0]}x"
        f"{settings['image_size'][1]}, {NUM_CLASSES} classes, untrained weights, median of "
        f"{settings['runs']} runs after one warm-up.",
        "",
        "| " + " | ".join(columns) + " |",
        "|---|" + "---:|" * (len(columns) - 1),
        *(
            "| " + " | ".join(f"{row[c]:.2g}" if "diff" in c else str(row[c]) for c in columns) + " |"
            for row in rows
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--architectures", nargs="+", default=available_architectures())
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.image_size)
    rows = []
    for architecture in args.architectures:
        rows.append(measure(architecture, size, args.batches, args.runs, args.threads))
        print(rows[-1], flush=True)
    settings = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": OPSET,
        "image_size": list(size),
        "runs": args.runs,
    }
    io.write_json(args.out / "onnx_speed.json", {"settings": settings, "rows": rows})
    io.write_text(args.out / "onnx_speed.md", markdown(rows, settings))
    print(f"wrote {args.out / 'onnx_speed.json'} and {args.out / 'onnx_speed.md'}")


if __name__ == "__main__":
    main()
