"""The training-speed benchmark runs end to end on a tiny setting and writes its reports, one row per
architecture and precision and the bf16-against-fp32 table (figures are not asserted); so does the CamVid
precision-quality comparison (where ``SEGPIPE_CAMVID`` names a CamVid folder)."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmarks import camvid_recipe, precision_quality
from benchmarks.training_speed import main

ROOT = Path(__file__).resolve().parents[1]

CAMVID = os.environ.get("SEGPIPE_CAMVID")


def test_benchmark_writes_training_inference_and_data_path_figures_per_precision(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    main(
        [
            "--architectures",
            "unet",
            "dilated",
            "--image-size",
            "32",
            "32",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--rounds",
            "1",
            "--latency-runs",
            "3",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ]
    )
    frame = pd.read_csv(tmp_path / "benchmark.csv")
    assert list(zip(frame["architecture"], frame["precision"], frame["memory_format"], strict=True)) == [
        ("unet", "fp32", "contiguous"),
        ("unet", "bf16", "channels_last"),
        ("dilated", "fp32", "contiguous"),
        ("dilated", "bf16", "channels_last"),
    ]
    for column in (
        "train_img_per_s_segpipe",
        "train_img_per_s_bare",
        "ratio",
        "infer_latency_ms_median",
        "infer_latency_ms_p95",
        "infer_img_per_s_b16",
        "peak_memory_mb",
        "params_m",
        "gflops",
    ):
        assert (frame[column] > 0).all(), column
    assert (frame["infer_latency_ms_p95"] >= frame["infer_latency_ms_median"]).all()
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["environment"]["threads"] >= 1 and report["data_path"]["loader_albumentations"] > 0
    comparison = pd.DataFrame(report["bf16_vs_fp32"])
    assert list(comparison["architecture"]) == ["unet", "dilated"]
    assert (comparison[["train_speedup", "infer_speedup"]] > 0).all().all()
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "| unet | bf16 | channels_last |" in markdown and "bf16 against fp32" in markdown


def test_one_precision_writes_no_comparison(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    main(
        [
            "--architectures",
            "dilated",
            "--image-size",
            "32",
            "32",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--latency-runs",
            "1",
            "--device",
            "cpu",
            "--precisions",
            "fp32",
            "--out",
            str(tmp_path),
        ]
    )
    assert list(pd.read_csv(tmp_path / "benchmark.csv")["precision"]) == ["fp32"]
    assert json.loads((tmp_path / "benchmark.json").read_text())["bf16_vs_fp32"] == []
    assert "bf16 against fp32" not in (tmp_path / "benchmark.md").read_text()


@pytest.mark.skipif(
    not CAMVID or not Path(CAMVID).is_dir(), reason="set SEGPIPE_CAMVID to a CamVid folder to run it"
)
def test_precision_quality_scores_both_precisions_per_class_and_their_agreement_per_seed(tmp_path):
    precision_quality.main(
        [
            "--architectures",
            "unet",
            "--seeds",
            "42",
            "7",
            "--epochs",
            "1",
            "--max-per-split",
            "4",
            "--image-size",
            "64",
            "96",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "precision_quality.json").read_text())
    assert report["settings"]["split_sizes"] == {"train": 4, "val": 4, "test": 4}
    runs = [(model["architecture"], model["seed"]) for model in report["models"]]
    assert runs == [("unet", 42), ("unet", 7)]
    for model in report["models"]:
        for precision, memory_format in (("fp32", "contiguous"), ("bf16", "channels_last")):
            assert list(model[precision]["per_class_iou"]) == report["class_names"]
            assert model[precision]["memory_format"] == memory_format
            assert 0 <= model[precision]["test_miou"] <= 1
        assert 0.5 < model["bf16_eval_agreement"]["labelled_pixels"] <= 1
    first, second = report["models"]
    assert first["fp32"]["per_class_iou"] != second["fp32"]["per_class_iou"]  # the seed reaches the training
    text = (tmp_path / "precision_quality.md").read_text()
    assert "| unet | 42 |" in text and "| unet | 7 |" in text


def test_the_camvid_ablation_adds_up_to_the_recipe_and_the_alternatives_change_one_setting():
    recipe = yaml.safe_load((ROOT / "recipes" / "camvid.yaml").read_text())
    rows = camvid_recipe.ablation_rows(recipe)
    settings = camvid_recipe.merged({}, *(overlay for _, overlay in rows))
    assert settings["train"]["architectures"] == recipe["train"]["architectures"][:1]
    for key in ("precision", "loss", "warmup_epochs"):
        assert settings["train"][key] == recipe["train"][key]
    assert settings["evaluate"]["tta"] == recipe["evaluate"]["tta"]
    assert rows[0][1]["train"]["architectures"] == ["smp_unet"]  # the plain loop's model
    alternatives = dict(camvid_recipe.alternative_rows(recipe))
    others = recipe["train"]["architectures"][1:]
    assert [alternatives[f"recipe with {name}"]["train"]["architectures"] for name in others] == [
        [n] for n in others
    ]
    assert alternatives["recipe at native resolution, 192x256 crops"]["prepare"]["image_size"] is None
