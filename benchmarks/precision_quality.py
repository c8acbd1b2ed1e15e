"""Quality of bf16 against fp32: train each architecture on CamVid in fp32 and in bf16 (same seed, same
settings), score both on the test split, and check how often bf16 evaluation of the fp32 model picks the same
class as fp32 evaluation.

    python benchmarks/precision_quality.py [--root CAMVID] [--architectures unet smp_unet] [--epochs 10]
                                           [--image-size 192 256] [--max-per-split N] [--seeds 42 1 2]

CamVid comes from ``--root`` (default: $SEGPIPE_CAMVID) and is prepared and validated into a temporary folder;
training is the train stage itself (:func:`segpipe.stages.train.run_train`) with the project's ``params.yaml``
apart from the dataset, size, epochs, device and ``train.precision`` (bf16 runs channels_last, as
``memory_format: auto`` picks). ``--seeds`` repeats both trainings per seed, to set the bf16 − fp32 difference
beside the spread between seeds. Writes ``reports/benchmarks/precision_quality.{json,md}`` (under ``--out``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from segpipe import io
from segpipe.config import Params, parse_params
from segpipe.data.cache import load_split
from segpipe.data.loader import BatchLoader
from segpipe.data.manifest import DatasetInfo
from segpipe.data.prepare import prepare_dataset
from segpipe.data.validation import validate_prepared
from segpipe.metrics import ConfusionMatrix, metrics_from_confusion
from segpipe.paths import ProjectPaths
from segpipe.stages.train import run_train
from segpipe.training.checkpoint import load_checkpoint
from segpipe.training.device import ComputeMode, describe_device, resolve_device

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")


def quality_params(args: argparse.Namespace, precision: str, seed: int) -> Params:
    """The project's params with CamVid at ``args.image_size``, ``args.epochs``, ``precision`` and ``seed``;
    no tracking."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["prepare"].update(
        dataset="camvid",
        root=str(args.root),
        image_size=list(args.image_size),
        max_per_split=args.max_per_split,
    )
    raw["train"].update(
        architectures=list(args.architectures),
        epochs=args.epochs,
        device=args.device,
        precision=precision,
        seed=seed,
        memory_format="auto",
        resume="never",
    )
    raw["tracking"] = {**raw.get("tracking", {}), "enabled": False}
    return parse_params(raw, ROOT / "params.yaml")


@torch.no_grad()
def predict_test_split(
    paths: ProjectPaths, name: str, mode: ComputeMode, batch_size: int
) -> tuple[np.ndarray, torch.Tensor]:
    """The confusion matrix and the argmax classes ``[N, H, W]`` of ``name``'s checkpoint on the test split,
    run in ``mode``."""
    info = DatasetInfo.load(paths.prepared)
    model, _ = load_checkpoint(paths.checkpoint(name), mode.device)
    mode.prepare(model)
    loader = BatchLoader(load_split(paths.prepared, "test"), batch_size, mode.device)
    confusion = ConfusionMatrix(info.num_classes, info.ignore_index, mode.device)
    classes = []
    for images, masks in loader:
        with mode.autocast():
            logits = model(mode.inputs(images))
        confusion.update(logits, masks)
        classes.append(logits.argmax(1).to(torch.uint8).cpu())
    return confusion.matrix(), torch.cat(classes)


