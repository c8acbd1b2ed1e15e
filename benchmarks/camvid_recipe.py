"""segpipe's CamVid recipe against a plain training loop, at equal minutes of training on one machine.

    python benchmarks/camvid_recipe.py [--root CAMVID] [--minutes 15] [--ablation-minutes 4]

1. The plain loop, as a notebook would write it: smp Unet-resnet18 from scratch, fp32, AdamW lr 2e-3 constant,
   cross-entropy ignoring void, horizontal flips, batch 8, images resized to 192x256, for ``--minutes``.
2. segpipe's recipe (``recipes/camvid.yaml``, or ``--recipe``) through segpipe's own train stage, for the same
   minutes: the epoch count is set from a two-epoch calibration run of the same settings, so that training
   (validation included) fits the budget.

Both are scored on the same CamVid test images against the same 192x256 masks (nearest-resized from the
originals; segpipe predicts at the resolution it was prepared at and its logits are resized to 192x256), and
segpipe's model also against the original full-resolution masks (its logits resized to them).
``--ablation-minutes`` adds shorter runs: one ingredient added per row from the plain loop's settings to the
recipe's, then one row per ingredient the recipe leaves out. ``--pretrain-minutes`` compares the recipe from
scratch with denoising pretraining + fine-tuning. Writes ``reports/benchmarks/camvid_recipe.{csv,md,json}``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from segpipe import io
from segpipe.config import Params, parse_params
from segpipe.data.cache import load_split
from segpipe.data.manifest import DatasetInfo
from segpipe.data.prepare import prepare_dataset
from segpipe.data.validation import validate_prepared
from segpipe.inference import InferenceSettings, predict_logits
from segpipe.metrics import metrics_from_confusion
from segpipe.paths import ProjectPaths
from segpipe.recipes import merge
from segpipe.stages.pretrain import run_pretrain
from segpipe.stages.train import run_train
from segpipe.training.checkpoint import load_checkpoint
from segpipe.training.device import ComputeMode, describe_device

ROOT = Path(__file__).resolve().parents[1]
SIZE = (192, 256)
VOID = 11
IGNORE = 255
NUM_CLASSES = 11
PLAIN_SETTINGS = {
    "prepare": {"image_size": list(SIZE)},
    "train": {
        "architectures": ["smp_unet"],
        "precision": "fp32",
        "crop": None,
        "loss": {"name": "ce", "class_weights": "none"},
        "warmup_epochs": 0,
    },
    "evaluate": {"tta": []},
}
"""The plain loop's settings, run by segpipe's trainer (with its cosine schedule and best-epoch pick)."""


def ablation_rows(recipe: dict) -> list[tuple[str, dict[str, Any]]]:
    """Cumulative rows from the plain loop's settings to the recipe's, one ingredient added per row."""
    train, tta = recipe["train"], recipe.get("evaluate", {}).get("tta", [])
    loss, architecture = train["loss"], train["architectures"][0]
    plain_model = PLAIN_SETTINGS["train"]["architectures"][0]
    model_row = (
        []
        if architecture == plain_model
        else [(f"+ {architecture} instead of {plain_model}", {"train": {"architectures": [architecture]}})]
    )
    return [
        (f"{plain_model}, 192x256, fp32, ce, cosine", PLAIN_SETTINGS),
        ("+ bf16 where the CPU has it", {"train": {"precision": train["precision"]}}),
        *model_row,
        (
            f"+ {loss['name']}, {loss['class_weights']} class weights, warm-up",
            {"train": {"loss": loss, "warmup_epochs": train["warmup_epochs"]}},
        ),
        (f"+ test-time augmentation {tta}", {"evaluate": {"tta": tta}}),
    ]


def alternative_rows(recipe: dict) -> list[tuple[str, dict[str, Any]]]:
    """Rows that change one setting of the recipe, for ingredients it leaves out: its other architectures,
    and native resolution with crops."""
    return [
        *(
            (f"recipe with {name}", {"train": {"architectures": [name]}})
            for name in recipe["train"]["architectures"][1:]
        ),
        (
            "recipe at native resolution, 192x256 crops",
            {"prepare": {"image_size": None}, "train": {"crop": list(SIZE)}},
        ),
    ]


# ---------------------------------------------------------------- shared scoring


def resize_mask(mask: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize(size[::-1], Image.NEAREST))


def void_to_ignore(mask: np.ndarray) -> np.ndarray:
    """A CamVid mask (uint8) with its void class set to the ignored label."""
    return np.where(mask == VOID, IGNORE, mask).astype(np.uint8)


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    keep = truth != IGNORE
    index = truth[keep].astype(np.int64) * NUM_CLASSES + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def scores(matrix: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    flat = metrics_from_confusion(matrix).as_dict("test_", class_names)
    return {"miou": flat["test_miou"], "per_class": flat["test_per_class_iou"]}


# ---------------------------------------------------------------- the plain loop


def load_resized(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float [N, 3, 192, 256] in [0, 1] and masks long [N, 192, 256] (void -> ignore)."""
    names = sorted(path.name for path in (root / split / "images").glob("*.png"))
    images, masks = [], []
    for name in names:
        image = Image.open(root / split / "images" / name).convert("RGB").resize(SIZE[::-1], Image.BILINEAR)
        mask = resize_mask(np.asarray(Image.open(root / split / "masks" / name)))
        images.append(np.asarray(image))
        masks.append(void_to_ignore(mask))
    images_t = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return images_t, torch.from_numpy(np.stack(masks)).long()


