"""Property-based tests: random files and params either work or fail with a segpipe error naming the file or
key.

No input may escape as a library exception (PIL, numpy, pydantic, yaml, ...). Examples are derandomized, so CI
runs the same cases every time.
"""

from __future__ import annotations

import copy
import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from segpipe.config import ConfigError, Params, load_params, parse_params
from segpipe.data.decode import read_image, read_mask
from segpipe.data.errors import DatasetError
from segpipe.data.preprocess import fit_to_size
from segpipe.data.sources import list_source

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SUFFIXES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".txt", ""]
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF89a", b"RIFF"]


def _assert_names_file(error: DatasetError, path: Path) -> None:
    """The message is "<path>: <problem>. Fix: <fix>" for exactly ``path``."""
    assert error.path == path
    assert str(error).startswith(f"{path}: ") and ". Fix: " in str(error), str(error)


@contextmanager
def _scratch() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is shared by all examples of a test)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def _decodes_or_names_file(path: Path, mask_options: dict[str, Any]) -> None:
    """read_image gives HxWx3 uint8 and read_mask HxW uint8 ids within the classes, or both raise a
    DatasetError."""
    try:
        image = read_image(path)
    except DatasetError as error:
        _assert_names_file(error, path)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    try:
        mask = read_mask(path, **mask_options)
    except DatasetError as error:
        _assert_names_file(error, path)
    else:
        assert mask.dtype == np.uint8 and mask.ndim == 2
        num_classes, ignore = mask_options.get("num_classes"), mask_options.get("ignore_index", 255)
        if num_classes is not None:
            assert set(np.unique(mask).tolist()) <= set(range(num_classes)) | {ignore}


palettes = st.lists(st.tuples(*[st.integers(0, 255)] * 3), min_size=1, max_size=4, unique=True)
mask_options = st.fixed_dictionaries(
    {},
    optional={
        "mask_format": st.sampled_from(["auto", "ids", "binary", "rgb"]),
        "palette": palettes,
        "num_classes": st.integers(1, 300),
        "ignore_index": st.integers(0, 255),
        "auto_binary": st.booleans(),
    },
)


# ---------------------------------------------------------------- image and mask decoding


@FUZZ
@given(
    magic=st.sampled_from(MAGIC),
    data=st.binary(max_size=600),
    suffix=st.sampled_from(SUFFIXES),
    options=mask_options,
)
def test_random_bytes_decode_or_name_the_file(magic: bytes, data: bytes, suffix: str, options: dict) -> None:
    with _scratch() as folder:
        path = folder / f"random{suffix}"
        path.write_bytes(magic + data)
        _decodes_or_names_file(path, options)


def _encoded(array: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


@FUZZ
@given(
    array=arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(3))),
    image_format=st.sampled_from(["PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP"]),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
    options=mask_options,
)
def test_truncated_or_corrupted_real_images(array, image_format: str, cut: float, flips, options) -> None:
    with _scratch() as folder:
        data = bytearray(_encoded(array, image_format))
        for position, value in flips:
            data[int(position * len(data))] = value
        path = folder / f"broken.{image_format.lower()}"
        path.write_bytes(bytes(data[: max(1, int(cut * len(data)))]))
        _decodes_or_names_file(path, options)


MODE_DTYPES = {  # PIL mode -> (numpy dtype, channels) of the array it is built from
    "1": (np.bool_, 0),
    "L": (np.uint8, 0),
    "P": (np.uint8, 0),
    "I;16": (np.uint16, 0),
    "I": (np.int32, 0),
    "F": (np.float32, 0),
    "LA": (np.uint8, 2),
    "RGB": (np.uint8, 3),
    "RGBA": (np.uint8, 4),
    "CMYK": (np.uint8, 4),
    "YCbCr": (np.uint8, 3),
    "LAB": (np.uint8, 3),
    "HSV": (np.uint8, 3),
}


@st.composite
def images_of_random_modes(draw) -> Image.Image:
    mode = draw(st.sampled_from(sorted(MODE_DTYPES)))
    dtype, channels = MODE_DTYPES[mode]
    shape = (draw(st.integers(1, 16)), draw(st.integers(1, 16))) + ((channels,) if channels else ())
    elements = st.floats(-1e6, 1e6, width=32) if dtype == np.float32 else None
    array = draw(arrays(dtype, shape, elements=elements))
    if channels:
        return Image.frombytes(mode, shape[1::-1], array.tobytes())
    image = Image.fromarray(array) if mode != "I;16" else Image.frombytes(mode, shape[::-1], array.tobytes())
    return image.convert(mode) if image.mode != mode else image


@FUZZ
@given(
    image=images_of_random_modes(),
    image_format=st.sampled_from(["PNG", "TIFF", "BMP", "JPEG", "GIF"]),
    options=mask_options,
)
def test_random_arrays_of_any_mode_decode_or_name_the_file(
    image: Image.Image, image_format: str, options
) -> None:
    with _scratch() as folder:
        path = folder / f"{image.mode.replace(';', '')}.{image_format.lower()}"
        try:
            image.save(path, format=image_format)
        except (OSError, ValueError, KeyError):
            assume(False)  # PIL cannot write this mode in this format
        _decodes_or_names_file(path, options)


