"""The training loop learns, checkpoints the best epoch, reports to the tracker; stage guards fire early."""

import numpy as np
import pytest
import torch

from segpipe.data.cache import SplitArrays
from segpipe.data.loader import BatchLoader
from segpipe.models import build_model
from segpipe.stages.train import check_image_size
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from segpipe.tasks.segment import SegmentTask, evaluate_split
from segpipe.training.loop import LoopSettings, fit


class RecordingTracker:
    run_key = None

    def __init__(self):
        self.params, self.metrics = {}, []

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_model(self, model, input_example):
        return None


def easy_split(count: int, seed: int) -> SplitArrays:
    """Bright squares on dark noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (count, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((count, 32, 32), dtype=np.uint8)
    for i in range(count):
        y, x = rng.integers(0, 20, 2)
        images[i, y : y + 12, x : x + 12] = 220
        masks[i, y : y + 12, x : x + 12] = 1
    return SplitArrays(images, masks)


def test_fit_learns_checkpoints_best_and_tracks(tmp_path):
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = build_model("unet", 2, options={"depth": 2, "base_channels": 8})
    train = BatchLoader(easy_split(32, 0), 8, device, shuffle=True, hflip=True, seed=0, drop_last=True)
    val = BatchLoader(easy_split(8, 1), 8, device)
    best_epochs = []

    def on_best(best_model, record):
        best_epochs.append(record.epoch)
        meta = CheckpointMeta("unet", {"depth": 2, "base_channels": 8}, 2, ("bg", "square"), (32, 32), record.epoch, "val_miou", record.validation["val_miou"])
        save_checkpoint(tmp_path / "model.pt", best_model, meta)

    tracker = RecordingTracker()
    result = fit(model, train, val, SegmentTask(2, 255), LoopSettings(6, 5e-3, 0.0, progress=False), tracker, on_best)

    assert [step for step, _ in tracker.metrics] == [1, 2, 3, 4, 5, 6]
    assert all({"train_loss", "val_loss", "val_miou"} <= set(m) for _, m in tracker.metrics)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0]
    assert result.monitor == "val_miou" and result.best_score > 0.8
    assert best_epochs[-1] == result.best_epoch
    assert result.best_score == max(r.validation["val_miou"] for r in result.history)

    restored, meta = load_checkpoint(tmp_path / "model.pt")
    assert meta.epoch == result.best_epoch and meta.task == "segment" and meta.class_names == ("bg", "square")
    _, matrix = evaluate_split(restored, val, 2, 255)
    assert np.trace(matrix) / matrix.sum() > 0.9


def test_checkpoint_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the train stage"):
        load_checkpoint(tmp_path / "absent.pt")


def test_image_size_must_suit_output_stride():
    check_image_size("fcn8s", 32, (128, 96))
    with pytest.raises(ValueError, match=r"prepare.image_size.*\[100, 128\].*\[96, 128\]"):
        check_image_size("fcn8s", 32, (100, 128))


class _Exploit:
    """Unpickling this would run code: what a checkpoint from the internet could carry."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > exploited.txt",))


def test_checkpoint_with_code_in_its_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.pt"
    torch.save({"meta": {}, "state_dict": {}, "payload": _Exploit()}, path)
    with pytest.raises(ValueError, match=r"model.pt holds Python objects other than tensors"):
        load_checkpoint(path)
    assert not (tmp_path / "exploited.txt").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"meta": {}, "state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"model.pt is not a readable checkpoint"):
        load_checkpoint(path)


def test_auto_switches_pick_bf16_and_channels_last_on_cuda_only():
    from segpipe.training.device import resolve_channels_last, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (resolve_precision("auto", cpu), resolve_precision("auto", cuda)) == ("fp32", "bf16")
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cuda) == "fp32"
    assert (resolve_channels_last("auto", cpu), resolve_channels_last("auto", cuda)) == (False, True)
    assert resolve_channels_last("channels_last", cpu) and not resolve_channels_last("contiguous", cuda)


def test_fit_in_bf16_autocast_with_channels_last_learns_and_keeps_fp32_weights():
    torch.manual_seed(0)
    model = build_model("unet", 2, options={"depth": 2, "base_channels": 8})
    device = torch.device("cpu")
    train = BatchLoader(easy_split(32, 0), 8, device, shuffle=True, hflip=True, seed=0, drop_last=True)
    val = BatchLoader(easy_split(8, 1), 8, device)
    settings = LoopSettings(4, 5e-3, 0.0, progress=False, precision="bf16", channels_last=True)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = set()
    conv.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    result = fit(model, train, val, SegmentTask(2, 255), settings, RecordingTracker(), lambda *_: None)
    assert seen == {torch.bfloat16}  # convolutions ran under autocast, in training and validation
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_score > 0.5
    assert conv.weight.dtype == torch.float32 and conv.weight.is_contiguous(memory_format=torch.channels_last)
