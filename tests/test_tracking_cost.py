"""The tracking-cost benchmark's parts: the two copies' params, the training-epoch seconds, the report."""

import json

import yaml

from benchmarks.tracking_cost import clone, markdown, summary, training_seconds


def test_copies_differ_only_in_tracking_and_take_overrides(tmp_path):
    on = clone(tmp_path / "on", True, ["tracking.live=true", "train.epochs=1"])
    off = clone(tmp_path / "off", False, ["tracking.live=true", "train.epochs=1"])
    params_on, params_off = (yaml.safe_load((path / "params.yaml").read_text()) for path in (on, off))
    assert params_on["tracking"]["enabled"] is True and params_off["tracking"]["enabled"] is False
    assert params_on["tracking"]["live"] is True and params_on["train"]["epochs"] == 1
    params_off["tracking"]["enabled"] = True
    assert params_off == params_on
    assert (on / "dvc.yaml").is_file() and (on / "src" / "segpipe").is_dir()


def test_training_seconds_sum_every_models_epochs(tmp_path):
    for name, seconds in (("unet", [1.5, 2.0]), ("denoise/autoencoder", [3.0])):
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "history.json").write_text(json.dumps({"epochs": [{"seconds": s} for s in seconds]}))
    assert training_seconds(tmp_path) == 6.5


def test_report_states_the_added_percentages():
    off = [
        {"wall_s": 100.0, "cpu_s": 180.0, "epochs_s": 80.0, "outside_epochs_s": 20.0},
        {"wall_s": 110.0, "cpu_s": 190.0, "epochs_s": 88.0, "outside_epochs_s": 22.0},
    ]
    on = [
        {"wall_s": 104.0, "cpu_s": 185.0, "epochs_s": 81.0, "outside_epochs_s": 23.0},
        {"wall_s": 112.0, "cpu_s": 193.0, "epochs_s": 87.0, "outside_epochs_s": 25.0},
    ]
    assert summary(off) == {"wall_s": 105.0, "cpu_s": 185.0, "epochs_s": 84.0, "outside_epochs_s": 21.0}
    report = {
        "machine": "x86_64, 2 cores",
        "torch": "2",
        "rounds": 2,
        "tracking": {"enabled": True},
        "runs": {"off": off, "on": on},
        "median": {"off": summary(off), "on": summary(on)},
        "added": {
            "wall_s": 3.0,
            "wall_pct": 2.86,
            "cpu_pct": 2.16,
            "outside_epochs_s": 3.0,
            "outside_epochs_pct": 2.86,
        },
    }
    text = markdown(report)
    assert "| off 2 | 110.0 | 190.0 | 88.0 | 22.0 |" in text and "| **median on** | 108.0 |" in text
    assert "**+2.9 %** wall time (+3.0 s)" in text
