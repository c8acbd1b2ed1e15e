"""Registered models without pickles: the MLflow pyfunc model, its checks and loading, and ONNX export."""

import os

PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


def disallow_pickle_loading() -> None:
    """Make MLflow in this process refuse to unpickle models, so a pickle that slips past segpipe's own checks
    is refused there too."""
    os.environ[PICKLE_SWITCH] = "false"
