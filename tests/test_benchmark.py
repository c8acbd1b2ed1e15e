"""The benchmark script runs end to end on a tiny setting and writes its reports (figures are not asserted)."""

import json

import pandas as pd

from pipelines.benchmark import main


def test_benchmark_writes_training_inference_and_data_path_figures(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    main(["--architectures", "unet", "dilated", "--image-size", "32", "32", "--batch-size", "2", "--steps", "2", "--rounds", "1",
          "--latency-runs", "3", "--out", str(tmp_path)])
    frame = pd.read_csv(tmp_path / "benchmark.csv")
    assert list(frame["architecture"]) == ["unet", "dilated"]
    for column in ("train_img_per_s_segpipe", "train_img_per_s_bare", "ratio", "infer_latency_ms_median",
                   "infer_latency_ms_p95", "infer_img_per_s_b16", "peak_memory_mb", "params_m", "gflops"):
        assert (frame[column] > 0).all(), column
    assert (frame["infer_latency_ms_p95"] >= frame["infer_latency_ms_median"]).all()
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["environment"]["threads"] >= 1 and report["data_path"]["loader_albumentations"] > 0
    assert "| unet |" in (tmp_path / "benchmark.md").read_text()
