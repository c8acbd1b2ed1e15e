"""The streaming loader yields the in-memory loader's batches value for value; crops keep image and mask
aligned; splits of mixed sizes are evaluated in batches of one size; the loader is chosen from ``data``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import easy_split, make_tiny_project
from torch import nn

from segpipe.config import AugmentParams, DataParams, parse_params
from segpipe.data.augment import SampleAugmenter
from segpipe.data.cache import SplitArrays, load_split, save_split
from segpipe.data.device_augment import DeviceAugmenter
from segpipe.data.loader import BatchLoader, Sampling, crop_sample, fits_in_memory, make_loader
from segpipe.data.streaming import StreamingLoader
from segpipe.metrics import ConfusionMatrix
from segpipe.models import build_model
from segpipe.paths import ProjectPaths
from segpipe.stages.evaluate import run_evaluate
from segpipe.stages.train import run_train
from segpipe.tasks.segment import SegmentTask, evaluate_split
from segpipe.training.checkpoint import load_checkpoint
from segpipe.training.trainer import Trainer, TrainerSettings

CPU = torch.device("cpu")
IGNORE = 255


def coded_split(count: int, height: int = 20, width: int = 24, seed: int = 0) -> SplitArrays:
    """Random images whose mask is a function of the pixel (red channel // 64): any geometric mix-up of
    image and mask breaks ``mask == red // 64``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    return SplitArrays(images, (images[..., 0] // 64).astype(np.uint8))


def mixed_split(tmp_path, sizes: list[tuple[int, int]], seed: int = 0) -> SplitArrays:
    """A packed cache of samples of the given sizes, written and memory-mapped as prepare would."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    masks = [(image[..., 0] // 64).astype(np.uint8) for image in images]
    split = SplitArrays.packed(*_pack(images, masks))
    save_split(tmp_path, "test", split)
    return load_split(tmp_path, "test")


def _pack(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    parts, rows, offset = [], [], 0
    for image, mask in zip(images, masks, strict=True):
        parts += [image.ravel(), mask.ravel()]
        rows.append((offset, *mask.shape))
        offset += mask.size * 4
    return np.concatenate(parts), np.asarray(rows, dtype=np.int64)


def both_loaders(split: SplitArrays, sampling: Sampling, workers: int, **augmenters):
    return BatchLoader.from_sampling(split, sampling, CPU, **augmenters), StreamingLoader(
        split, sampling, CPU, workers, **augmenters
    )


def assert_same_batches(first, second) -> None:
    first, second = list(first), list(second)
    assert len(first) == len(second) > 0
    for (images, masks), (other_images, other_masks) in zip(first, second, strict=True):
        assert images.dtype == other_images.dtype == torch.float32 and masks.dtype == torch.int64
        assert torch.equal(images, other_images) and torch.equal(masks, other_masks)


TRAINING = {"shuffle": True, "hflip": True, "vflip": True, "seed": 7, "drop_last": True}


@pytest.mark.parametrize(
    "options",
    [
        {},
        TRAINING,
        {**TRAINING, "crop": (16, 16)},
        {**TRAINING, "crop": (24, 32)},  # larger than the images: padded
        {**TRAINING, "rank": 1, "world_size": 2},
    ],
    ids=["evaluation", "flips", "crop", "padded-crop", "rank-1-of-2"],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_batches_equal_in_memory_batches(options, workers):
    memory, streaming = both_loaders(coded_split(22), Sampling(4, **options), workers)
    assert len(memory) == len(streaming) and memory.num_samples == streaming.num_samples == 22
    for epoch in (1, 2):
        memory.set_epoch(epoch)
        streaming.set_epoch(epoch)
        assert_same_batches(memory, streaming)


def test_streaming_with_augmenters_equals_in_memory():
    settings = AugmentParams(hflip=True, vflip=True, scale=(0.8, 1.2), color_jitter={"brightness": 0.3})
    split = coded_split(12)
    memory = BatchLoader(
        split, 4, CPU, **TRAINING, crop=(16, 16), augmenter=SampleAugmenter(settings, 255, 3)
    )
    streaming = StreamingLoader(
        split,
        Sampling(4, **TRAINING, crop=(16, 16)),
        CPU,
        workers=2,
        augmenter=SampleAugmenter(settings, 255, 3),
    )
    memory.set_epoch(3)
    streaming.set_epoch(3)
    assert_same_batches(memory, streaming)
    on_device = AugmentParams(scale=(0.8, 1.2), on_device=True)
    memory, streaming = both_loaders(
        split, Sampling(4, **TRAINING), 1, device_augmenter=DeviceAugmenter(on_device, 255, 3, CPU)
    )
    assert_same_batches(memory, streaming)


def test_streaming_resumes_at_any_batch_with_the_same_batches():
    streaming = StreamingLoader(coded_split(30), Sampling(4, **TRAINING, crop=(12, 12)), CPU, workers=2)
    streaming.set_epoch(5)
    whole = list(streaming)
    for first in (0, 3, len(whole) - 1):
        assert_same_batches(whole[first:], streaming.batches(first))


def test_crops_and_flips_never_separate_image_and_mask():
    split = coded_split(16, 40, 36)
    augment = AugmentParams(hflip=True, vflip=True, scale=(1.0, 1.0))
    for loader in (
        BatchLoader(split, 4, CPU, **TRAINING, crop=(16, 32)),
        StreamingLoader(split, Sampling(4, **TRAINING, crop=(16, 32)), CPU),
        BatchLoader(split, 4, CPU, **TRAINING, crop=(16, 32), augmenter=SampleAugmenter(augment, 255, 1)),
    ):
        crops = set()
        for epoch in range(3):
            loader.set_epoch(epoch)
            for images, masks in loader:
                assert images.shape[-2:] == masks.shape[-2:] == (16, 32)
                red = (images[:, 0] * 255).round().long()
                assert torch.equal(masks, red // 64)
                crops.add(images[0, 0, 0, 0].item())
        assert len(crops) > 1  # the crop position varies


def test_a_crop_larger_than_the_image_pads_black_and_ignore():
    image = np.full((10, 12, 3), 200, dtype=np.uint8)
    mask = np.ones((10, 12), dtype=np.uint8)
    out_image, out_mask = crop_sample(image, mask, (16, 12), (0.99, 0.5), IGNORE)
    assert out_image.shape == (16, 12, 3) and out_mask.shape == (16, 12)
    assert (out_image[:10] == 200).all() and (out_image[10:] == 0).all()
    assert (out_mask[:10] == 1).all() and (out_mask[10:] == IGNORE).all()


def test_mixed_sizes_are_evaluated_in_batches_of_one_size(tmp_path):
    sizes = [(20, 24), (20, 24), (20, 24), (32, 16), (20, 24), (18, 30), (18, 30)]
    split = mixed_split(tmp_path, sizes)
    loader = make_loader(split, DataParams(), 2, CPU)
    assert isinstance(loader, StreamingLoader)
    batches = list(loader)
    assert [tuple(masks.shape) for _, masks in batches] == [
        (2, 20, 24),
        (1, 20, 24),
        (1, 32, 16),
        (1, 20, 24),
        (2, 18, 30),
    ]
    torch.manual_seed(0)
    model = build_model("unet", 4, options={"depth": 2, "base_channels": 4})
    _, matrix = evaluate_split(model, loader, 4, IGNORE)
    expected = ConfusionMatrix(4, IGNORE)
    with torch.no_grad():
        for i in range(len(split)):
            image = torch.from_numpy(np.array(split.image(i))).permute(2, 0, 1)[None].float() / 255
            padded = nn.functional.pad(image, (0, -image.shape[-1] % 4, 0, -image.shape[-2] % 4))
            logits = model(padded)[..., : image.shape[-2], : image.shape[-1]]
            expected.update(logits, torch.from_numpy(np.array(split.mask(i))).long()[None])
    assert np.array_equal(matrix, expected.matrix()) and matrix.sum() == sum(h * w for h, w in sizes)


def test_mixed_sizes_train_on_crops_and_need_a_crop(tmp_path):
    split = mixed_split(tmp_path, [(20, 24), (32, 16), (18, 30), (24, 24)] * 3)
    with pytest.raises(ValueError, match=r"train.crop"):
        StreamingLoader(split, Sampling(4, **TRAINING), CPU)
    torch.manual_seed(0)
    model = build_model("unet", 4, options={"depth": 2, "base_channels": 4})
    train = make_loader(split, DataParams(workers=1), 4, CPU, **TRAINING, crop=(16, 16))
    result = Trainer(SegmentTask(4, IGNORE), TrainerSettings(2, 1e-2, 0.0, progress=False)).fit(
        model, train, make_loader(split, DataParams(), 4, CPU)
    )
    assert len(result.history) == 2 and np.isfinite(result.history[-1].train_loss)


def test_the_data_settings_choose_the_loader(tmp_path):
    split = easy_split(8, 0)  # 8 × 32 × 32 × 4 bytes
    assert isinstance(make_loader(split, DataParams(), 4, CPU), BatchLoader)
    assert isinstance(make_loader(split, DataParams(in_memory="false"), 4, CPU), StreamingLoader)
    for in_memory in ("true", "false"):
        loader = make_loader(split, DataParams(in_memory=in_memory), 4, CPU, **TRAINING, crop=(16, 16))
        assert loader.sampling == Sampling(4, **TRAINING, crop=(16, 16))
    big = coded_split(2, 512, 512)  # 2 MB
    assert not fits_in_memory(big, DataParams(memory_budget_mb=1))
    assert fits_in_memory(big, DataParams(memory_budget_mb=1, in_memory="true"))
    mixed = mixed_split(tmp_path, [(20, 24), (32, 16)])
    assert not fits_in_memory(mixed, DataParams())
    with pytest.raises(ValueError, match="data.in_memory: true needs images of one size"):
        fits_in_memory(mixed, DataParams(in_memory="true"))


def test_streaming_leaves_the_global_random_generator_alone():
    """Dropout and other draws from the global generator see the same stream on either data path (and after
    a resume, which starts a new pass)."""
    streaming = StreamingLoader(coded_split(8), Sampling(4, **TRAINING), CPU, workers=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(streaming.batches(1))
    assert torch.equal(torch.rand(3), expected)


def test_train_and_evaluate_stages_stream_and_train_on_crops(tmp_path):
    """Training streams 16×16 crops, the checkpoint records the crop as its size, and evaluation scores the
    whole 32×32 test images, streamed too."""
    project = make_tiny_project(tmp_path, train={"crop": [16, 16]}, tracking={"enabled": False})
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["data"] = {"in_memory": "false", "workers": 1}
    params = parse_params(raw)
    paths = ProjectPaths(project)
    run_train(params, "unet", paths, progress=False)
    _, meta = load_checkpoint(paths.checkpoint("unet", "segment"))
    assert meta.image_size == (16, 16)
    record = run_evaluate(params, "unet", paths)
    assert 0 <= record["test_miou"] <= 1
    cropless = parse_params({**raw, "train": {**raw["train"], "crop": None}})
    with pytest.raises(ValueError, match=r"at \[16, 16\].*at \[32, 32\]"):
        run_evaluate(cropless, "unet", paths)


def test_a_streamed_pass_does_not_keep_the_split_resident(tmp_path):
    """Read pages of the memory-mapped cache are handed back after each batch: a pass over a 64 MB split
    leaves this process's resident memory about where it was."""
    import psutil

    images = np.random.default_rng(0).integers(0, 256, (192, 256, 256, 3), dtype=np.uint8)
    save_split(tmp_path, "train", SplitArrays(images, images[..., 0].copy()))
    del images
    streaming = StreamingLoader(load_split(tmp_path, "train"), Sampling(8, **TRAINING), CPU)
    for _ in streaming.batches(len(streaming) - 2):  # the allocator's own working set, before measuring
        pass
    before = psutil.Process().memory_info().rss
    for _ in streaming:
        pass
    assert psutil.Process().memory_info().rss - before < 24 * 2**20
