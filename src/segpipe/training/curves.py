"""Per-epoch training curves as a flat CSV, one row per epoch (a DVC plot)."""

from __future__ import annotations

import csv
import io as text_io
from collections.abc import Sequence
from pathlib import Path

from segpipe import io
from segpipe.training.trainer import EpochRecord, TrainResult


def curve_rows(history: Sequence[EpochRecord]) -> list[dict[str, float]]:
    """``epoch, train_loss, val_loss``, the task's other validation metrics, ``lr, seconds`` per epoch."""
    return [
        {
            "epoch": record.epoch,
            "train_loss": record.train_loss,
            "val_loss": record.validation.get("val_loss"),
            **record.validation,
            "lr": record.lr,
            "seconds": record.seconds,
        }
        for record in history
    ]


def write_curves(path: Path, result: TrainResult) -> None:
    """Write every epoch of ``result`` so far to ``path`` (atomically; rewritten as epochs are added)."""
    rows = curve_rows(result.history)
    text = text_io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["epoch"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    io.write_text(path, text.getvalue())
