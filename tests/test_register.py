"""With tracking switched off the track and register stages end the pipeline normally and say why nothing was
sent or registered; the model card lists what a metrics record holds."""

from pathlib import Path

from segpipe import io
from segpipe.config import parse_params
from segpipe.paths import ProjectPaths
from segpipe.registry.versions import model_card
from segpipe.stages.register import run_register
from segpipe.stages.track import run_track, tracking_record


def test_register_without_tracking_records_the_best_model_and_registers_nothing(tmp_path: Path, capsys):
    paths = ProjectPaths(tmp_path)
    io.write_text(
        paths.leaderboard_csv,
        "rank,architecture,family,test_miou\n1,majority_class,reference,0.9\n"
        "2,fcn8s,seed,0.40\n3,unet,seed,0.31\n",
    )
    params = parse_params({"tracking": {"enabled": False}})
    assert run_register(params, paths) is None
    record = io.read_json(paths.registry_record)
    assert record["registered"] is False and record["architecture"] == "fcn8s" and record["value"] == 0.40
    assert "tracking.enabled is false" in record["reason"] and "fcn8s" in capsys.readouterr().out


def test_model_card_lists_each_class_iou_of_a_metrics_record():
    record = {
        "architecture": "unet",
        "family": "builtin",
        "dataset": "synthetic",
        "best_epoch": 3,
        "device": "cpu",
        "test_miou": 0.5,
        "test_dice": 0.6,
        "test_pixel_acc": 0.9,
        "test_mean_class_acc": 0.55,
        "params_m": 1.25,
        "infer_img_per_s": 80.0,
        "test_iou_road": 0.75,
        "test_iou_sky": None,
    }
    card = model_card(record, "test_miou")
    assert "| test_miou | 0.5000 |" in card
    assert "| road | 0.7500 |" in card and "| sky | n/a |" in card


def test_track_without_tracking_records_that_no_run_was_sent(tmp_path: Path, capsys):
    paths = ProjectPaths(tmp_path)
    io.write_json(paths.metrics("unet"), {"architecture": "unet", "task": "segment", "test_miou": 0.3})
    params = parse_params(
        {
            "train": {"architectures": ["unet"]},
            "denoise": {"architectures": []},
            "tracking": {"enabled": False},
        }
    )
    run_track(params, paths)
    assert io.read_json(tracking_record(paths)) == {"enabled": False, "runs": []}
    assert "nothing sent to MLflow" in capsys.readouterr().out
