"""The compare stage: leaderboard (CSV + Markdown) and plots across all trained architectures, from the
metrics files alone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from segpipe import io
from segpipe.config import Params
from segpipe.data.manifest import DatasetInfo, class_pixel_columns, read_manifest
from segpipe.figures import pyplot, save_png
from segpipe.metrics import constant_prediction_confusion, metrics_from_confusion
from segpipe.paths import ProjectPaths
from segpipe.stages.evaluate import PER_CLASS_IOU

if TYPE_CHECKING:
    from segpipe.tasks import TaskName

REFERENCE = "majority_class"
FAMILY_LABELS = {"builtin": "builtin", "smp": "smp baseline", "reference": "reference"}
COLUMNS = [
    "rank",
    "architecture",
    "family",
    "test_miou",
    "test_dice",
    "test_pixel_acc",
    "test_mean_class_acc",
    "params_m",
    "gflops",
    "infer_img_per_s",
    "train_seconds",
    "best_epoch",
]


def majority_class_row(prepared: Path, info: DatasetInfo) -> dict[str, object]:
    """Scores of predicting the train split's most frequent class everywhere on the test split."""
    manifest = read_manifest(prepared)
    columns = class_pixel_columns(info.num_classes)
    majority = int(np.argmax(manifest.loc[manifest["split"] == "train", columns].sum().to_numpy()))
    test_pixels = manifest.loc[manifest["split"] == "test", columns].sum().to_numpy()
    scores = metrics_from_confusion(constant_prediction_confusion(test_pixels, majority))
    return {
        "architecture": REFERENCE,
        "family": "reference",
        "test_miou": scores.miou,
        "test_dice": scores.dice,
        "test_pixel_acc": scores.pixel_acc,
        "test_mean_class_acc": scores.mean_class_acc,
        **{
            f"{PER_CLASS_IOU}{name}": value
            for name, value in zip(info.class_names, scores.per_class_iou, strict=True)
        },
    }


def per_class_iou(record: dict[str, object], class_names: tuple[str, ...]) -> dict[str, float | None]:
    """A segmenter's test IoU per class from its metrics record (None: class absent from truth and
    prediction)."""
    return {name: record.get(f"{PER_CLASS_IOU}{name}") for name in class_names}


def load_metrics(
    paths: ProjectPaths, architectures: list[str], task: TaskName = "segment"
) -> list[dict[str, object]]:
    records = []
    stage = "evaluate" if task == "segment" else f"{task}_evaluate"
    for architecture in architectures:
        path = paths.metrics(architecture, task)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: run the {stage} stage for {architecture} (dvc repro "
                f"{stage}@{architecture})"
            )
        records.append(io.read_json(path))
    return records