def scores(confusion: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    """Test mIoU and per-class IoU (None for a class absent from truth and prediction)."""
    flat = metrics_from_confusion(confusion).as_dict("test_", class_names)
    return {"test_miou": flat["test_miou"], "per_class_iou": flat["test_per_class_iou"]}


def argmax_agreement(
    paths: ProjectPaths, name: str, fp32_classes: torch.Tensor, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Share of test pixels (all, and the labelled ones) where bf16 evaluation of the fp32 checkpoint picks
    the class fp32 evaluation picked."""
    _, bf16_classes = predict_test_split(paths, name, ComputeMode.resolve(device, "bf16"), batch_size)
    info = DatasetInfo.load(paths.prepared)
    labelled = torch.from_numpy(np.asarray(load_split(paths.prepared, "test").masks) != info.ignore_index)
    same = bf16_classes == fp32_classes
    return {"all_pixels": same.float().mean().item(), "labelled_pixels": same[labelled].float().mean().item()}


def compare_architecture(
    args: argparse.Namespace, name: str, seed: int, paths: ProjectPaths
) -> dict[str, Any]:
    """Train ``name`` with ``seed`` in each precision and score it on the test split; the fp32 model is also
    evaluated in bf16 (before the bf16 run replaces its checkpoint)."""
    device = resolve_device(args.device)
    class_names = DatasetInfo.load(paths.prepared).class_names
    record: dict[str, Any] = {"architecture": name, "seed": seed}
    for precision in PRECISIONS:
        params = quality_params(args, precision, seed)
        result = run_train(params, name, paths, progress=args.progress)
        mode = ComputeMode.resolve(device, precision)
        confusion, classes = predict_test_split(paths, name, mode, params.evaluate.batch_size)
        record[precision] = {
            **scores(confusion, class_names),
            "memory_format": mode.memory_format,
            "best_epoch": result.best_epoch,
            "train_seconds": round(result.seconds, 1),
        }
        if precision == "fp32":
            record["bf16_eval_agreement"] = argmax_agreement(
                paths, name, classes, device, params.evaluate.batch_size
            )
        print(f"{name} seed {seed} {precision}: test mIoU {record[precision]['test_miou']:.4f}", flush=True)
    record["miou_points_bf16_minus_fp32"] = round(
        100 * (record["bf16"]["test_miou"] - record["fp32"]["test_miou"]), 2
    )
    return record


def _iou(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown(report: dict[str, Any]) -> str:
    settings, models = report["settings"], report["models"]
    lines = [
        f"# bf16 against fp32 on CamVid ({report['environment']['device']}, torch "
        f"{report['environment']['torch']})",
        "",
        f"{settings['image_size'][0]}×{settings['image_size'][1]}, {settings['epochs']} epochs, seeds "
        f"{settings['seeds']}, train/val/test {settings['split_sizes']}; each architecture trained per "
        "seed once in fp32 (NCHW) and once with bf16 autocast (fp32 weights, channels_last), both scored on "
        "the test split in their own precision. Agreement: share of test pixels where bf16 evaluation of the "
        "fp32 model picks the class fp32 evaluation picks.",
        "",
        "| architecture | seed | fp32 test mIoU | bf16 test mIoU | bf16 − fp32 (points) "
        "| agreement (all pixels) | agreement (labelled) | fp32 train s | bf16 train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {m['architecture']} | {m['seed']} | {m['fp32']['test_miou']:.4f} | "
            f"{m['bf16']['test_miou']:.4f} | "
            f"{m['miou_points_bf16_minus_fp32']:+.2f} | "
            f"{100 * m['bf16_eval_agreement']['all_pixels']:.2f} % | "
            f"{100 * m['bf16_eval_agreement']['labelled_pixels']:.2f} % | {m['fp32']['train_seconds']} | "
            f"{m['bf16']['train_seconds']} |"
            for m in models
        ),
        "",
        "Per-class test IoU:",
        "",
        "| class | "
        + " | ".join(f"{m['architecture']} {p} (seed {m['seed']})" for m in models for p in PRECISIONS)
        + " |",
        "|---|" + "---:|" * (len(models) * len(PRECISIONS)),
        *(
            f"| {name} | "
            + " | ".join(_iou(m[p]["per_class_iou"][name]) for m in models for p in PRECISIONS)
            + " |"
            for name in report["class_names"]
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=os.environ.get("SEGPIPE_CAMVID"),
        help="CamVid folder (default: $SEGPIPE_CAMVID)",
    )
    parser.add_argument("--architectures", nargs="+", default=["unet", "smp_unet"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument(
        "--max-per-split",
        type=int,
        default=None,
        help="at most this many images per split (a quick check; default: all)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[42], help="train both precisions once per seed (default: 42)"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args(argv)
    if args.root is None or not Path(args.root).is_dir():
        parser.error(f"CamVid folder {args.root} not found: pass --root <folder> or set SEGPIPE_CAMVID")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        paths = ProjectPaths(Path(scratch))
        params = quality_params(args, "fp32", args.seeds[0])
        info = prepare_dataset(params.prepare, paths.prepared)
        validate_prepared(paths.prepared, paths.validation_summary)
        models = [
            compare_architecture(args, name, seed, paths)
            for name in args.architectures
            for seed in args.seeds
        ]
    settings = {
        "image_size": args.image_size,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "batch_size": params.train.batch_size,
        "lr": params.train.lr,
        "split_sizes": info.split_sizes,
    }
    environment = {
        "device": describe_device(resolve_device(args.device)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    report = {
        "settings": settings,
        "environment": environment,
        "class_names": list(info.class_names),
        "models": models,
    }
    io.write_json(args.out / "precision_quality.json", report)
    io.write_text(args.out / "precision_quality.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
