"""Champion / challenger promotion with a statistical gate, rollback, and a registry listing.

The challenger replaces the champion only if, on the same test images, its mIoU is higher by at least
``min_delta`` and a paired bootstrap over the test images puts the lower end of the 95 % interval of
the difference above zero. Decisions are serialised by a lock file, recorded as registry tags and
written to ``reports/promotion.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segpipe import io
from segpipe.config import Params
from segpipe.data.cache import load_split
from segpipe.data.loader import Loader, make_loader
from segpipe.data.manifest import DatasetInfo, class_pixel_columns, read_manifest
from segpipe.inference import WHOLE, InferenceSettings, predict_logits
from segpipe.metrics import constant_prediction_confusion
from segpipe.paths import ProjectPaths
from segpipe.registry.versions import registered_model_name
from segpipe.remote.evidence import EVIDENCE_TAG, IMPLAUSIBLE
from segpipe.training.device import ComputeMode

CHAMPION = "champion"
HISTORY_TAG = "segpipe.champion_history"


@torch.no_grad()
def per_image_confusions(
    model: nn.Module,
    loader: Loader,
    num_classes: int,
    ignore_index: int,
    mode: ComputeMode | None = None,
    inference: InferenceSettings = WHOLE,
) -> np.ndarray:
    """``[N, C, C]`` confusion matrix of every test image (rows: truth, columns: prediction), predicted as the
    evaluate stage does: in ``mode``'s precision and memory format (default fp32), under ``inference``."""
    mode = mode or ComputeMode(loader.device)
    mode.prepare(model)
    model.eval()
    matrices = []
    for images, masks in loader:
        with mode.autocast():
            prediction = predict_logits(model, mode.inputs(images), inference).argmax(1)
        valid = masks != ignore_index
        index = masks * num_classes + prediction
        index = torch.where(valid, index, num_classes * num_classes)  # one overflow bin for ignored pixels
        offsets = torch.arange(len(images), device=index.device)[:, None] * (num_classes * num_classes + 1)
        counts = torch.bincount(
            (index.flatten(1) + offsets).flatten(), minlength=len(images) * (num_classes**2 + 1)
        )
        matrices.append(counts.view(len(images), -1)[:, :-1].view(-1, num_classes, num_classes).cpu())
    return torch.cat(matrices).numpy()


def miou_of(confusions: np.ndarray) -> np.ndarray:
    """mIoU of each ``[..., C, C]`` matrix; classes absent from truth and prediction are left out."""
    tp = np.diagonal(confusions, axis1=-2, axis2=-1).astype(np.float64)
    union = confusions.sum(-1) + confusions.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return np.nanmean(iou, axis=-1)


@dataclass(frozen=True)
class PairedComparison:
    challenger_miou: float
    champion_miou: float
    delta: float
    ci_low: float
    ci_high: float
    images: int
    resamples: int


def paired_bootstrap(
    challenger: np.ndarray, champion: np.ndarray, resamples: int, seed: int
) -> PairedComparison:
    """95 % interval of mIoU(challenger) - mIoU(champion) over test images resampled with replacement
    (paired)."""
    if challenger.shape != champion.shape:
        raise ValueError(f"paired comparison needs the same images: {challenger.shape} vs {champion.shape}")
    count = len(challenger)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(count, np.full(count, 1.0 / count), size=resamples).astype(np.float64)  # [B, N]
    flat_challenger, flat_champion = challenger.reshape(count, -1), champion.reshape(count, -1)
    shape = (resamples, *challenger.shape[1:])
    differences = miou_of((weights @ flat_challenger).reshape(shape)) - miou_of(
        (weights @ flat_champion).reshape(shape)
    )
    low, high = np.quantile(differences, [0.025, 0.975])
    full_challenger, full_champion = miou_of(challenger.sum(0)), miou_of(champion.sum(0))
    return PairedComparison(
        float(full_challenger),
        float(full_champion),
        float(full_challenger - full_champion),
        float(low),
        float(high),
        count,
        resamples,
    )


