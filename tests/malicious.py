"""A model version whose loading would run code: its pickle creates a file when it is unpickled."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np


class FileCreatingModel(mlflow.pyfunc.PythonModel):
    """Pickles to "call ``open(marker, 'w')``": unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return model_input


def register_file_creating_version(name: str, marker: Path) -> str:
    """Log a cloudpickled python model (``python_model.pkl``) that creates ``marker`` when loaded, register it
    as a new version of ``name`` with alias ``challenger``; return the version."""
    with mlflow.start_run():
        model = FileCreatingModel(marker)
        info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=[])
    version = mlflow.register_model(info.model_uri, name).version
    mlflow.MlflowClient().set_registered_model_alias(name, "challenger", version)
    assert not marker.exists(), "logging must not have loaded the model"
    return str(version)
