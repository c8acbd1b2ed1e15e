"""Where each stage reads and writes, relative to the project root (mirrors dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    def plots(self) -> Path:
        return self.reports / "plots"

    @property
    def registry_record(self) -> Path:
        return self.reports / "registry.json"

    def model_dir(self, architecture: str) -> Path:
        return self.models / architecture

    def checkpoint(self, architecture: str) -> Path:
        return self.model_dir(architecture) / "model.pt"

    def run_record(self, architecture: str) -> Path:
        return self.model_dir(architecture) / "run.json"

    def history(self, architecture: str) -> Path:
        return self.model_dir(architecture) / "history.json"

    def metrics(self, architecture: str) -> Path:
        return self.reports / "metrics" / f"{architecture}.json"
