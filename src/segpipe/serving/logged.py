"""Log a checkpoint as an MLflow model, and check and load logged models without MLflow's loaders.

A logged model is MLflow's "models from code" pyfunc: :mod:`segpipe.serving.model_code` (which MLflow imports
to serve it) and the checkpoint pair as artifacts. segpipe itself never runs a logged model's code: it checks
that the folder holds exactly that layout and rebuilds the network from the safetensors and JSON."""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import mlflow.utils.requirements_utils as mlflow_requirements
import numpy as np
import torch
import yaml
from mlflow.models import Model, ModelSignature
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.types import Schema, TensorSpec
from torch import nn

from segpipe.serving import model_code
from segpipe.serving.pyfunc import CHECKPOINT_ARTIFACT, WEIGHTS_FILE
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint, meta_path

#: What a logged model needs, pinned to the versions installed here (what it was trained and checked with).
MODEL_PIP_REQUIREMENTS = [
    f"{package}=={importlib.metadata.version(package).split('+')[0]}"
    for package in ("torch", "torchvision", "segmentation-models-pytorch", "numpy", "safetensors")
]
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
CODE_FILE = Path(model_code.__file__).name
MLMODEL_FILES = frozenset(
    {
        "MLmodel",
        "conda.yaml",
        "python_env.yaml",
        "requirements.txt",
        "input_example.json",
        "serving_input_example.json",
        "registered_model_meta",
        CODE_FILE,
    }
)
"""Files MLflow writes beside the artifacts of a segpipe model; anything else in the folder is refused."""
CHECKPOINT_FILE = f"artifacts/{CHECKPOINT_ARTIFACT}/{WEIGHTS_FILE}"
CHECKPOINT_FILES = frozenset({CHECKPOINT_FILE, meta_path(Path(CHECKPOINT_FILE)).as_posix()})


class UnsafeModel(ValueError):
    """A logged model whose loading would unpickle or run code that is not segpipe's own."""


def signature(channels: int, classes: int) -> ModelSignature:
    """Float32 ``(-1, channels, -1, -1)`` in, logits ``(-1, classes, -1, -1)`` out: any batch and size."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes, -1, -1))]),
    )


def log_checkpoint_model(run_id: str, checkpoint: Path, channels: int) -> str:
    """Log ``checkpoint`` (``model.safetensors`` + ``model.json``, checked by loading it) as run ``run_id``'s
    model "model", taking ``channels``-channel images; return its URI."""
    _, meta = load_checkpoint(checkpoint)
    # the logged model belongs to the run's experiment (MLflow takes the active one, else "Default")
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory() as folder:
        pair = Path(folder) / CHECKPOINT_ARTIFACT
        pair.mkdir()
        shutil.copy2(checkpoint, pair / WEIGHTS_FILE)
        shutil.copy2(meta_path(checkpoint), meta_path(pair / WEIGHTS_FILE))
        with _installed_requirements_trusted(), warnings.catch_warnings():
            # the signature says all an example would: logging one costs a model load and predict per run
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = Model.log(
                artifact_path=None,
                name="model",
                flavor=mlflow.pyfunc,
                python_model=model_code.__file__,
                artifacts={CHECKPOINT_ARTIFACT: str(pair)},
                code_paths=None,
                pip_requirements=MODEL_PIP_REQUIREMENTS,
                signature=signature(channels, meta.num_classes),
                run_id=run_id,
            )
    return info.model_uri


@contextmanager
def _installed_requirements_trusted() -> Iterator[None]:
    """Skip MLflow's check that this environment satisfies the model's requirements: they are read from this
    environment (:data:`MODEL_PIP_REQUIREMENTS`), and the check maps every installed distribution to its
    modules, 1.0 s of each train stage's 2.7 s tracking cost (measured)."""
    original = mlflow_requirements._check_requirement_satisfied
    mlflow_requirements._check_requirement_satisfied = lambda requirement: None  # None: "satisfied"
    try:
        yield
    finally:
        mlflow_requirements._check_requirement_satisfied = original


def check_model_folder(folder: Path, label: str) -> Path:
    """The checkpoint in a local MLflow model ``folder``, after checking that it is a segpipe model whose
    loading unpickles nothing; :class:`UnsafeModel` naming ``label`` and the reason otherwise."""
    files = sorted(p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())
    linked = [path for path in files if path.is_symlink()]
    if linked:
        raise UnsafeModel(f"{label}: refused, {linked[0]} is a symbolic link; a segpipe model holds none")
    _check_files([path.relative_to(folder).as_posix() for path in files], label)
    mlmodel = folder / "MLmodel"
    text = mlmodel.read_text(encoding="utf-8", errors="replace") if mlmodel.is_file() else None
    _check_mlmodel(text, label)
    return folder / CHECKPOINT_FILE


