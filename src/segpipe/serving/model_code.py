"""The file MLflow logs as a segpipe model's code ("models from code"): nothing of the model is pickled."""

import mlflow.models

from segpipe.serving.pyfunc import SegmentationPyfunc

mlflow.models.set_model(SegmentationPyfunc())