@FUZZ
@given(
    values=arrays(
        np.int32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(-70000, 70000)
    ),
    image_format=st.sampled_from(["PNG", "TIFF"]),
    options=mask_options,
)
def test_masks_with_out_of_range_values(values: np.ndarray, image_format: str, options) -> None:
    with _scratch() as folder:
        path = folder / f"mask.{image_format.lower()}"
        stored = (
            values if image_format == "TIFF" else np.abs(values).clip(0, 65535).astype(np.uint16)
        )  # PNG: 16-bit
        Image.fromarray(stored).save(path, format=image_format)
        _decodes_or_names_file(path, options)


# ---------------------------------------------------------------- preprocess


@FUZZ
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    policy=st.sampled_from(["stretch", "pad", "crop"]),
    ignore_index=st.integers(0, 255),
    seed=st.integers(0, 2**16),
)
def test_fit_to_size_gives_the_target_size_and_no_new_mask_values(
    height, width, size, policy, ignore_index, seed
) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (height, width), dtype=np.uint8)
    fitted_image, fitted_mask = fit_to_size(image, mask, size, policy, ignore_index)
    assert fitted_image.shape == (*size, 3) and fitted_image.dtype == np.uint8
    assert fitted_mask.shape == size and fitted_mask.dtype == np.uint8
    assert set(np.unique(fitted_mask).tolist()) <= set(np.unique(mask).tolist()) | {ignore_index}


@FUZZ
@example(
    image_shape=[1, 1, 1], mask_shape=[1, 1], policy="stretch"
)  # found: PIL's TypeError for a 1-channel image
@given(
    image_shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    mask_shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    policy=st.sampled_from(["stretch", "pad", "crop"]),
)
def test_fit_to_size_refuses_shapes_that_are_not_an_image_and_its_mask(
    image_shape, mask_shape, policy
) -> None:
    assume(not (len(image_shape) == 3 and image_shape[2] == 3 and image_shape[:2] == mask_shape))
    image, mask = np.zeros(image_shape, np.uint8), np.zeros(mask_shape, np.uint8)
    with pytest.raises(
        ValueError, match=r"image shape .* and mask shape .* do not match: expected HxWx3 and HxW"
    ):
        fit_to_size(image, mask, (16, 16), policy, 255)


# ---------------------------------------------------------------- dataset adapters

FOLDERS = [
    "images",
    "masks",
    "train/images",
    "train/masks",
    "val/images",
    "val/masks",
    "test/images",
    "test/masks",
    "train",
    "",
]
names = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=8).filter(
    lambda name: name not in {".", ".."}
)
entries = st.lists(
    st.tuples(
        st.sampled_from(FOLDERS), names, st.sampled_from([".png", ".jpg", ".PNG", ".txt", ""]), st.booleans()
    ),
    max_size=12,
)


def _assert_names_a_dataset_file(error: DatasetError, root: Path) -> None:
    assert error.path is not None and (error.path == root or root in error.path.parents), str(error)
    assert str(error).startswith(f"{error.path}: ") and ". Fix: " in str(error), str(error)


def _assert_lists_existing_pairs(listing) -> None:
    for sample in listing.samples:
        assert sample.image.is_file() and sample.mask is not None and sample.mask.is_file()
        assert sample.image.stem == sample.mask.stem


@settings(FUZZ, max_examples=200)
@given(entries=entries, classes=st.none() | st.binary(max_size=40))
def test_folder_source_on_random_directory_contents(entries, classes: bytes | None) -> None:
    with _scratch() as root:
        for folder, name, suffix, is_dir in entries:
            path = root / folder / f"{name}{suffix}"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.mkdir() if is_dir else path.write_bytes(b"")
            except OSError:  # the name is taken, or a file stands where a folder should be
                continue
        if classes is not None and not (root / "classes.txt").exists():
            (root / "classes.txt").write_bytes(classes)
        try:
            listing = list_source("folder", root)
        except DatasetError as error:
            _assert_names_a_dataset_file(error, root)
        else:
            _assert_lists_existing_pairs(listing)
            assert listing.class_names is None or all(listing.class_names)


@settings(FUZZ, max_examples=150)
@example(dataset="voc", lists=[b"\x80", b""])  # found: UnicodeDecodeError
@example(dataset="voc", lists=[b"/", b""])  # found: the stem "/" pointed outside the dataset
@given(
    dataset=st.sampled_from(["voc", "oxford_pets"]),
    lists=st.lists(st.binary(max_size=40), min_size=2, max_size=2),
)
def test_split_list_sources_on_random_list_files(dataset: str, lists: list[bytes]) -> None:
    with _scratch() as root:
        list_folder = root / ("ImageSets/Segmentation" if dataset == "voc" else "annotations")
        list_folder.mkdir(parents=True)
        (root / ("JPEGImages" if dataset == "voc" else "images")).mkdir()
        for name, data in zip(
            ("train.txt", "val.txt") if dataset == "voc" else ("trainval.txt", "test.txt"), lists, strict=True
        ):
            (list_folder / name).write_bytes(data)
        try:
            listing = list_source(dataset, root)
        except DatasetError as error:
            _assert_names_a_dataset_file(error, root)
        else:
            _assert_lists_existing_pairs(listing)


