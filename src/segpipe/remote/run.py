"""Train and evaluate every architecture on a CamVid pack within a wall-clock budget, for a lent GPU machine.

Each architecture gets segpipe's real loop (:func:`segpipe.training.loop.fit`: batch loader with horizontal
flips, AdamW + cosine schedule, best-on-validation), with bf16 autocast and channels_last on CUDA. ``fit`` takes
epochs, so a one-epoch probe (from the same initial weights) times an epoch and the budget decides the count.
Around it: a bare loop (forward, loss, backward, step on one in-memory batch) for the loop's overhead ratio,
then test metrics of the weights exactly as exported (bfloat16) and inference throughput.

Sizes: CamVid's 360×480 is not divisible by the encoders' output stride 32, so every split is padded to
384×480 (12 rows top and bottom, as prepare's ``resize: pad``) with image 0 and mask = ignore index: padded
pixels count in no loss and no metric, so the test metrics are those of the original pixels.

The output folder stays within what the GPU machine hands back (8 files of at most 16 MiB): ``run.json``,
``metrics.json`` (one record per architecture), ``leaderboard.csv``/``.md``, ``model.json`` and at most three
``model-NN.safetensors`` shards. It is rewritten after each architecture, so a run cut short keeps what it did.
Needs no MLflow, DVC or great-expectations.
"""

from __future__ import annotations

import csv
import dataclasses
import io as text_io
import platform
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segpipe import io
from segpipe.data.loader import BatchLoader
from segpipe.remote.bundle import Pack, Padding, open_pack, pad_to_multiple
from segpipe.training.throughput import bare_images_per_second, inference_images_per_second
from segpipe.remote.weights import META_FILE, check_exportable, load_transport_state, transport_state, write_weights
from segpipe.metrics import metrics_from_confusion
from segpipe.models import build_model, count_params_m
from segpipe.models.zoo import architecture_family
from segpipe.tasks.segment import SegmentTask, evaluate_split
from segpipe.training.device import (
    Precision,
    configure_backends,
    describe_device,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from segpipe.training.loop import EpochRecord, LoopSettings, fit
from segpipe.training.tracker import NullTracker

FORMAT = "segpipe-gpu-run/1"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
PAD_MULTIPLE = 32
"""The largest output stride among the architectures (FCN, SegNet, smp encoders)."""
EXPORT_RESERVE_S = 5.0
ARCHITECTURES = ("unet", "fcn32s", "fcn16s", "fcn8s", "autoencoder", "segnet", "xception_unet", "dilated",
                 "smp_unet", "smp_fpn", "smp_deeplabv3plus")
_FCN = {"width": 0.5, "fc_channels": 512}  # fc6 at 4096 channels would be one 26 MiB tensor in bf16
GPU_MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    # Wider than params.yaml's CPU sizes (2-18 M parameters), so that ~40 s on an H100 at 384×480 is used;
    # each exports within the 3 shards of 16 MiB that come back.
    "unet": {"depth": 4, "base_channels": 32},
    "fcn32s": _FCN,
    "fcn16s": _FCN,
    "fcn8s": _FCN,
    "autoencoder": {"depth": 4, "base_channels": 32},
    "segnet": {"width": 0.5},
    "xception_unet": {"entry_channels": 32, "encoder_channels": [64, 128, 256], "decoder_channels": [256, 128, 64, 32]},
    "dilated": {"base_channels": 32, "context_channels": 128},
    "smp_unet": {"encoder": "resnet18"},
    "smp_fpn": {"encoder": "resnet18"},
    "smp_deeplabv3plus": {"encoder": "resnet18"},
}
SMOKE_ARCHITECTURES = ("unet", "dilated", "smp_fpn")
SMOKE_IMAGE_SIZE = (90, 120)
"""Not divisible by 32, so the smoke run pads too (to 96×128)."""


