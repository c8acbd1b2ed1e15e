"""Where each stage reads and writes, relative to the project root (mirrors dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segpipe.tasks import TaskName


@dataclass(frozen=True)
class ProjectPaths:
    """The fixed project layout; stages take one of these instead of loose path strings."""

    root: Path = Path(".")

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def validation_summary(self) -> Path:
        return self.reports / "validation" / "summary.json"

    @property
    def leaderboard_csv(self) -> Path:
        return self.reports / "leaderboard.csv"

    @property
    def leaderboard_md(self) -> Path:
        return self.reports / "leaderboard.md"

    @property
    def leaderboard_summary(self) -> Path:
        """The leaderboard's best model and each model's score: a DVC metrics file, so ``dvc exp show`` can
        sort experiments over different architectures by one column."""
        return self.reports / "leaderboard.json"

    @property
    def promotion_record(self) -> Path:
        return self.reports / "promotion.json"

    @property
    def registry_lock(self) -> Path:
        """Serialises promotions and rollbacks on this machine."""
        return self.root / ".segpipe-registry.lock"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    @property
    def registry_record(self) -> Path:
        return self.reports / "registry.json"

    def model_dir(self, architecture: str, task: TaskName = "segment") -> Path:
        """``models/<architecture>`` for segmenters, ``models/denoise/<architecture>`` for denoisers."""
        return self.models / architecture if task == "segment" else self.models / task / architecture

    def checkpoint(self, architecture: str, task: TaskName = "segment") -> Path:
        """The best weights: ``model.safetensors`` beside its metadata ``model.json``."""
        return self.model_dir(architecture, task) / "model.safetensors"

    def curves(self, architecture: str, task: TaskName = "segment") -> Path:
        """Per-epoch training curves (a DVC plot): ``reports/curves/[<task>/]<architecture>.csv``."""
        folder = self.reports / "curves" if task == "segment" else self.reports / "curves" / task
        return folder / f"{architecture}.csv"

    def confusion_matrix(self, architecture: str) -> Path:
        """The test confusion matrix (rows: truth, columns: prediction) as CSV beside the scalar metrics."""
        return self.reports / "confusion" / f"{architecture}.csv"

    def training_states(self, architecture: str, task: TaskName = "segment") -> Path:
        """Resumable training states of an unfinished run (outside DVC's outputs, which a re-run deletes)."""
        return self.root / ".segpipe" / "resume" / task / architecture

    def run_record(self, architecture: str, task: TaskName = "segment") -> Path:
        return self.model_dir(architecture, task) / "run.json"

    def history(self, architecture: str, task: TaskName = "segment") -> Path:
        return self.model_dir(architecture, task) / "history.json"

    def metrics(self, architecture: str, task: TaskName = "segment") -> Path:
        """``reports/metrics/<architecture>.json``, or ``reports/metrics/denoise/<architecture>.json``."""
        folder = self.reports / "metrics" if task == "segment" else self.reports / "metrics" / task
        return folder / f"{architecture}.json"

    def prediction_grid(self, architecture: str) -> Path:
        """Test images | ground truth | prediction, for the first test images."""
        return self.plots / "predictions" / f"{architecture}.png"

    def denoise_examples(self, architecture: str) -> Path:
        return self.plots / "denoise" / f"{architecture}.png"

    @property
    def denoise_leaderboard_csv(self) -> Path:
        return self.reports / "leaderboard_denoise.csv"
