"""task: denoise — corruptions, PSNR/SSIM, the reconstruction wrapper, and a denoiser that learns."""

import math

import numpy as np
import pytest
import torch

from segpipe.config import ConfigError, parse_params
from segpipe.data.cache import SplitArrays
from segpipe.data.loader import BatchLoader
from segpipe.models import ReconstructionModel, build_reconstruction_model
from segpipe.tasks.corruption import corrupt
from segpipe.tasks.denoise import Corruption, DenoiseTask, evaluation_generator, reconstruction_scores
from segpipe.tasks.quality import psnr, ssim
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from segpipe.training.trainer import Trainer, TrainerSettings


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(count: int = 4, size: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([x, y, (x + y) / 2])
    return (0.1 + 0.8 * base).expand(count, 3, size, size).clone()


@pytest.mark.parametrize("kind", ["gaussian", "salt_pepper", "masked_patches"])
def test_corruptions_stay_in_range_are_seeded_and_vanish_at_level_zero(kind):
    images = smooth_images()
    first = corrupt(images, kind, 0.3, generator(1))
    again = corrupt(images, kind, 0.3, generator(1))
    other = corrupt(images, kind, 0.3, generator(2))
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.allclose(first, images)
    assert torch.equal(corrupt(images, kind, 0.0, generator(1)), images)


def test_salt_pepper_hits_the_level_fraction_with_black_or_white_pixels():
    images = smooth_images(8, 64)
    noisy = corrupt(images, "salt_pepper", 0.2, generator())
    hit = (noisy != images).any(dim=1)
    assert hit.float().mean().item() == pytest.approx(0.2, abs=0.02)
    values = noisy.permute(0, 2, 3, 1)[hit]
    assert bool(((values == 0).all(1) | (values == 1).all(1)).all())


def test_masked_patches_black_out_whole_grid_cells():
    images = smooth_images(8, 64)
    noisy = corrupt(images, "masked_patches", 0.5, generator(), patch_size=8)
    cells = (noisy == 0).all(dim=1).unfold(1, 8, 8).unfold(2, 8, 8)  # [N, 8, 8, 8, 8]: every cell's pixels
    fully, partly = cells.all(-1).all(-1), cells.any(-1).any(-1)
    assert torch.equal(fully, partly)  # a cell is masked as a whole or not at all
    assert fully.float().mean().item() == pytest.approx(0.5, abs=0.1)


def test_psnr_of_a_uniform_error_and_of_identical_images():
    clean = smooth_images()
    assert psnr(clean + 0.1, clean) == pytest.approx(torch.full((4,), 20.0), abs=1e-4)
    assert psnr(clean, clean).tolist() == [100.0] * 4


def test_ssim_is_one_for_identical_images_symmetric_and_falls_with_noise():
    clean = smooth_images()
    assert ssim(clean, clean) == pytest.approx(torch.ones(4), abs=1e-5)
    light, heavy = (corrupt(clean, "gaussian", level, generator()) for level in (0.05, 0.3))
    assert torch.allclose(ssim(light, clean), ssim(clean, light), atol=1e-6)
    assert bool((ssim(heavy, clean) < ssim(light, clean)).all()) and bool((ssim(light, clean) < 0.99).all())


def test_ssim_of_two_flat_images_is_the_luminance_term():
    a, b, c1 = 0.2, 0.4, 0.01**2
    value = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    assert value.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)


def test_l1_and_l2_losses_and_corrupted_training_pairs():
    clean = smooth_images()
    pair = DenoiseTask(Corruption("gaussian", 0.2), "l1", generator())
    inputs, targets = pair.inputs_and_targets(clean, torch.zeros(4, 32, 32, dtype=torch.long))
    assert targets is clean and not torch.allclose(inputs, clean)
    assert pair.loss(clean + 0.1, clean).item() == pytest.approx(0.1, abs=1e-6)
    squared = DenoiseTask(Corruption("gaussian", 0.2), "l2", generator())
    assert squared.loss(clean + 0.1, clean).item() == pytest.approx(0.01, abs=1e-6)


