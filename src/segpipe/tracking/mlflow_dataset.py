"""A training run's dataset record (:mod:`segpipe.tracking.dataset`) as an MLflow dataset input."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import mlflow
import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag
from mlflow.types.schema import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from segpipe.tracking.dataset import TRAINING_CONTEXT


class PreparedDataset(MetaDataset):
    """Metadata of a prepared dataset: images and masks as its schema; split sizes and classes as its
    profile."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        height, width = record["image_size"] or (-1, -1)  # -1: images of several sizes
        schema = Schema(
            [
                TensorSpec(np.dtype("uint8"), (-1, height, width, 3), "image"),
                TensorSpec(np.dtype("uint8"), (-1, height, width), "mask"),
            ]
        )
        self._profile = {
            **{f"{split}_samples": int(count) for split, count in record["split_sizes"].items()},
            "num_classes": len(record["class_names"]),
            "class_names": list(record["class_names"]),
        }
        source = LocalArtifactDatasetSource(str(record["source"]))
        super().__init__(source, name=str(record["name"]), digest=str(record["digest"]), schema=schema)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def log_dataset_input(client: mlflow.MlflowClient, run_id: str, record: Mapping[str, Any]) -> None:
    """Log the record as the run's dataset input in the ``training`` context."""
    entity = PreparedDataset(record)._to_mlflow_entity()
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, TRAINING_CONTEXT)]
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])
