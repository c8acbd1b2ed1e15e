"""The committed results of the default run (reports/, dvc.lock) are complete, small and consistent."""

import json
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"


def test_committed_leaderboard_beats_majority_class_by_far():
    board = pd.read_csv(REPORTS / "leaderboard.csv")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    models = board[board["family"] != "reference"]
    majority = float(board.loc[board["architecture"] == "majority_class", "test_miou"].iloc[0])
    assert set(models["architecture"]) == set(params["train"]["architectures"])
    assert {"seed", "baseline"} <= set(models["family"])
    assert (models["test_miou"] >= 2 * majority).all(), board[["architecture", "test_miou"]]


def test_committed_registry_record_points_at_the_best_model():
    board = pd.read_csv(REPORTS / "leaderboard.csv")
    record = json.loads((REPORTS / "registry.json").read_text())
    best = board[board["family"] != "reference"].iloc[0]
    assert record["alias"] == "challenger" and record["name"] == "segpipe-synthetic"
    assert record["architecture"] == best["architecture"]


def test_committed_outputs_are_small_and_locked():
    assert json.loads((REPORTS / "validation/summary.json").read_text())["success"] is True
    for path in REPORTS.rglob("*"):
        if path.is_file():
            assert path.stat().st_size < 1_000_000, path
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    assert {"prepare", "validate", "compare", "register"} <= set(lock["stages"])
