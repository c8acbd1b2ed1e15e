"""ONNX export: every architecture exports with dynamic batch, height and width, and onnxruntime gives the
logits torch gives, on prepared test images at a size other than the one exported with."""

from __future__ import annotations

import mlflow
import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from segpipe.cli import main
from segpipe.data.cache import load_split
from segpipe.models import available_architectures, build_model
from segpipe.registry.versions import ONNX_TAG, log_onnx
from segpipe.serving.logged import log_checkpoint_model
from segpipe.serving.onnx_export import OPSET, export_onnx
from segpipe.training.checkpoint import CheckpointMeta, save_checkpoint

CLASSES = 5


def padded_test_images(prepared, stride: int) -> np.ndarray:
    """The prepared test split as float32 (N, 3, H, W) in [0, 1], zero-padded to a multiple of ``stride``
    and to at least 2 strides (as ``segpipe predict`` pads)."""
    images = torch.from_numpy(np.array(load_split(prepared, "test").images)).permute(0, 3, 1, 2).float() / 255
    height, width = images.shape[-2:]
    padded_height, padded_width = (max(2 * stride, -(-side // stride) * stride) for side in (height, width))
    return F.pad(images, (0, padded_width - width, 0, padded_height - height)).numpy()


@pytest.mark.parametrize(
    ("architecture", "options"),
    [(name, {}) for name in available_architectures()]
    + [("segnet", {"upsample": "bed_of_nails"}), ("unet", {"upsample": "max_unpool"})],
)
def test_onnxruntime_matches_torch(architecture, options, prepared, tmp_path):
    torch.manual_seed(0)
    model = build_model(architecture, CLASSES, options=options).eval()
    path = export_onnx(model, architecture, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = padded_test_images(prepared, model.output_stride)
    for batch in (images[:1], images):  # batch 1 and 3, at the test images' (padded) size
        [logits] = session.run(None, {"images": batch})
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        assert logits.shape == expected.shape == (len(batch), CLASSES, *batch.shape[2:])
        assert np.abs(logits - expected).max() <= 1e-3
        assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.999


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    options = {"depth": 2, "base_channels": 4}
    path = tmp_path / "models" / "unet" / "model.safetensors"
    path.parent.mkdir(parents=True)
    meta = CheckpointMeta("unet", options, CLASSES, tuple("abcde"), (32, 32), 1, "val_miou", 0.5)
    save_checkpoint(path, build_model("unet", CLASSES, options=options), meta)
    return path


def test_cli_exports_a_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "--model", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    assert f"ONNX opset {OPSET}" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [logits] = session.run(None, {"images": np.zeros((2, 3, 40, 24), np.float32)})
    assert logits.shape == (2, CLASSES, 40, 24)
    assert main(["export", "--model", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.safetensors does not exist" in err and err.count("\n") == 1


def test_the_onnx_file_is_logged_with_the_registered_version(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("onnx"))
    model_uri = log_checkpoint_model(run.info.run_id, checkpoint, 3)
    version = mlflow.register_model(model_uri, "segpipe-onnx").version
    onnx_uri = log_onnx(client, "segpipe-onnx", str(version), run.info.run_id, model_uri)
    assert client.get_model_version("segpipe-onnx", version).tags[ONNX_TAG] == onnx_uri
    local = mlflow.artifacts.download_artifacts(onnx_uri, dst_path=str(tmp_path / "download"))
    session = onnxruntime.InferenceSession(local, providers=["CPUExecutionProvider"])
    [logits] = session.run(None, {"images": np.zeros((1, 3, 16, 16), np.float32)})
    assert logits.shape == (1, CLASSES, 16, 16)
