"""The committed results of the default run (reports/, dvc.lock) are complete, small and consistent."""

import json
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"


def test_committed_leaderboard_beats_majority_class():
    """The best model is far above the majority-class predictor, and no model is broken: each one is at
    least at the majority level or finds every class.

    FCN-32s sees the 64x64 image through a 2x2 map; under the class-balanced default loss it paints the small
    classes at the cost of the background and lands below the majority level while finding every class
    (README, "Current results"). A broken model (a constant class, say) does neither and fails here.
    """
    board = pd.read_csv(REPORTS / "leaderboard.csv")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    models = board[board["family"] != "reference"]
    majority = float(board.loc[board["architecture"] == "majority_class", "test_miou"].iloc[0])
    assert set(models["architecture"]) == set(params["train"]["architectures"])
    assert {"builtin", "smp"} <= set(models["family"])
    assert models["test_miou"].max() >= 2 * majority, board[["architecture", "test_miou"]]
    for name, miou in zip(models["architecture"], models["test_miou"], strict=True):
        metrics = json.loads((REPORTS / "metrics" / f"{name}.json").read_text())
        per_class = [value for key, value in metrics.items() if key.startswith("test_iou_")]
        assert per_class, f"{name}: no per-class IoU in its metrics"
        assert miou >= majority - 0.01 or min(per_class) > 0.01, (name, miou, per_class)


def test_default_run_trains_the_whole_zoo():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    from segpipe.models import available_architectures

    assert set(params["train"]["architectures"]) == set(available_architectures())
    markdown = (REPORTS / "leaderboard.md").read_text()
    table, per_class = markdown.split("## Per-class IoU")[0], markdown.split("## Per-class IoU")[1]
    for name in available_architectures():
        assert f"| {name} |" in table and f"| {name} |" in per_class.split("## Denoising")[0]


def test_committed_denoisers_beat_their_corrupted_input():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    board = pd.read_csv(REPORTS / "leaderboard_denoise.csv")
    reference = board[board["architecture"] == "corrupted_input"].iloc[0]
    models = board[board["family"] != "reference"]
    assert set(models["architecture"]) == set(params["denoise"]["architectures"]) and len(models) >= 1
    assert (models["test_psnr"] > reference["test_psnr"] + 1).all(), board[["architecture", "test_psnr"]]
    assert (models["test_ssim"] > reference["test_ssim"]).all(), board[["architecture", "test_ssim"]]
    for name in models["architecture"]:
        assert (REPORTS / "plots" / "denoise" / f"{name}.png").is_file()
    assert "## Denoising" in (REPORTS / "leaderboard.md").read_text()


def test_committed_registry_record_points_at_the_best_model():
    board = pd.read_csv(REPORTS / "leaderboard.csv")
    record = json.loads((REPORTS / "registry.json").read_text())
    best = board[board["family"] != "reference"].iloc[0]
    assert record["alias"] == "challenger" and record["name"] == "segpipe-synthetic"
    assert record["architecture"] == best["architecture"]
    tracked = json.loads((REPORTS / "tracking.json").read_text())
    assert record["run_id"] == next(
        run["run_id"]
        for run in tracked["runs"]
        if run["architecture"] == best["architecture"] and run["task"] == "segment"
    )


def test_committed_metrics_are_scalars_beside_confusion_matrices_and_curves():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in params["train"]["architectures"]:
        metrics = json.loads((REPORTS / "metrics" / f"{name}.json").read_text())
        assert not [key for key, value in metrics.items() if isinstance(value, (list, dict))], name
        confusion = pd.read_csv(REPORTS / "confusion" / f"{name}.csv", index_col=0)
        assert list(confusion.index) == list(confusion.columns), name
        assert {f"test_iou_{label}" for label in confusion.columns} <= set(metrics), name
        curves = pd.read_csv(REPORTS / "curves" / f"{name}.csv")
        assert list(curves["epoch"]) == list(range(1, params["train"]["epochs"] + 1)), name
    for name in params["denoise"]["architectures"]:
        curves = pd.read_csv(REPORTS / "curves" / "denoise" / f"{name}.csv")
        assert len(curves) == params["denoise"]["epochs"] and "val_psnr" in curves.columns, name


def test_committed_outputs_are_small_and_locked():
    assert json.loads((REPORTS / "validation/summary.json").read_text())["success"] is True
    for path in REPORTS.rglob("*"):
        if path.is_file():
            assert path.stat().st_size < 1_000_000, path
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    assert {"prepare", "validate", "compare", "track", "register"} <= set(lock["stages"])