def test_ssim_losses_are_one_minus_ssim_alone_or_added_to_l1():
    clean = smooth_images()
    noisy = corrupt(clean, "gaussian", 0.1, generator())
    one_minus_ssim = (1 - ssim(noisy, clean)).mean()
    structural = DenoiseTask(Corruption("gaussian", 0.2), "ssim", generator())
    assert structural.loss(noisy, clean).item() == pytest.approx(one_minus_ssim.item(), rel=1e-6)
    assert structural.loss(clean, clean).item() == pytest.approx(0.0, abs=1e-5)
    combined = DenoiseTask(Corruption("gaussian", 0.2), "l1+ssim", generator())
    l1 = (noisy - clean).abs().mean()
    assert combined.loss(noisy, clean).item() == pytest.approx((l1 + one_minus_ssim).item(), rel=1e-6)
    restored = noisy.clone().requires_grad_(True)
    combined.loss(restored, clean).backward()
    assert restored.grad.abs().sum() > 0


def loader_of(images: torch.Tensor, batch_size: int = 4, **options) -> BatchLoader:
    arrays = SplitArrays(
        images.mul(255).round().byte().permute(0, 2, 3, 1).numpy(),
        np.zeros((len(images),) + images.shape[-2:], np.uint8),
    )
    return BatchLoader(arrays, batch_size, torch.device("cpu"), **options)


@pytest.mark.parametrize("kind", ["ssim", "l1+ssim"])
def test_the_reported_loss_is_the_chosen_reconstruction_loss(kind):
    loader = loader_of(smooth_images(8))
    corruption = Corruption("gaussian", 0.2)
    scores = reconstruction_scores(None, loader, corruption, kind)
    l1 = reconstruction_scores(None, loader, corruption, "l1")["loss"]
    expected = 1 - scores["ssim"] + (l1 if kind == "l1+ssim" else 0.0)
    assert scores["loss"] == pytest.approx(expected, rel=1e-5)


def test_corrupted_input_reference_scores_match_direct_psnr_and_are_repeatable():
    loader = loader_of(smooth_images(8))
    corruption = Corruption("gaussian", 0.2)
    reference = reconstruction_scores(None, loader, corruption)
    assert reference == reconstruction_scores(None, loader, corruption)  # fixed evaluation seed
    generator_ = evaluation_generator(torch.device("cpu"))
    direct = torch.cat([psnr(corruption.apply(batch, generator_), batch) for batch, _ in loader])
    assert reference["psnr"] == pytest.approx(direct.mean().item(), rel=1e-5)
    assert 10 < reference["psnr"] < 20 and reference["ssim"] < 0.9


