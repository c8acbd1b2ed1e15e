"""Checkpoints: safetensors + JSON written as a pair, read back without unpickling anything."""

import hashlib
import json
import os
import pickle

import pytest
import torch

from segpipe.cli import main
from segpipe.models import build_model
from segpipe.training.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    convert_checkpoint,
    load_checkpoint,
    meta_path,
    save_checkpoint,
)

OPTIONS = {"depth": 2, "base_channels": 4}
META = CheckpointMeta("unet", OPTIONS, 3, ("bg", "a", "b"), (32, 32), 4, "val_miou", 0.5)


class Touch:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("unet", 3, options=OPTIONS)


@pytest.fixture
def saved(tmp_path, model):
    path = tmp_path / "models" / "unet" / "model.safetensors"
    save_checkpoint(path, model, META)
    return path


def test_roundtrip_restores_weights_and_metadata(saved, model):
    restored, meta = load_checkpoint(saved)
    assert meta == META
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    record = json.loads(meta_path(saved).read_text())
    assert record["output_stride"] == model.output_stride
    assert record["training"] == {"epoch": 4, "monitor": "val_miou", "score": 0.5}
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(restored(x), model.eval()(x))


def test_a_crafted_pickle_is_refused_and_never_executed(saved, tmp_path):
    marker = tmp_path / "executed"
    data = pickle.dumps({"state_dict": Touch(marker)})
    saved.write_bytes(data)
    record = json.loads(meta_path(saved).read_text())
    record["weights"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    meta_path(saved).write_text(json.dumps(record))  # the JSON vouches for it, as an attacker would make it
    with pytest.raises(CheckpointError, match="is not a safetensors file .*segpipe convert-checkpoint"):
        load_checkpoint(saved)
    meta_path(saved).unlink()
    with pytest.raises(CheckpointError, match="previous .pickled. format"):
        load_checkpoint(saved)
    assert not marker.exists()


def test_truncated_weights_are_refused(saved):
    saved.write_bytes(saved.read_bytes()[:-100])
    with pytest.raises(
        CheckpointError, match="does not match the size and sha256 in model.json.*re-run the train"
    ):
        load_checkpoint(saved)


def test_missing_json_is_named(saved):
    meta_path(saved).unlink()
    with pytest.raises(
        CheckpointError, match=r"model.json is missing: .*copy both, or re-run the train stage"
    ):
        load_checkpoint(saved)


def test_a_previous_format_checkpoint_names_the_conversion(tmp_path, model):
    old = tmp_path / "model.pt"
    torch.save(
        {"meta": {**META.__dict__, "class_names": list(META.class_names)}, "state_dict": model.state_dict()},
        old,
    )
    for given in (
        old,
        tmp_path / "model.safetensors",
    ):  # the old file itself, or the new name with only it beside
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(given)
        assert str(caught.value) == (
            f"{old} is a checkpoint of segpipe's previous (pickled) format, which is no "
            f"longer read: convert it once with `segpipe convert-checkpoint {old}`, or "
            f"re-run the train stage"
        )


def test_convert_checkpoint_writes_the_new_pair(tmp_path, model, capsys):
    old = tmp_path / "model.pt"
    torch.save(
        {"meta": {**META.__dict__, "class_names": list(META.class_names)}, "state_dict": model.state_dict()},
        old,
    )
    assert main(["convert-checkpoint", str(old)]) == 0
    restored, meta = load_checkpoint(tmp_path / "model.safetensors")
    assert meta == META and torch.equal(
        restored.state_dict()["head.weight"], model.state_dict()["head.weight"]
    )
    assert "model.safetensors" in capsys.readouterr().out


def test_convert_refuses_a_crafted_pickle(tmp_path):
    marker = tmp_path / "executed"
    old = tmp_path / "model.pt"
    old.write_bytes(pickle.dumps({"meta": Touch(marker)}))
    with pytest.raises(CheckpointError, match="not a checkpoint of segpipe's previous format"):
        convert_checkpoint(old)
    assert not marker.exists() and not (tmp_path / "model.safetensors").exists()


def test_weights_of_another_shape_are_refused(saved):
    record = json.loads(meta_path(saved).read_text())
    record["options"]["base_channels"] = 8
    meta_path(saved).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not fit the current unet code"):
        load_checkpoint(saved)


def test_a_failed_save_leaves_the_earlier_pair(saved, model, monkeypatch):
    before = saved.read_bytes(), meta_path(saved).read_bytes()

    def fail(*_):
        raise OSError("disk gone")

    monkeypatch.setattr("segpipe.training.checkpoint._write_synced", fail)
    with pytest.raises(OSError):
        save_checkpoint(saved, model, META)
    assert (saved.read_bytes(), meta_path(saved).read_bytes()) == before
    assert sorted(path.name for path in saved.parent.iterdir()) == ["model.json", "model.safetensors"]


def test_huge_options_are_refused_from_the_header_without_allocating(saved, monkeypatch):
    record = json.loads(meta_path(saved).read_text())
    record["options"]["base_channels"] = 60000
    meta_path(saved).write_text(json.dumps(record))
    allocated = []
    real_empty = torch.empty

    def counting_empty(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        if tensor.device.type != "meta":
            allocated.append(tensor.numel())
        return tensor

    monkeypatch.setattr(torch, "empty", counting_empty)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(saved)
    message = str(caught.value)
    assert "\n" not in message
    assert "does not fit the current unet code" in message and "re-run train for unet" in message
    assert sum(allocated) < 10**6