@dataclass(frozen=True)
class PromotionDecision:
    """What ``promote`` decided and why; written to ``reports/promotion.json`` and as registry tags."""

    model: str
    promoted: bool
    reason: str
    challenger_version: str
    challenger_device: str
    champion_version: str | None
    baseline: str
    comparison: PairedComparison | None
    min_delta: float
    require_gpu: bool
    data_hash: str
    decided_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def registry_lock(lock_path: Path, timeout_s: float = 300.0) -> Iterator[None]:
    """Exclusive lock so that concurrent promotions on this machine are decided one after the other."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{lock_path} is held by another promotion for over {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _client(params: Params):
    import mlflow

    from segpipe.tracking.mlflow_tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(params.tracking))
    return mlflow.MlflowClient()


def _alias_or_none(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _history(client, name: str) -> list[str]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def load_registered(name: str, version: str, device: torch.device) -> nn.Module:
    """Version ``version`` of ``name``, rebuilt from its safetensors + JSON; a version that would need
    unpickling is refused (:class:`~segpipe.serving.logged.UnsafeModel`) before anything in it is read."""
    from segpipe.serving.logged import load_logged_model

    return load_logged_model(f"models:/{name}/{version}", device)[0]


def majority_confusions(paths: ProjectPaths, info: DatasetInfo, masks: Iterable[np.ndarray]) -> np.ndarray:
    """Per-image confusion matrices of predicting the train split's most frequent class everywhere (``masks``
    one by one, in test order)."""
    manifest = read_manifest(paths.prepared)
    columns = class_pixel_columns(info.num_classes)
    majority = int(np.argmax(manifest.loc[manifest["split"] == "train", columns].sum().to_numpy()))
    counts = [
        np.bincount(mask[mask != info.ignore_index].ravel(), minlength=info.num_classes) for mask in masks
    ]
    return np.stack([constant_prediction_confusion(c[: info.num_classes], majority) for c in counts])


def prepared_data_hash(paths: ProjectPaths) -> str:
    from segpipe.data.decode import file_digest

    return file_digest(paths.prepared / "manifest.csv")


def promote(params: Params, paths: ProjectPaths) -> PromotionDecision:
    """Move ``champion`` to the ``register.alias`` version if it passes the gates (see module docstring)."""
    settings = params.promote
    info = DatasetInfo.load(paths.prepared)
    name = registered_model_name(info.name)
    client = _client(params)
    challenger_alias = params.register_.alias
    with registry_lock(paths.registry_lock):
        challenger = _alias_or_none(client, name, challenger_alias)
        if challenger is None:
            raise ValueError(
                f"registered model {name} has no @{challenger_alias} version: run the register stage first"
            )
        champion = _alias_or_none(client, name, CHAMPION)
        run_tags = client.get_run(challenger.run_id).data.tags
        device_used = run_tags.get("device", "unknown")
        comparison, baseline = None, "majority_class" if champion is None else f"version {champion.version}"
        if champion is not None and champion.version == challenger.version:
            promoted, reason = False, f"version {challenger.version} already is the champion"
        elif settings.require_gpu and not device_used.startswith("cuda"):
            promoted = False
            reason = f"trained on {device_used}; promote.require_gpu allows only CUDA-trained champions"
        elif settings.require_gpu and run_tags.get(EVIDENCE_TAG, "").startswith(IMPLAUSIBLE):
            promoted = False
            reason = (
                f"its run's device tag ({device_used}) is contradicted by its timing "
                f"({run_tags[EVIDENCE_TAG]}); promote.require_gpu needs evidence of CUDA training: "
                "re-run the training on a GPU"
            )
        else:
            comparison = _compare_on_test(params, paths, info, name, challenger.version, champion)
            promoted, reason = _verdict(comparison, settings.min_delta, baseline)
        if promoted:
            _crown(client, name, challenger.version, champion)
        decision = PromotionDecision(
            model=name,
            promoted=promoted,
            reason=reason,
            challenger_version=str(challenger.version),
            challenger_device=device_used,
            champion_version=None if champion is None else str(champion.version),
            baseline=baseline,
            comparison=comparison,
            min_delta=settings.min_delta,
            require_gpu=settings.require_gpu,
            data_hash=prepared_data_hash(paths),
            decided_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        _record(client, paths, decision)
    return decision


def _compare_on_test(
    params: Params, paths: ProjectPaths, info: DatasetInfo, name: str, challenger: str, champion: Any
) -> PairedComparison:
    """Paired bootstrap of the challenger against the champion (or the majority class) on the test split."""
    from segpipe.training.device import resolve_device

    device = resolve_device(params.train.device)
    test = load_split(paths.prepared, "test")
    loader = make_loader(test, params.data, params.evaluate.batch_size, device)
    # challenger and champion are scored alike, in the evaluate stage's precision and inference settings
    scoring = {
        "mode": ComputeMode.resolve(device, params.train.precision, params.train.memory_format),
        "inference": InferenceSettings.from_params(params.evaluate),
    }
    challenger_confusions = per_image_confusions(
        load_registered(name, challenger, device), loader, info.num_classes, info.ignore_index, **scoring
    )
    if champion is None:
        masks = (test.mask(i) for i in range(len(test)))
        baseline_confusions = majority_confusions(paths, info, masks)
    else:
        champion_model = load_registered(name, champion.version, device)
        baseline_confusions = per_image_confusions(
            champion_model, loader, info.num_classes, info.ignore_index, **scoring
        )
    settings = params.promote
    return paired_bootstrap(
        challenger_confusions, baseline_confusions, settings.bootstrap_resamples, settings.seed
    )


def _verdict(comparison: PairedComparison, min_delta: float, baseline: str) -> tuple[bool, str]:
    """Promote when the gain reaches ``min_delta`` and the interval's lower end is above zero."""
    promoted = comparison.delta >= min_delta and comparison.ci_low > 0
    verdict = "better" if promoted else "not better"
    return promoted, (
        f"mIoU {comparison.challenger_miou:.4f} vs {comparison.champion_miou:.4f} ({baseline}): "
        f"delta {comparison.delta:+.4f} (min_delta {min_delta}), 95% CI "
        f"[{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}] -> {verdict}"
    )


