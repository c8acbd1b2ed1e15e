"""``precision: auto`` and ``memory_format: auto`` follow the device and the CPU's native bf16 support
(detected, or set by ``SEGPIPE_CPU_BF16``); an explicit ``fp32`` stays fp32; bf16 + channels_last trains with
fp32 weights; the train stage records its choice."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from segpipe.config import load_params
from segpipe.data.loader import BatchLoader
from segpipe.models import available_architectures, build_model
from segpipe.models.float32 import Float32Forward, Float32Input, keep_edges_float32
from segpipe.paths import ProjectPaths
from segpipe.stages import train as train_stage
from segpipe.tasks.segment import SegmentTask
from segpipe.training.device import (
    CPU_BF16_OVERRIDE,
    ComputeMode,
    cpu_bf16_capability,
    describe_device,
    resolve_channels_last,
    resolve_precision,
)
from segpipe.training.tracker import NullTracker
from segpipe.training.trainer import Trainer, TrainerSettings

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AMX_CPU = {"architecture": "x86_64", "avx512_f": True, "amx_tile": True, "amx_bf16": True}
AVX512_BF16_CPU = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True}
ARM_BF16_CPU = {"architecture": "aarch64", "neon": True, "bf16": True}
PLAIN_CPU = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": False}


@pytest.fixture
def fake_cpu(monkeypatch):
    """Sets the CPU features torch reports; no ``SEGPIPE_CPU_BF16``."""
    monkeypatch.delenv(CPU_BF16_OVERRIDE, raising=False)

    def use(capabilities: dict[str, object]) -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)

    return use


@pytest.mark.parametrize("capabilities", [AMX_CPU, AVX512_BF16_CPU, ARM_BF16_CPU])
def test_auto_picks_bf16_and_channels_last_on_a_cpu_with_native_bf16(fake_cpu, capabilities):
    fake_cpu(capabilities)
    assert resolve_precision("auto", CPU) == "bf16"
    assert ComputeMode.resolve(CPU) == ComputeMode(CPU, "bf16", channels_last=True)
    assert cpu_bf16_capability() != "none" and "bf16: " + cpu_bf16_capability() in describe_device(CPU)


def test_auto_picks_fp32_and_nchw_on_a_cpu_without_native_bf16(fake_cpu):
    fake_cpu(PLAIN_CPU)
    assert resolve_precision("auto", CPU) == "fp32"
    assert ComputeMode.resolve(CPU) == ComputeMode(CPU, "fp32", channels_last=False)
    assert cpu_bf16_capability() == "none" and describe_device(CPU).endswith("bf16: none)")


def test_auto_on_cuda_is_bf16_and_channels_last_whatever_the_cpu(fake_cpu):
    fake_cpu(PLAIN_CPU)
    assert ComputeMode.resolve(CUDA) == ComputeMode(CUDA, "bf16", channels_last=True)


@pytest.mark.parametrize(
    ("override", "capabilities", "expected"), [("1", PLAIN_CPU, "bf16"), ("0", AMX_CPU, "fp32")]
)
def test_the_environment_override_wins_over_detection_both_ways(
    fake_cpu, monkeypatch, override, capabilities, expected
):
    fake_cpu(capabilities)
    monkeypatch.setenv(CPU_BF16_OVERRIDE, override)
    mode = ComputeMode.resolve(CPU)
    assert (mode.precision, mode.channels_last) == (expected, expected == "bf16")
    assert mode.record()["cpu_bf16"].endswith(f"{CPU_BF16_OVERRIDE}={override}")


def test_a_bad_override_value_is_a_clear_error(fake_cpu, monkeypatch):
    fake_cpu(AMX_CPU)
    monkeypatch.setenv(CPU_BF16_OVERRIDE, "yes")
    with pytest.raises(ValueError, match=f"{CPU_BF16_OVERRIDE}='yes'.*1.*0.*unset"):
        resolve_precision("auto", CPU)


@pytest.mark.parametrize("override", [None, "1"])
def test_explicit_fp32_is_never_overridden(fake_cpu, monkeypatch, override):
    fake_cpu(AMX_CPU)
    if override is not None:
        monkeypatch.setenv(CPU_BF16_OVERRIDE, override)
    for device in (CPU, CUDA):
        assert resolve_precision("fp32", device) == "fp32"
    assert ComputeMode.resolve(CPU, "fp32") == ComputeMode(CPU, "fp32", channels_last=False)
    assert ComputeMode.resolve(CUDA, "fp32").precision == "fp32"


def test_explicit_choices_are_kept_on_any_cpu(fake_cpu):
    fake_cpu(PLAIN_CPU)
    assert ComputeMode.resolve(CPU, "bf16") == ComputeMode(CPU, "bf16", channels_last=True)
    assert ComputeMode.resolve(CPU, "bf16", "contiguous").channels_last is False
    assert resolve_channels_last("channels_last", CPU, "fp32") and not resolve_channels_last(
        "contiguous", CUDA, "bf16"
    )


def test_bf16_channels_last_training_learns_with_fp32_master_weights(easy_data):
    torch.manual_seed(0)
    model = build_model("unet", 2, options={"depth": 2, "base_channels": 8})
    train = BatchLoader(easy_data(32, 0), 8, CPU, shuffle=True, hflip=True, seed=0, drop_last=True)
    val = BatchLoader(easy_data(8, 1), 8, CPU)
    settings = TrainerSettings(4, 5e-3, 0.0, progress=False, precision="bf16", channels_last=True)
    conv = next(
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and not isinstance(m, (Float32Forward, Float32Input))
    )
    seen = set()
    conv.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    trainer = Trainer(SegmentTask(2, 255), settings)
    result = trainer.fit(model, train, val)
    assert seen == {torch.bfloat16}  # convolutions ran under autocast, in training and validation
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_score > 0.5
    assert all(p.dtype == torch.float32 for p in model.parameters())
    moments = [state["exp_avg"] for state in trainer.optimizer.state.values()]
    assert moments and all(moment.dtype == torch.float32 for moment in moments)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_evaluation_agrees_with_fp32_on_almost_every_pixel():
    torch.manual_seed(0)
    model = build_model("unet", 3, options={"depth": 2, "base_channels": 8}).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        fp32 = model(images).argmax(1)
        mode = ComputeMode(CPU, "bf16", channels_last=True)
        mode.prepare(model)
        with mode.autocast():
            bf16 = model(mode.inputs(images))
    assert bf16.dtype == torch.float32  # the head computes the logits in float32
    assert (bf16.argmax(1) == fp32).float().mean() > 0.9


def _executed_layers(
    model: torch.nn.Module, images: torch.Tensor
) -> list[tuple[torch.nn.Module, torch.dtype]]:
    """Every convolution ``model`` runs on ``images`` under CPU bf16 autocast, in call order, with the dtype
    of its output; and the logits as the last entry."""
    calls: list[tuple[torch.nn.Module, torch.dtype]] = []
    convolutions = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    for layer in model.modules():
        if isinstance(layer, convolutions):
            layer.register_forward_hook(lambda module, inputs, output: calls.append((module, output.dtype)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    return [*calls, (model, logits.dtype)]


@pytest.mark.parametrize("architecture", available_architectures())
def test_every_architecture_reads_its_input_and_gives_its_logits_in_float32_under_bf16(architecture):
    model = build_model(architecture, 5).eval()
    calls = _executed_layers(model, torch.rand(1, 3, 64, 64))
    (first, first_dtype), (_, logits_dtype) = calls[0], calls[-1]
    assert isinstance(first, Float32Input) and first_dtype == torch.bfloat16
    assert logits_dtype == torch.float32
    inner = [dtype for layer, dtype in calls[1:-1] if not isinstance(layer, Float32Forward)]
    assert torch.bfloat16 in inner  # the layers between still run in bf16


def test_float32_edges_keep_the_weights_and_compute_from_unrounded_values():
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1))
    edged = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1))
    edged.load_state_dict(plain.state_dict())
    keep_edges_float32(edged, edged[1])
    images = torch.rand(2, 3, 8, 8)
    assert list(edged.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        exact_first = plain[0](images)
        assert torch.equal(edged(images), plain(images))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first = edged[0](images)
            logits, rounded = edged[1](first), plain[1](first)
        assert torch.equal(first, exact_first.to(torch.bfloat16))  # computed in float32, handed on in bf16
        assert logits.dtype == torch.float32 and rounded.dtype == torch.bfloat16
        assert torch.allclose(logits, plain[1](first.float()), atol=1e-6)


RECORDED_TAGS: list[dict[str, str]] = []


@contextlib.contextmanager
def _recording_tracking(params, dataset, run_label, tags, config_digest, run_key):
    """Stands in for the train stage's tracking: keeps the run's tags, tracks nothing."""
    RECORDED_TAGS.append(dict(tags))
    yield NullTracker()


@pytest.mark.parametrize(
    ("precision", "override", "expected"),
    [("auto", "1", ("bf16", "channels_last")), ("fp32", "1", ("fp32", "contiguous"))],
)
def test_train_stage_records_its_precision_in_the_tags_and_history(
    tmp_path, monkeypatch, tiny_project, precision, override, expected
):
    monkeypatch.setenv(CPU_BF16_OVERRIDE, override)
    project = tiny_project(tmp_path, train={"epochs": 1, "device": "cpu", "precision": precision})
    monkeypatch.setattr(train_stage, "_tracking", _recording_tracking)
    RECORDED_TAGS.clear()
    train_stage.run_train(load_params(project / "params.yaml"), "unet", ProjectPaths(project), progress=False)
    history = json.loads((project / "models" / "unet" / "history.json").read_text())
    for record in (RECORDED_TAGS[-1], history):
        assert (record["precision"], record["memory_format"]) == expected
        assert record["cpu_bf16"].endswith(f"{CPU_BF16_OVERRIDE}=1")
    assert cpu_bf16_capability() in history["device"]


def _input_gradient(module: torch.nn.Module, inputs: torch.Tensor, upstream: torch.Tensor, bf16: bool):
    inputs = inputs.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs = module(inputs)
    (outputs.float() * upstream).sum().backward()
    return outputs.dtype, inputs.grad


@pytest.mark.parametrize(("factor", "side"), [(16, 4), (8, 8), (4, 8)])
def test_strided_transposed_convolutions_give_the_right_input_gradient_under_bf16(factor, side):
    # FCN-16s/8s diverged under CPU bf16 autocast: these upsamplers' input gradient came out wrong
    from segpipe.models.fcn.decoder import BilinearUpsample

    upsample = BilinearUpsample(6, factor)
    inputs = torch.randn(2, 6, side, side, generator=torch.Generator().manual_seed(0))
    upstream = torch.randn(2, 6, side * factor, side * factor, generator=torch.Generator().manual_seed(1))
    _, exact = _input_gradient(upsample, inputs, upstream, bf16=False)
    _, mixed = _input_gradient(upsample, inputs, upstream, bf16=True)
    assert float((mixed - exact).norm() / exact.norm()) < 0.02


def test_stride_two_transposed_convolutions_keep_bf16():
    from segpipe.models.upsampling import TransposeUpsample

    inputs = torch.randn(2, 8, 4, 4)
    dtype, _ = _input_gradient(TransposeUpsample(8, 8, 2), inputs, torch.randn(2, 8, 8, 8), bf16=True)
    assert dtype == torch.bfloat16