def textured_images(count: int, seed: int) -> torch.Tensor:
    """Flat coloured rectangles: a denoiser can learn them in a few dozen steps."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, 32, 32), np.float32)
    for i in range(count):
        images[i] = rng.uniform(0.2, 0.8, (3, 1, 1))
        y, x = rng.integers(0, 16, 2)
        images[i, :, y : y + 16, x : x + 16] = rng.uniform(0.2, 0.8, (3, 1, 1))
    return torch.from_numpy(images)


def test_a_denoising_autoencoder_beats_the_corrupted_input_and_round_trips(tmp_path):
    torch.manual_seed(0)
    options = {"depth": 2, "base_channels": 8}
    model = build_reconstruction_model("autoencoder", 3, options)
    train = loader_of(textured_images(64, 0), 8, shuffle=True, hflip=True, seed=0, drop_last=True)
    val = loader_of(textured_images(16, 1), 8)
    corruption = Corruption("gaussian", 0.2)
    task = DenoiseTask(corruption, "l1", generator())

    def on_best(best, record):
        meta = CheckpointMeta(
            "autoencoder",
            options,
            3,
            ("bg",),
            (32, 32),
            record.epoch,
            "val_psnr",
            record.validation["val_psnr"],
            "denoise",
        )
        save_checkpoint(tmp_path / "model.safetensors", best, meta)

    settings = TrainerSettings(12, 5e-3, 0.0, progress=False)
    result = Trainer(task, settings, on_best=on_best).fit(model, train, val)
    reference = reconstruction_scores(None, val, corruption)
    assert result.monitor == "val_psnr"
    assert result.best_score > reference["psnr"] + 3, (result.best_score, reference)
    restored, meta = load_checkpoint(tmp_path / "model.safetensors")
    assert isinstance(restored, ReconstructionModel) and meta.task == "denoise"
    scores = reconstruction_scores(restored, val, corruption)
    assert math.isclose(scores["psnr"], result.best_score, rel_tol=1e-5)
    assert scores["ssim"] > reference["ssim"]


def test_denoise_params_are_validated():
    settings = {"architectures": ["unet"], "corruption": "masked_patches", "level": 0.5}
    params = parse_params({"denoise": settings})
    assert params.denoise.architectures == ["unet"] and params.denoise.loss == "l1"
    with pytest.raises(ConfigError, match=r"denoise.corruption"):
        parse_params({"denoise": {"corruption": "blur"}})
    assert parse_params({"denoise": {"loss": "l1+ssim"}}).denoise.loss == "l1+ssim"
    with pytest.raises(ConfigError, match=r"denoise.loss"):
        parse_params({"denoise": {"loss": "dice"}})
    with pytest.raises(ConfigError, match=r"denoise.level"):
        parse_params({"denoise": {"level": 1.5}})
    with pytest.raises(ConfigError, match=r"denoise.architectures.*unknown architecture"):
        parse_params({"denoise": {"architectures": ["vit"]}})


@pytest.mark.parametrize(
    ("name", "options"), [("autoencoder", {"depth": 2}), ("unet", {"depth": 2, "base_channels": 4})]
)
def test_reconstruction_models_return_images_of_the_input_shape_in_unit_range(name, options):
    model = build_reconstruction_model(name, 3, options)
    images = torch.rand(2, 3, 32, 48)
    restored = model(images)
    assert restored.shape == images.shape and model.output_stride == 4
    assert restored.min() >= 0 and restored.max() <= 1
    restored.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_quality_scores_under_bf16_autocast_are_finite_and_match_fp32():
    """Validation runs under the training precision's autocast: PSNR and SSIM are still computed in float32
    (in bfloat16 SSIM's variance terms cancel and the index overflows to inf)."""
    images = smooth_images(2, 32)
    noisy = (images + 0.1 * torch.randn(images.shape, generator=generator(3))).clamp(0, 1)
    expected = ssim(noisy, images), psnr(noisy, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = ssim(noisy.bfloat16(), images.bfloat16()), psnr(noisy.bfloat16(), images.bfloat16())
    for value, reference in zip(actual, expected, strict=True):
        assert torch.isfinite(value).all() and value.dtype == torch.float32
        assert torch.allclose(value, reference, atol=0.05, rtol=0.01)


def test_reconstruction_scores_pad_images_whose_sides_the_output_stride_does_not_divide():
    torch.manual_seed(0)
    model = build_reconstruction_model("unet", 3, {"depth": 4, "base_channels": 4})
    loader = loader_of(torch.rand(2, 3, 36, 44), 2)
    corruption = Corruption("masked_patches", 0.5, patch_size=4)
    scores = reconstruction_scores(model, loader, corruption)
    images, _ = next(iter(loader))
    noisy = corruption.apply(images, evaluation_generator(torch.device("cpu")))
    padded = torch.nn.functional.pad(noisy, (0, 4, 0, 12))
    with torch.no_grad():
        restored = model(padded)[..., :36, :44]
    assert model.output_stride == 16
    assert scores["psnr"] == pytest.approx(psnr(restored, images).mean().item(), rel=1e-5)