# ---------------------------------------------------------------- params

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
SECTIONS = {
    name if info.alias is None else info.alias: info.annotation for name, info in Params.model_fields.items()
}
SECTION_KEYS = {name: list(section.model_fields) for name, section in SECTIONS.items()}
section_names = st.sampled_from(sorted(SECTIONS)) | st.text(max_size=10)


@st.composite
def random_params(draw) -> dict:
    """A top-level mapping whose sections (known or not) hold known or random keys with random values."""
    raw: dict[Any, Any] = {}
    for section in draw(st.lists(section_names, max_size=4)):
        keys = (
            st.sampled_from(SECTION_KEYS[section]) | st.text(max_size=8)
            if section in SECTION_KEYS
            else st.text(max_size=8)
        )
        raw[section] = draw(st.dictionaries(keys, json_values, max_size=4) | json_values)
    return raw


@FUZZ
@given(raw=random_params() | json_values)
def test_parse_params_on_random_mappings(raw: Any) -> None:
    """Params, or a ConfigError naming the file and, per bad setting, the section it is in."""
    source = Path("fuzz/params.yaml")
    try:
        parse_params(raw, source)
    except ConfigError as error:
        lines = str(error).splitlines()
        # Success is valid too (see the else branch), so pytest.raises would not fit.
        assert lines[0].startswith(f"{source}: "), str(error)  # noqa: PT017
        sections = (
            tuple({f"  {key}" for key in raw if key} | {f"  {key!r}" for key in raw})
            if isinstance(raw, dict)
            else ()
        )
        for line in lines[1:]:  # deeper lines continue a problem
            assert line.startswith("    ") or line.startswith(sections), str(error)  # noqa: PT017
    else:
        assert raw is None or (isinstance(raw, dict) and set(raw) <= set(SECTIONS))


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts (sections, fields and their nested options)."""
    if not isinstance(tree, dict):
        return []
    return [path for key, value in tree.items() for path in [(*prefix, key), *_paths(value, (*prefix, key))]]


BASE_PARAMS = load_params(PROJECT_PARAMS).model_dump(mode="json", by_alias=True)
BASE_PATHS = _paths(BASE_PARAMS)


@FUZZ
@given(path=st.sampled_from(BASE_PATHS), value=json_values, delete=st.booleans())
def test_mutated_project_params_parse_or_name_the_key(path: tuple, value: Any, delete: bool) -> None:
    raw = copy.deepcopy(BASE_PARAMS)
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    source = Path("fuzz/params.yaml")
    try:
        parse_params(raw, source)
    except ConfigError as error:
        message = str(error)
        assert message.startswith(f"{source}: "), message
        named = [".".join(map(str, path[:length])) for length in range(1, len(path) + 1)]
        assert any(f"  {key}" in message or f" {key}:" in message for key in named), message


@settings(FUZZ, max_examples=100)
@given(raw=random_params(), key=st.text(min_size=1, max_size=8))
def test_unknown_keys_are_named(raw: dict, key: str) -> None:
    assume(key not in SECTIONS)
    raw = {**raw, key: {}}
    with pytest.raises(ConfigError) as info:
        parse_params(raw, Path("p.yaml"))
    assert f"  {key}: unknown key" in str(info.value) or f"  {key!r}: unknown key" in str(info.value)


YAML_TOKENS = list(":-[]{}#&*!|>'\"%@`,? \n\t\\") + [
    "a",
    "0",
    "prepare",
    "train",
    "epochs",
    "!!python/name:os.system",
]
yaml_like = st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map(lambda tokens: "".join(tokens).encode())
PROJECT_PARAMS_BYTES = PROJECT_PARAMS.read_bytes()
project_params_with_bytes_inserted = st.tuples(
    st.integers(0, len(PROJECT_PARAMS_BYTES)), st.binary(min_size=1, max_size=4)
).map(lambda insert: PROJECT_PARAMS_BYTES[: insert[0]] + insert[1] + PROJECT_PARAMS_BYTES[insert[0] :])


@FUZZ
@example(content=b"\x80")  # found: UnicodeDecodeError
@example(content=b"[" * 5000)  # found: RecursionError from yaml
@given(content=st.binary(max_size=200) | yaml_like | project_params_with_bytes_inserted)
def test_load_params_on_random_files(content: bytes) -> None:
    """Random bytes, YAML-ish punctuation and a corrupted project params.yaml: Params or a ConfigError
    naming the file."""
    with _scratch() as folder:
        path = folder / "params.yaml"
        path.write_bytes(content)
        try:
            load_params(path)
        except ConfigError as error:
            # Loading fine is valid too, so pytest.raises would not fit.
            assert str(error).startswith(f"{path}: "), str(error)  # noqa: PT017