def leaderboard_frame(records: list[dict[str, object]], metric: str) -> pd.DataFrame:
    frame = pd.DataFrame(records).reindex(columns=COLUMNS[1:])
    frame = frame.sort_values(metric, ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def _number(value: object, digits: int) -> str:
    """A table cell: ``value`` with ``digits`` decimals, empty where missing."""
    return "" if pd.isna(value) else f"{float(value):.{digits}f}"


def leaderboard_markdown(
    frame: pd.DataFrame,
    records: list[dict[str, object]],
    class_names: tuple[str, ...],
    dataset: str,
    metric: str,
) -> str:
    lines = [
        f"# Leaderboard: {dataset} (test split, sorted by {metric})",
        "",
        "| Rank | Model | Kind | mIoU | Dice | Pixel acc | Mean class acc | Params (M) | GFLOPs/img | "
        "Inference img/s | Train s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in frame.itertuples(index=False):
        lines.append(
            f"| {row.rank} | {row.architecture} | {FAMILY_LABELS[row.family]} | "
            f"{_number(row.test_miou, 4)} | {_number(row.test_dice, 4)} | {_number(row.test_pixel_acc, 4)} | "
            f"{_number(row.test_mean_class_acc, 4)} | "
            f"{_number(row.params_m, 2)} | {_number(row.gflops, 3)} | {_number(row.infer_img_per_s, 1)} | "
            f"{_number(row.train_seconds, 0)} |"
        )
    lines += [
        "",
        f"`{REFERENCE}` predicts the most frequent training class everywhere: any useful model must beat it "
        "by far.",
        "",
        "## Per-class IoU (test split)",
        "",
        "| Model | " + " | ".join(class_names) + " |",
        "|---|" + "---:|" * len(class_names),
    ]
    by_name = {record["architecture"]: record for record in records}
    for name in frame["architecture"]:
        per_class = per_class_iou(by_name[name], class_names)
        lines.append(f"| {name} | " + " | ".join(_number(per_class[c], 3) for c in class_names) + " |")
    return "\n".join(lines) + "\n"


DENOISE_REFERENCE = "corrupted_input"
DENOISE_COLUMNS = [
    "rank",
    "architecture",
    "family",
    "corruption",
    "test_psnr",
    "test_ssim",
    "test_loss",
    "params_m",
    "gflops",
    "infer_img_per_s",
    "train_seconds",
    "best_epoch",
]


def denoise_frame(records: list[dict[str, object]]) -> pd.DataFrame:
    """Denoisers by test PSNR, with the corrupted input itself (what a denoiser must improve on) as a
    reference row."""
    if not records:
        return pd.DataFrame(columns=DENOISE_COLUMNS)
    reference = {
        "architecture": DENOISE_REFERENCE,
        "family": "reference",
        "corruption": records[0]["corruption"],
        "test_psnr": records[0]["input_psnr"],
        "test_ssim": records[0]["input_ssim"],
    }
    frame = pd.DataFrame([*records, reference]).reindex(columns=DENOISE_COLUMNS[1:])
    frame = frame.sort_values("test_psnr", ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def denoise_markdown(frame: pd.DataFrame) -> str:
    lines = [
        f"## Denoising (task: denoise; test split corrupted with {frame['corruption'].iloc[0]}, "
        "sorted by PSNR)",
        "",
        "| Rank | Model | Kind | PSNR (dB) | SSIM | Params (M) | GFLOPs/img | Inference img/s | Train s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in frame.itertuples(index=False):
        lines.append(
            f"| {row.rank} | {row.architecture} | {FAMILY_LABELS[row.family]} | "
            f"{_number(row.test_psnr, 2)} | {_number(row.test_ssim, 4)} | {_number(row.params_m, 2)} | "
            f"{_number(row.gflops, 3)} | {_number(row.infer_img_per_s, 1)} | "
            f"{_number(row.train_seconds, 0)} |"
        )
    lines += [
        "",
        f"`{DENOISE_REFERENCE}` scores the corrupted test images themselves: a denoiser must beat it. "
        "Examples (corrupted | output | clean): `reports/plots/denoise/<model>.png`.",
    ]
    return "\n".join(lines) + "\n"


def plot_leaderboard(frame: pd.DataFrame, metric: str, target: Path) -> None:
    plt = pyplot()
    colours = {"builtin": "tab:blue", "smp": "tab:orange", "reference": "tab:gray"}
    ordered = frame.iloc[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(frame) + 1.2))
    axis.barh(ordered["architecture"], ordered[metric], color=[colours[f] for f in ordered["family"]])
    for y, value in enumerate(ordered[metric]):
        axis.text(value, y, f" {value:.3f}", va="center")
    axis.set_xlim(0, 1.08)
    axis.set_xlabel(metric)
    axis.set_title(
        "segpipe leaderboard (blue: builtin architectures, orange: smp baselines, grey: reference)",
        fontsize=9,
    )
    save_png(figure, target)


def plot_per_class_iou(records: list[dict[str, object]], class_names: tuple[str, ...], target: Path) -> None:
    plt = pyplot()
    width = 0.8 / len(records)
    positions = np.arange(len(class_names))
    figure, axis = plt.subplots(figsize=(max(7, 1.2 * len(class_names)), 4))
    for offset, record in enumerate(records):
        values = [value or 0.0 for value in per_class_iou(record, class_names).values()]
        axis.bar(positions + offset * width, values, width, label=record["architecture"])
    axis.set_xticks(positions + width * (len(records) - 1) / 2, class_names, rotation=20)
    axis.set_ylabel("test IoU")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    axis.set_title("Per-class IoU on the test split")
    save_png(figure, target)


def run_compare(params: Params, paths: ProjectPaths) -> pd.DataFrame:
    """Write ``reports/leaderboard.{csv,md,json}``, ``reports/leaderboard_denoise.csv`` and the plots (no
    MLflow: the track stage publishes them)."""
    info = DatasetInfo.load(paths.prepared)
    metric = params.compare.metric
    records = load_metrics(paths, params.train.architectures)
    denoise_records = load_metrics(paths, params.denoise.architectures, "denoise")
    everything = [*records, majority_class_row(paths.prepared, info)]
    frame = leaderboard_frame(everything, metric)
    io.write_text(paths.leaderboard_csv, frame.to_csv(index=False, float_format="%.6g"))
    models = frame[frame["family"] != "reference"]
    io.write_json(
        paths.leaderboard_summary,
        {
            "best_architecture": str(models["architecture"].iloc[0]) if len(models) else None,
            f"best_{metric}": float(models[metric].iloc[0]) if len(models) else None,
            metric: {
                str(name): float(value)
                for name, value in zip(models["architecture"], models[metric], strict=True)
            },
        },
    )
    markdown = leaderboard_markdown(frame, everything, info.class_names, info.name, metric)
    denoisers = denoise_frame(denoise_records)
    io.write_text(paths.denoise_leaderboard_csv, denoisers.to_csv(index=False, float_format="%.6g"))
    if len(denoisers):
        markdown += "\n" + denoise_markdown(denoisers)
    io.write_text(paths.leaderboard_md, markdown)
    plot_leaderboard(frame, metric, paths.plots / "leaderboard.png")
    plot_per_class_iou(records, info.class_names, paths.plots / "per_class_iou.png")
    return frame