@dataclass(frozen=True)
class RunSettings:
    pack: Path
    out: Path
    architectures: tuple[str, ...] = ARCHITECTURES
    model_options: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(GPU_MODEL_OPTIONS))
    seconds_total: float | None = 480.0
    """Wall-clock budget of the whole run, split evenly over the architectures not yet trained."""
    seconds_per_model: float | None = None
    """A fixed budget per architecture instead (``seconds_total`` must then be None)."""
    image_size: tuple[int, int] | None = None
    """Stretch the pack's images to this size first (None: the pack's own size)."""
    max_per_split: int | None = None
    max_epochs: int | None = None
    batch_size: int = 8
    eval_batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    memory_format: str = "auto"
    compile: bool = False
    bare_steps: int = 10
    bare_rounds: int = 3
    speed_runs: int = 10
    smoke: bool = False

    @classmethod
    def smoke_preset(cls, pack: Path, out: Path, device: str = "auto",
                     architectures: tuple[str, ...] = SMOKE_ARCHITECTURES) -> RunSettings:
        """A few samples at 90×120, the architectures' small default options, 1-2 epochs each: seconds on a CPU."""
        return cls(pack, out, architectures, model_options={}, seconds_total=None, seconds_per_model=4.0,
                   image_size=SMOKE_IMAGE_SIZE, max_per_split=8, max_epochs=2, batch_size=4, eval_batch_size=8,
                   device=device, bare_steps=2, bare_rounds=1, speed_runs=2, smoke=True)

    def as_dict(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Environment:
    device: torch.device
    description: str
    """``describe_device``'s form, e.g. ``cuda (NVIDIA H100 80GB HBM3)``: promotion's GPU check reads it."""
    precision: Precision
    channels_last: bool

    @classmethod
    def resolve(cls, settings: RunSettings) -> Environment:
        device = resolve_device(settings.device)
        configure_backends(device, deterministic=False)
        return cls(device, describe_device(device), resolve_precision(settings.precision, device),
                   resolve_channels_last(settings.memory_format, device))

    def as_dict(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {
            "device": self.description,
            "gpu_name": torch.cuda.get_device_name(self.device) if cuda else None,
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda if cuda else None,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None,
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "precision": self.precision,
            "channels_last": self.channels_last,
        }


@dataclass
class Inputs:
    """The pack's splits on the device, stretched if asked and padded to ``PAD_MULTIPLE``."""

    train: BatchLoader
    val: BatchLoader
    test: BatchLoader
    dataset: str
    class_names: tuple[str, ...]
    ignore_index: int
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    padding: Padding

    @classmethod
    def load(cls, pack: Pack, settings: RunSettings, device: torch.device) -> Inputs:
        info = pack.info
        size = tuple(settings.image_size or info.image_size)
        splits, padding = {}, None
        for split in ("train", "val", "test"):
            arrays = pack.split(split, settings.max_per_split, size)
            splits[split], padding = pad_to_multiple(arrays, PAD_MULTIPLE, info.ignore_index)
        train = BatchLoader(splits["train"], settings.batch_size, device, shuffle=True, hflip=True,
                            seed=settings.seed, drop_last=True)
        val = BatchLoader(splits["val"], settings.eval_batch_size, device)
        test = BatchLoader(splits["test"], settings.eval_batch_size, device)
        input_size = tuple(splits["test"].images.shape[1:3])
        return cls(train, val, test, info.dataset, info.class_names, info.ignore_index, size, input_size, padding)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train.num_samples, "val": self.val.num_samples, "test": self.test.num_samples}


@dataclass
class Trained:
    record: dict[str, Any]
    """metrics.json's entry: test metrics of the exported weights, speeds, history."""
    timings: dict[str, float]
    state: dict[str, torch.Tensor]
    """The best epoch's weights as exported (bfloat16)."""


def _peak_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _loop_images_per_second(history: list[EpochRecord], images_per_epoch: int) -> float:
    """Median over the epochs after the first (warm-up, compilation), or the only epoch."""
    warm = sorted(record.train_seconds for record in (history[1:] or history))
    return images_per_epoch / warm[len(warm) // 2]


def train_architecture(name: str, settings: RunSettings, inputs: Inputs, env: Environment, budget_s: float) -> Trained:
    """Bare-loop timing, epoch probe, ``fit`` for the epochs the budget allows, test evaluation, inference speed."""
    started = time.perf_counter()
    device = env.device
    options = settings.model_options.get(name, {})
    seed_everything(settings.seed)
    model: nn.Module = build_model(name, inputs.num_classes, options=options).to(device)
    initial = {key: value.detach().clone() for key, value in model.state_dict().items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bare = bare_images_per_second(model, next(iter(inputs.train)), settings.bare_steps, settings.bare_rounds,
                                  env.precision, env.channels_last, inputs.ignore_index)
    bare_seconds = time.perf_counter() - started

    task = SegmentTask(inputs.num_classes, inputs.ignore_index)
    loop = LoopSettings(1, settings.lr, settings.weight_decay, progress=False, label=name, precision=env.precision,
                        channels_last=env.channels_last, compile=settings.compile)
    model.load_state_dict(initial)
    probe = fit(model, inputs.train, inputs.val, task, loop, NullTracker(), lambda *_: None).history[0]
    validation_share = (probe.seconds - probe.train_seconds) * inputs.test.num_samples / max(1, inputs.val.num_samples)
    available = budget_s - (time.perf_counter() - started) - 2 * validation_share
    epochs = max(1, int(available // probe.seconds))
    if settings.max_epochs is not None:
        epochs = min(epochs, settings.max_epochs)

    best: dict[str, dict[str, torch.Tensor]] = {}

    def keep_best(trained: nn.Module, _: EpochRecord) -> None:
        best["state"] = {key: value.detach().clone() for key, value in trained.state_dict().items()}

    model.load_state_dict(initial)
    seed_everything(settings.seed)
    fit_started = time.perf_counter()
    result = fit(model, inputs.train, inputs.val, task, dataclasses.replace(loop, epochs=epochs), NullTracker(), keep_best)
    fit_seconds = time.perf_counter() - fit_started

    eval_started = time.perf_counter()
    model.load_state_dict(best["state"])
    state = transport_state(model)
    load_transport_state(model, state)  # the test metrics are those of the weights as exported
    test_loss, matrix = evaluate_split(model, inputs.test, inputs.num_classes, inputs.ignore_index)
    scores = metrics_from_confusion(matrix)
    speed_batch = next(iter(inputs.test))[0]
    infer = inference_images_per_second(model, speed_batch, settings.speed_runs, env.precision, env.channels_last)
    loop_ips = _loop_images_per_second(result.history, len(inputs.train) * inputs.train.batch_size)
    record = {
        "architecture": name,
        "family": architecture_family(name),
        "dataset": inputs.dataset,
        "options": options,
        **scores.as_dict("test_", inputs.class_names),
        "test_loss": test_loss,
        "best_epoch": result.best_epoch,
        "best_val_miou": result.best_score,
        "epochs": epochs,
        "train_img_per_s": loop_ips,
        "bare_img_per_s": bare,
        "loop_vs_bare": loop_ips / bare,
        "infer_img_per_s": infer,
        "params_m": count_params_m(model),
        "peak_memory_mb": _peak_memory_mb(device),
        "train_seconds": result.seconds,
        "device": env.description,
        "precision": env.precision,
        "channels_last": env.channels_last,
        "confusion_matrix": matrix.tolist(),
        "history": [dataclasses.asdict(record) for record in result.history],
    }
    timings = {"budget_seconds": budget_s, "bare_seconds": bare_seconds, "probe_epoch_seconds": probe.seconds,
               "fit_seconds": fit_seconds, "eval_seconds": time.perf_counter() - eval_started,
               "total_seconds": time.perf_counter() - started}
    return Trained(record, timings, state)


def _preflight(settings: RunSettings, inputs: Inputs) -> None:
    """Build every model once on the CPU: unknown names, bad options, a missing smp, a stride that does not divide
    the input or weights that would not come back all fail here, before any training."""
    for name in settings.architectures:
        model = build_model(name, inputs.num_classes, options=settings.model_options.get(name, {}))
        if any(side % model.output_stride for side in inputs.input_size):
            raise ValueError(f"{name} needs sides divisible by {model.output_stride}, the padded input is "
                             f"{list(inputs.input_size)}")
        check_exportable(name, transport_state(model))


LEADERBOARD_COLUMNS = ("architecture", "family", "test_miou", "test_pixel_acc", "test_mean_class_acc", "best_epoch",
                       "epochs", "train_img_per_s", "bare_img_per_s", "loop_vs_bare", "infer_img_per_s", "params_m",
                       "peak_memory_mb")


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    return "" if value is None else value


def leaderboard_rows(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ranked = sorted(records.values(), key=lambda record: record["test_miou"], reverse=True)
    return [{column: _cell(record[column]) for column in LEADERBOARD_COLUMNS} for record in ranked]


def leaderboard_markdown(rows: list[dict[str, Any]], run: dict[str, Any]) -> str:
    env, settings = run["environment"], run["settings"]
    height, width = run["data"]["image_size"]
    input_h, input_w = run["data"]["input_size"]
    lines = [
        f"# {run['data']['dataset']} leaderboard: gpu_run on {env['device']}",
        "",
        f"torch {env['torch_version']}, Python {env['python_version']}, {run['created']}; {height}×{width} padded to "
        f"{input_h}×{input_w} (padding ignored in loss and metrics), precision {env['precision']}, channels_last "
        f"{env['channels_last']}, batch {settings['batch_size']}, lr {settings['lr']}, hflip; test split of "
        f"{run['data']['split_sizes']['test']} images, weights as exported (bfloat16). train_img_per_s: segpipe's "
        "loop; bare_img_per_s: forward/loss/backward/step on one in-memory batch.",
        "",
        "| " + " | ".join(LEADERBOARD_COLUMNS) + " |",
        "|" + "---|" * len(LEADERBOARD_COLUMNS),
        *("| " + " | ".join(str(row[column]) for column in LEADERBOARD_COLUMNS) + " |" for row in rows),
    ]
    if run["failures"]:
        lines += ["", "Failed:", *(f"- {name}: {error}" for name, error in run["failures"].items())]
    return "\n".join(lines) + "\n"


def _write_outputs(out: Path, run: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
    rows = leaderboard_rows(records)
    table = text_io.StringIO()
    writer = csv.DictWriter(table, fieldnames=LEADERBOARD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    io.write_text(out / LEADERBOARD_CSV, table.getvalue())
    io.write_text(out / LEADERBOARD_MD, leaderboard_markdown(rows, run))
    io.write_json(out / METRICS_FILE, records)
    io.write_json(out / RUN_FILE, run)


def _clear_previous(out: Path) -> None:
    for name in (RUN_FILE, METRICS_FILE, LEADERBOARD_CSV, LEADERBOARD_MD, META_FILE):
        (out / name).unlink(missing_ok=True)
    for shard in out.glob("model-*.safetensors"):
        shard.unlink()


def run_gpu(settings: RunSettings, started: float | None = None) -> dict[str, Any]:
    """Train, evaluate and export every architecture of ``settings``; return run.json's content.

    ``started`` (``time.monotonic()``) is when the budget began, e.g. before the imports (default: now)."""
    started = time.monotonic() if started is None else started
    if (settings.seconds_total is None) == (settings.seconds_per_model is None):
        raise ValueError("give exactly one of seconds_total and seconds_per_model")
    env = Environment.resolve(settings)
    pack = open_pack(settings.pack)
    inputs = Inputs.load(pack, settings, env.device)
    _preflight(settings, inputs)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    print(f"gpu_run on {env.description}, torch {torch.__version__}: {len(settings.architectures)} architectures, "
          f"{inputs.split_sizes()} samples at {list(inputs.image_size)} padded to {list(inputs.input_size)}, "
          f"precision {env.precision}, channels_last {env.channels_last}", flush=True)
    run: dict[str, Any] = {
        "format": FORMAT,
        "run_id": uuid.uuid4().hex,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "smoke": settings.smoke,
        "environment": env.as_dict(),
        "settings": settings.as_dict(),
        "data": {"pack": Path(settings.pack).name, "sha256": pack.info.sha256, "dataset": inputs.dataset,
                 "class_names": list(inputs.class_names), "ignore_index": inputs.ignore_index,
                 "image_size": list(inputs.image_size), "input_size": list(inputs.input_size),
                 "padding": inputs.padding.as_dict(), "split_sizes": inputs.split_sizes(),
                 "max_per_split": settings.max_per_split},
        "architectures": list(settings.architectures),
        "timings": {},
        "failures": {},
        "best": None,
        "wall_seconds": 0.0,
    }
    records: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(settings.architectures):
        if settings.seconds_per_model is not None:
            budget = settings.seconds_per_model
        else:
            left = started + settings.seconds_total - EXPORT_RESERVE_S - time.monotonic()
            budget = left / (len(settings.architectures) - index)
        if budget <= 0:
            run["failures"][name] = "skipped: the run's time budget was spent"
            print(f"{name}: skipped, the time budget is spent", flush=True)
            continue
        try:
            trained = train_architecture(name, settings, inputs, env, budget)
        except (RuntimeError, ValueError) as error:  # out of memory, diverged: record it, go on with the others
            run["failures"][name] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            print(f"{name}: FAILED {run['failures'][name]}", flush=True)
            if env.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        records[name] = trained.record
        run["timings"][name] = trained.timings
        record = trained.record
        print(f"{name}: {record['epochs']} epochs in {trained.timings['fit_seconds']:.1f}s (budget {budget:.0f}s), "
              f"test mIoU {record['test_miou']:.4f}, loop {record['train_img_per_s']:.1f} img/s vs bare "
              f"{record['bare_img_per_s']:.1f} ({record['loop_vs_bare']:.2f})", flush=True)
        if run["best"] is None or record["test_miou"] > run["best"]["test_miou"]:
            run["best"] = {"architecture": name, "test_miou": record["test_miou"]}
            write_weights(trained.state, out, {
                "architecture": name, "options": record["options"], "num_classes": inputs.num_classes,
                "class_names": list(inputs.class_names), "ignore_index": inputs.ignore_index,
                "image_size": list(inputs.image_size), "input_size": list(inputs.input_size),
                "padding": inputs.padding.as_dict(),
            })
        run["wall_seconds"] = time.monotonic() - started
        _write_outputs(out, run, records)
    run["wall_seconds"] = time.monotonic() - started
    _write_outputs(out, run, records)
    return run
