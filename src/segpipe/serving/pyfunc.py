"""The MLflow pyfunc model of a segpipe checkpoint: the network rebuilt from code and safetensors + JSON."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch

from segpipe.training.checkpoint import load_checkpoint

CHECKPOINT_ARTIFACT = "checkpoint"
"""The logged checkpoint folder (``model.safetensors`` + ``model.json``) in a model's artifacts."""
WEIGHTS_FILE = "model.safetensors"


class SegmentationPyfunc(mlflow.pyfunc.PythonModel):
    """``predict``: float32 images ``(N, C, H, W)`` scaled to [0, 1] -> logits ``(N, classes, H, W)``; H and W
    any multiple of the model's output stride."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        folder = Path(context.artifacts[CHECKPOINT_ARTIFACT])
        self.model, self.meta = load_checkpoint(folder / WEIGHTS_FILE, "cpu")

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> np.ndarray:
        images = np.asarray(model_input, dtype=np.float32)
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(images))).numpy()