def _crown(client: Any, name: str, challenger: str, champion: Any) -> None:
    """Point ``champion`` at ``challenger``, remembering the replaced champion for rollback."""
    history = _history(client, name)
    if champion is not None and history[-1:] != [str(champion.version)]:  # a retried promotion adds it once
        history.append(str(champion.version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_alias(name, CHAMPION, challenger)


def _record(client: Any, paths: ProjectPaths, decision: PromotionDecision) -> None:
    """The decision as tags of the challenger version and as ``reports/promotion.json``."""
    tags = {
        "decision": "promoted" if decision.promoted else "kept",
        "reason": decision.reason,
        "decided_at": decision.decided_at,
    }
    for key, value in tags.items():
        client.set_model_version_tag(decision.model, decision.challenger_version, f"promotion.{key}", value)
    io.write_json(paths.promotion_record, decision.as_dict())


def rollback(params: Params, paths: ProjectPaths, replacing: str | None = None) -> dict[str, str]:
    """Point ``champion`` back at the previous champion (the last one ``promote`` replaced).

    With ``replacing`` (a version), only roll back while that version is the champion: retrying the same
    rollback after it succeeded changes nothing (``action: already_rolled_back``).
    """
    info = DatasetInfo.load(paths.prepared)
    name = registered_model_name(info.name)
    client = _client(params)
    with registry_lock(paths.registry_lock):
        history = _history(client, name)
        current = _alias_or_none(client, name, CHAMPION)
        current_version = None if current is None else str(current.version)
        if replacing is not None and current_version != str(replacing):
            return {
                "model": name,
                "action": "already_rolled_back",
                "champion_version": current_version,
                "replaced_version": str(replacing),
            }
        if not history:
            raise ValueError(f"{name} has no previous champion to roll back to")
        previous = history.pop()
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        record = {
            "model": name,
            "action": "rollback",
            "champion_version": previous,
            "replaced_version": current_version,
            "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        client.set_model_version_tag(name, previous, "promotion.rollback_at", record["decided_at"])
        io.write_json(paths.promotion_record, record)
    return record


def list_versions(params: Params, dataset: str) -> list[dict[str, Any]]:
    """Every version of ``segpipe-<dataset>``: aliases, architecture, metric, training device, promotion."""
    client = _client(params)
    name = registered_model_name(dataset)
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(
        name
    ).aliases.items():  # search results carry no aliases
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for version in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        tags = version.tags
        rows.append(
            {
                "version": str(version.version),
                "aliases": ",".join(sorted(aliases.get(str(version.version), []))),
                "architecture": tags.get("architecture", ""),
                "test_miou": tags.get("test_miou", ""),
                "device": tags.get("device", ""),
                "promotion": tags.get("promotion.decision", ""),
                "run_id": version.run_id,
                "refused": _refusal(name, str(version.version)),
            }
        )
    return rows


def _refusal(name: str, version: str) -> str:
    """Why segpipe refuses to load the version (it would need unpickling), or "" for a safe one; read from
    its file list and MLmodel only."""
    from segpipe.serving.logged import UnsafeModel, check_logged_model

    try:
        check_logged_model(f"models:/{name}/{version}", f"version {version} of {name}")
    except UnsafeModel as error:
        return str(error)
    return ""