def train_plain(images: torch.Tensor, masks: torch.Tensor, minutes: float, seed: int) -> tuple[Any, dict]:
    torch.manual_seed(seed)
    model = smp.Unet("resnet18", encoder_weights=None, classes=NUM_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    start = time.perf_counter()
    deadline, steps, epochs = start + minutes * 60, 0, 0
    while time.perf_counter() < deadline:
        order = torch.randperm(len(images))
        for first in range(0, len(order) - 7, 8):
            batch = order[first : first + 8]
            x, y = images[batch], masks[batch]
            flip = torch.rand(len(batch)) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            loss = F.cross_entropy(model(x), y, ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() >= deadline:
                break
        epochs += 1
    return model, {"steps": steps, "epochs": epochs, "train_seconds": round(time.perf_counter() - start, 1)}


@torch.no_grad()
def predict_plain(model: Any, images: torch.Tensor) -> Iterator[np.ndarray]:
    model.eval()
    for first in range(0, len(images), 16):
        yield from model(images[first : first + 16]).argmax(1).numpy().astype(np.uint8)


# ---------------------------------------------------------------- segpipe


def merged(base: dict, *overlays: dict) -> dict:
    """A copy of ``base`` with ``overlays`` written into it, in order."""
    result = copy.deepcopy(base)
    for overlay in overlays:
        merge(result, overlay)
    return result


def recipe_params(recipe: Path, root: Path, overlays: list[dict], epochs: int | None = None) -> Params:
    """The project's params with ``recipe`` and ``overlays`` on top: one architecture, CamVid from ``root``,
    no tracking, no resume, no pretraining unless an overlay asks."""
    raw = merged(
        yaml.safe_load((ROOT / "params.yaml").read_text()),
        yaml.safe_load(recipe.read_text()),
        {"pretrain": {"architectures": []}},
        *overlays,
        {"prepare": {"root": str(root)}, "tracking": {"enabled": False}},
    )
    raw["train"]["architectures"] = raw["train"]["architectures"][:1]
    raw["train"].update(resume="never", **({"epochs": epochs} if epochs else {}))
    return parse_params(raw, recipe)


def prepared_project(params: Params, scratch: Path) -> ProjectPaths:
    """A project folder with the dataset prepared as ``params.prepare`` says (prepared once per setting)."""
    key = "native" if params.prepare.image_size is None else "x".join(map(str, params.prepare.image_size))
    paths = ProjectPaths(scratch / key)
    if not paths.prepared.is_dir():
        prepare_dataset(params.prepare, paths.prepared)
        validate_prepared(paths.prepared, paths.validation_summary)
    return paths


def fitting_epochs(params: Params, paths: ProjectPaths, minutes: float) -> tuple[int, float]:
    """Epochs of these settings that fit ``minutes``, from the second epoch of a timed two-epoch run
    (validation included; the first epoch also pays one-off start-up costs)."""
    two_epochs = parse_params(
        merged(params.model_dump(by_alias=True), {"train": {"epochs": 2, "warmup_epochs": 0}})
    )
    seconds = run_train(two_epochs, params.train.architectures[0], paths, progress=False).history[-1].seconds
    return max(params.train.warmup_epochs + 1, int(minutes * 60 // seconds)), seconds


def native_test_masks(paths: ProjectPaths) -> list[np.ndarray]:
    """The test split's original masks (void -> ignore), in the prepared split's order."""
    rows = pd.read_csv(paths.prepared / "manifest.csv")
    test = rows[rows["split"] == "test"].sort_values("index")
    masks = (np.asarray(Image.open(path)) for path in test["source_mask"])
    return [void_to_ignore(mask) for mask in masks]


def evaluate_segpipe(params: Params, paths: ProjectPaths) -> dict[str, np.ndarray]:
    """Confusion matrices against the original full-resolution masks and against the 192x256 masks (the
    logits resized to each)."""
    name = params.train.architectures[0]
    mode = ComputeMode.resolve(torch.device("cpu"), params.train.precision, params.train.memory_format)
    model, _ = load_checkpoint(paths.checkpoint(name), mode.device)
    mode.prepare(model)
    settings = InferenceSettings.from_params(params.evaluate)
    test = load_split(paths.prepared, "test")
    full = small = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for index, mask in enumerate(native_test_masks(paths)):
        image = torch.from_numpy(np.array(test.image(index))).permute(2, 0, 1)[None].float() / 255
        with mode.autocast():
            logits = predict_logits(model, mode.inputs(image), settings).float()
        native = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
        full = full + confusion(native.argmax(1)[0].numpy(), mask)
        resized = F.interpolate(logits, size=SIZE, mode="bilinear", align_corners=False)
        small = small + confusion(resized.argmax(1)[0].numpy(), resize_mask(mask))
    return {"192x256": small, "full": full}


def run_segpipe(args: argparse.Namespace, overlays: list[dict], minutes: float, scratch: Path) -> dict:
    params = recipe_params(args.recipe, args.root, overlays)
    paths = prepared_project(params, scratch)
    epochs, epoch_seconds = fitting_epochs(params, paths, minutes)
    params = recipe_params(args.recipe, args.root, overlays, epochs)
    result = run_train(params, params.train.architectures[0], paths, progress=args.progress)
    names = DatasetInfo.load(paths.prepared).class_names
    matrices = evaluate_segpipe(params, paths)
    return {
        "architecture": params.train.architectures[0],
        "epochs": epochs,
        "calibration_epoch_seconds": round(epoch_seconds, 1),
        "train_seconds": round(result.seconds, 1),
        "precision": ComputeMode.resolve(torch.device("cpu"), params.train.precision).precision,
        **{f"test_{size}": scores(matrix, names) for size, matrix in matrices.items()},
    }


def run_pretrained(args: argparse.Namespace, minutes: float, scratch: Path) -> dict:
    """The recipe from an encoder pretrained by denoising (the ``pretrain`` stage) for a third of
    ``minutes``, then fine-tuned for the rest; the pretraining's epochs come from a timed one-epoch run."""
    name = recipe_params(args.recipe, args.root, []).train.architectures[0]
    unlabelled = scratch / "unlabelled"  # CamVid's training images alone
    unlabelled.mkdir(exist_ok=True)
    pretrain = {"pretrain": {"architectures": [name], "unlabelled_root": str(unlabelled)}}
    calibration = {"pretrain": {"epochs": 1}, "train": {"warmup_epochs": 0}}
    one_epoch = recipe_params(args.recipe, args.root, [pretrain, calibration])
    paths = prepared_project(one_epoch, scratch)
    start = time.perf_counter()
    run_pretrain(one_epoch, name, paths, progress=False)
    epochs = max(one_epoch.train.warmup_epochs + 2, int(minutes * 20 // (time.perf_counter() - start)))
    params = recipe_params(args.recipe, args.root, [pretrain, {"pretrain": {"epochs": epochs}}])
    start = time.perf_counter()
    run_pretrain(params, name, paths, progress=args.progress)
    seconds = time.perf_counter() - start
    fine_tune = {"train": {"models": {name: {"init": "pretrain"}}}}
    record = run_segpipe(args, [fine_tune], minutes - seconds / 60, scratch)
    return {**record, "pretrain_epochs": epochs, "pretrain_seconds": round(seconds, 1)}


def run_plain(args: argparse.Namespace, class_names: tuple[str, ...], minutes: float) -> dict:
    images, masks = load_resized(args.root, "train")
    test_images, test_masks = load_resized(args.root, "test")
    model, record = train_plain(images, masks, minutes, args.seed)
    matrix = sum(
        confusion(pred, truth.numpy())
        for pred, truth in zip(predict_plain(model, test_images), test_masks, strict=True)
    )
    return {
        "architecture": "smp_unet (plain loop)",
        "precision": "fp32",
        **record,
        "test_192x256": scores(matrix, class_names),
    }


# ---------------------------------------------------------------- report


def _points(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _iou(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def table_rows(report: dict) -> list[dict[str, Any]]:
    rows = []
    for label, record in [("plain loop", report["plain"]), ("segpipe recipe", report["recipe"])]:
        rows.append(_row(label, report["minutes"], record, report["class_names"]))
    for label, record in report.get("ablation", []):
        rows.append(_row(f"ablation: {label}", report["ablation_minutes"], record, report["class_names"]))
    for label, record in report.get("pretraining", []):
        rows.append(_row(f"pretraining: {label}", report["pretrain_minutes"], record, report["class_names"]))
    return rows


def _row(label: str, minutes: float, record: dict, class_names: list[str]) -> dict[str, Any]:
    small, full = record["test_192x256"], record.get("test_full")
    return {
        "run": label,
        "minutes": minutes,
        "architecture": record["architecture"],
        "precision": record["precision"],
        "epochs": record["epochs"],
        "train_seconds": record["train_seconds"],
        "test_miou_192x256": round(small["miou"], 4),
        "test_miou_full_resolution": round(full["miou"], 4) if full else None,
        "min_class_iou_192x256": round(min(v for v in small["per_class"].values() if v is not None), 4),
        **{f"iou_{name}": round(small["per_class"][name], 4) for name in class_names},
    }


def markdown(report: dict, rows: list[dict[str, Any]]) -> str:
    plain, recipe = report["plain"]["test_192x256"], report["recipe"]["test_192x256"]
    names = report["class_names"]
    lines = [
        f"# CamVid: segpipe's recipe against a plain loop ({report['device']}, {report['threads']} threads)",
        "",
        f"{report['minutes']} minutes of training each, scored on the {report['test_images']} test images "
        "against 192x256 masks (segpipe also at full resolution).",
        "",
        "| run | minutes | model | precision | epochs | test mIoU 192x256 | test mIoU full res. "
        "| lowest class |",
        "|---|---:|---|---|---:|---:|---:|---:|",
        *(
            f"| {r['run']} | {r['minutes']} | {r['architecture']} | {r['precision']} | {r['epochs']} | "
            f"{100 * r['test_miou_192x256']:.1f} | "
            f"{_points(r['test_miou_full_resolution'])} | "
            f"{r['min_class_iou_192x256']:.3f} |"
            for r in rows
        ),
        "",
        f"segpipe − plain: **{100 * (recipe['miou'] - plain['miou']):+.1f} mIoU points**.",
        "",
        *_pretraining_lines(report),
        "Per-class test IoU (192x256):",
        "",
        "| class | plain loop | segpipe recipe | segpipe, full resolution |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {_iou(plain['per_class'][name])} | {_iou(recipe['per_class'][name])} | "
            f"{_iou(report['recipe']['test_full']['per_class'][name])} |"
            for name in names
        ),
        "",
    ]
    return "\n".join(lines)


def _pretraining_lines(report: dict) -> list[str]:
    if not report.get("pretraining"):
        return []
    record = report["pretraining"][1][1]
    return [
        f"Pretraining rows, {report['pretrain_minutes']} minutes each in all: the pretrained one spent "
        f"{record['pretrain_seconds']} s on {record['pretrain_epochs']} denoising epochs, then fine-tuned "
        f"for {record['epochs']} epochs.",
        "",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=os.environ.get("SEGPIPE_CAMVID"), help="CamVid folder")
    parser.add_argument("--minutes", type=float, default=15.0, help="training minutes of each run")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "camvid.yaml")
    parser.add_argument(
        "--ablation-minutes", type=float, default=0, help="also run the ablation rows this long (0: skip)"
    )
    parser.add_argument(
        "--pretrain-minutes",
        type=float,
        default=0,
        help="also compare the recipe from scratch with pretraining + fine-tuning, this long each (0: skip)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args(argv)
    if args.root is None or not (Path(args.root) / "test" / "images").is_dir():
        parser.error(f"CamVid folder {args.root} not found: pass --root <folder> or set SEGPIPE_CAMVID")
    args.root = Path(args.root)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    class_names = tuple((args.root / "classes.txt").read_text().split())[:NUM_CLASSES]
    report: dict[str, Any] = {
        "minutes": args.minutes,
        "device": describe_device(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "class_names": list(class_names),
        "test_images": len(list((args.root / "test" / "images").glob("*.png"))),
    }
    report["plain"] = run_plain(args, class_names, args.minutes)
    print(f"plain loop: test mIoU {report['plain']['test_192x256']['miou']:.4f}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        report["recipe"] = run_segpipe(args, [], args.minutes, Path(scratch))
        print(f"segpipe recipe: test mIoU {report['recipe']['test_192x256']['miou']:.4f}", flush=True)
        if args.ablation_minutes:
            report["ablation_minutes"] = args.ablation_minutes
            report["ablation"], overlays = [], []
            recipe = yaml.safe_load(args.recipe.read_text())
            for label, overlay in ablation_rows(recipe):
                overlays.append(overlay)
                record = run_segpipe(args, list(overlays), args.ablation_minutes, Path(scratch))
                report["ablation"].append((label, record))
                print(f"ablation {label}: {record['test_192x256']['miou']:.4f}", flush=True)
            for label, overlay in alternative_rows(recipe):
                record = run_segpipe(args, [overlay], args.ablation_minutes, Path(scratch))
                report["ablation"].append((label, record))
                print(f"ablation {label}: {record['test_192x256']['miou']:.4f}", flush=True)
        if args.pretrain_minutes:
            report["pretrain_minutes"] = args.pretrain_minutes
            minutes = args.pretrain_minutes
            report["pretraining"] = [
                ("from scratch", run_segpipe(args, [], minutes, Path(scratch))),
                ("denoising pretraining + fine-tuning", run_pretrained(args, minutes, Path(scratch))),
            ]
            for label, record in report["pretraining"]:
                print(f"pretraining, {label}: {record['test_192x256']['miou']:.4f}", flush=True)
    rows = table_rows(report)
    io.write_json(args.out / "camvid_recipe.json", report)
    io.write_text(args.out / "camvid_recipe.csv", pd.DataFrame(rows).to_csv(index=False))
    io.write_text(args.out / "camvid_recipe.md", markdown(report, rows))
    print(markdown(report, rows))


if __name__ == "__main__":
    main()