def check_logged_model(uri: str, label: str) -> None:
    """:func:`check_model_folder` for the MLflow model at ``uri``, from its file list and ``MLmodel`` alone
    (nothing else is downloaded)."""
    repository = get_artifact_repository(uri)
    files = _remote_files(repository)
    _check_files(files, label)
    with tempfile.TemporaryDirectory() as folder:
        mlmodel = Path(repository.download_artifacts("MLmodel", folder)) if "MLmodel" in files else None
        _check_mlmodel(mlmodel.read_text(encoding="utf-8", errors="replace") if mlmodel else None, label)


def _remote_files(repository: ArtifactRepository, folder: str | None = None) -> list[str]:
    """The paths of the files in ``repository`` (under ``folder``), sub-folders included."""
    files = []
    for entry in repository.list_artifacts(folder):
        files += _remote_files(repository, entry.path) if entry.is_dir else [entry.path]
    return files


def _check_files(files: list[str], label: str) -> None:
    """UnsafeModel for the first file that is not part of a segpipe model."""
    for relative in files:
        if relative not in MLMODEL_FILES and relative not in CHECKPOINT_FILES:
            raise UnsafeModel(
                f"{label}: refused, it holds {relative}, which is not part of a segpipe model (MLmodel, "
                f"{CODE_FILE} and the safetensors + JSON checkpoint) and may need unpickling; re-log the "
                f"model from its checkpoint"
            )
    if CHECKPOINT_FILE not in files:
        raise UnsafeModel(f"{label}: refused, it holds no {CHECKPOINT_FILE}: it is not a segpipe model")


def _check_mlmodel(text: str | None, label: str) -> None:
    if text is None:
        raise UnsafeModel(f"{label}: refused, it has no MLmodel file: it is not an MLflow model")
    try:
        flavors = dict(yaml.safe_load(text)["flavors"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise UnsafeModel(f"{label}: refused, its MLmodel is not valid ({error})") from None
    _check_flavors(flavors, label)


def _check_flavors(flavors: dict[str, object], label: str) -> None:
    """UnsafeModel unless the only flavour is a pyfunc of segpipe's model code (no pickled python model)."""
    others = sorted(set(flavors) - {"python_function"})
    if others:
        raise UnsafeModel(
            f"{label}: refused, it is logged with the {', '.join(others)} flavour, whose loading unpickles "
            f"the model; re-log it with a current segpipe (safetensors + JSON)"
        )
    pyfunc = flavors.get("python_function")
    if not isinstance(pyfunc, dict) or pyfunc.get("loader_module") != CODE_LOADER or "python_model" in pyfunc:
        raise UnsafeModel(
            f"{label}: refused, its python_function flavour is not segpipe's model code (a pickled "
            f"python model or another loader); re-log it with a current segpipe (safetensors + JSON)"
        )
    if Path(str(pyfunc.get("model_code_path", ""))).name != CODE_FILE:
        raise UnsafeModel(f"{label}: refused, its model code is not segpipe's {CODE_FILE}")


def model_label(uri: str) -> str:
    """How errors name the model at ``uri``: the registered version where ``uri`` names one."""
    if not uri.startswith("models:/"):
        return uri
    name, _, rest = uri.removeprefix("models:/").partition("/")
    name, _, alias = name.partition("@")
    try:
        client = mlflow.MlflowClient()
        version = client.get_model_version_by_alias(name, alias).version if alias else rest
    except mlflow.exceptions.MlflowException:
        return uri
    return f"version {version} of {name} ({uri})" if version else uri


def load_logged_model(uri: str, device: torch.device | str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """The model at MLflow URI ``uri`` (``models:/...``, ``runs:/...``) or in a local MLflow model folder,
    checked (:func:`check_model_folder`) and rebuilt from its checkpoint: nothing in it is unpickled or
    run."""
    with model_checkpoint(uri) as checkpoint:
        return load_checkpoint(checkpoint, device)


@contextmanager
def model_checkpoint(model: str | Path) -> Iterator[Path]:
    """The checkpoint (``model.safetensors``) of ``model``: a checkpoint file itself, a local MLflow model
    folder, or an MLflow URI downloaded to a temporary folder (removed on exit). MLflow models are checked
    (:func:`check_model_folder`) before the path is given out; nothing is loaded."""
    if Path(model).is_file():
        yield Path(model)
    elif Path(model).is_dir():
        yield check_model_folder(Path(model), str(model))
    else:
        label = model_label(str(model))
        check_logged_model(str(model), label)  # before a byte of the weights is downloaded
        with tempfile.TemporaryDirectory() as folder:
            local = mlflow.artifacts.download_artifacts(artifact_uri=str(model), dst_path=folder)
            yield check_model_folder(Path(local), label)
