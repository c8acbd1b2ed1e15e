"""params.yaml schema: the shipped file is valid; wrong keys and values are named in the error."""

import re
import subprocess
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from segpipe.config import ConfigError, Params, load_params, parse_params
from segpipe.models.zoo import available_architectures, get_architecture

ROOT = Path(__file__).resolve().parents[1]


def shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid_and_typed():
    params = load_params(ROOT / "params.yaml")
    assert params.prepare.dataset == "synthetic"
    assert isinstance(params.prepare.image_size, tuple) and len(params.prepare.image_size) == 2
    assert params.train.architectures, "the default run trains at least one architecture"
    assert params.validate_.max_listed_failures >= 1


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("train", "epochs", 0, "train.epochs"),
        ("train", "lr", -1.0, "train.lr"),
        ("train", "device", "tpu", "train.device"),
        ("train", "architectures", ["unet", "no_such_net"], "no_such_net"),
        ("prepare", "image_size", [8, 8], "prepare.image_size"),
        ("train", "crop", [8, 32], "train.crop"),
        ("register", "metric", "accuracy", "register.metric"),
        ("train", "loss", {"name": "ce+dicee"}, "train.loss.name"),
        ("train", "loss", {"name": "ce+dice", "weights": [1.0]}, "train.loss: weights has 1 value"),
        ("train", "loss", {"name": "ce+dice", "weights": [1.0, 0.0]}, "train.loss: weights"),
        ("train", "loss", {"class_weights": "median"}, "train.loss.class_weights"),
        ("train", "loss", {"class_weights": [1.0, -1.0]}, "train.loss.class_weights"),
        ("train", "schedule", "step", "train.schedule"),
        ("train", "warmup_epochs", 5, "train"),
        ("denoise", "loss", "ssim+l2", "denoise.loss"),
        ("evaluate", "inference", "tiles", "evaluate.inference"),
        ("evaluate", "tta", ["vflip"], "evaluate.tta.0"),
    ],
)
def test_bad_value_is_named(section, key, value, named):
    raw = shipped()
    raw[section][key] = value
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_params(raw)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("train: {lr: .inf}", "train.lr"),
        ("train: {weight_decay: .nan}", "train.weight_decay"),
        ("promote: {min_delta: -.inf}", "promote.min_delta"),
        ("train: {augment: {scale: [0.5, .inf]}}", "train.augment.scale.1"),
        ("prepare: {split_ratios: {val: .nan}}", "prepare.split_ratios.val"),
        ("train: {models: {fcn8s: {width: .nan}}}", "train.models.fcn8s.width"),
    ],
)
def test_non_finite_floats_are_refused_in_every_section(text, named):
    with pytest.raises(ConfigError) as error:
        parse_params(yaml.safe_load(text))
    assert f"{named}: Input should be a finite number" in str(error.value)


def test_unknown_key_is_named():
    raw = shipped()
    raw["train"]["epoch"] = 3
    with pytest.raises(ConfigError) as error:
        parse_params(raw)
    assert "train.epoch" in str(error.value)
    assert "unknown key" in str(error.value)


def test_unknown_section_is_named():
    raw = shipped()
    raw["trian"] = {}
    with pytest.raises(ConfigError, match="trian"):
        parse_params(raw)


def test_bad_model_option_is_named():
    raw = shipped()
    raw["train"]["models"]["unet"] = {"depht": 3}
    with pytest.raises(ConfigError, match="depht"):
        parse_params(raw)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(broken)


def test_a_yaml_alias_bomb_in_model_options_gives_a_short_error(tmp_path):
    """Nested YAML aliases (9^8 leaves) in a model option are reported in a few lines, not expanded."""
    levels = "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    path = tmp_path / "params.yaml"
    path.write_text("a: &a [x,x,x,x,x,x,x,x,x]\n" + levels + "train:\n  models:\n    unet: {depth: *h}\n")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert (
        "train.models.unet.depth" in str(error.value) and len(str(error.value)) < 5000
    )  # expanded: megabytes


def _leaves(mapping: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    pairs = []
    for key, value in mapping.items():
        path = (*prefix, str(key))
        pairs.extend(_leaves(value, path) if isinstance(value, dict) else [(path, value)])
    return pairs


def _as_lists(value: Any) -> Any:
    return [_as_lists(item) for item in value] if isinstance(value, list | tuple) else value


def test_the_defaults_are_the_shipped_params():
    """One source: leaving a key out of params.yaml changes nothing; a shipped model option is its default."""
    raw = shipped()
    defaults = Params().model_dump(by_alias=True)
    models = raw["train"].pop("models")
    differing = []
    for path, value in _leaves(raw):
        default = defaults
        for part in path:
            default = default[part]
        if _as_lists(default) != value:
            differing.append(f"{'.'.join(path)}: default {default!r}, params.yaml {value!r}")
    for name, options in models.items():
        defaults = get_architecture(name).config_cls().model_dump()
        differing += [
            f"train.models.{name}.{key}: default {defaults[key]!r}, params.yaml {value!r}"
            for key, value in options.items()
            if defaults[key] != value
        ]
    assert not differing, "\n".join(differing)


def _field_type(model: type[BaseModel], key: str) -> Any:
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    if key not in fields:
        raise KeyError(key)
    annotation = fields[key].annotation
    return (
        next((arg for arg in get_args(annotation) if arg is not type(None)), annotation)
        if get_origin(annotation) in (Union, UnionType)
        else annotation
    )


def _resolves_model_option(parts: list[str]) -> bool:
    """``<arch>[.<option>]`` under ``train.models``; a ``<placeholder>`` stands for any architecture."""
    name, *rest = parts
    names = available_architectures() if name.startswith("<") else [name]
    if not set(names) <= set(available_architectures()) or len(rest) > 1:
        return False
    return not rest or any(rest[0] in get_architecture(arch).config_cls.model_fields for arch in names)


def _resolves(parts: list[str]) -> bool:
    """True when the dotted key ``parts`` names a field of :class:`Params`."""
    current: Any = Params
    for index, part in enumerate(parts):
        if get_origin(current) is dict:  # train.models
            return _resolves_model_option(parts[index:])
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return False
        try:
            current = _field_type(current, part)
        except KeyError:
            return False
    return True


def documented_keys(readme: str) -> set[str]:
    """Every backticked ``section.key`` of README.md (fenced code blocks left out)."""
    sections = "|".join(info.alias or name for name, info in Params.model_fields.items())
    prose = re.sub(r"^```.*?^```", "", readme, flags=re.S | re.M)
    pattern = re.compile(rf"(?<![\w./-])(?:{sections})(?:\.[\w<>]+)+")
    return {key for span in re.findall(r"`([^`\n]+)`", prose) for key in pattern.findall(span)}


def test_every_key_the_readme_documents_exists():
    keys = documented_keys((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "prepare.image_size" in keys
    missing = sorted(key for key in keys if not _resolves(key.split(".")))
    assert not missing, f"README.md documents params keys that do not exist: {missing}"


def test_the_key_check_rejects_what_params_do_not_have():
    assert documented_keys(
        "`train.nproc: 2`, `pipelines/train.py`, `tracking.live`\n```\n`train.x`\n```"
    ) == {"train.nproc", "tracking.live"}
    good = [
        "validate.max_listed_failures",
        "train.augment.color_jitter.hue",
        "train.models.unet.depth",
        "train.models.<name>",
        "train.models.<name>.encoder",
    ]
    bad = ["train.epoch", "train.augment.hflip.x", "train.models.unet.width", "train.models.vit", "trian.lr"]
    assert all(_resolves(key.split(".")) for key in good)
    assert not any(_resolves(key.split(".")) for key in bad)


def test_parsing_params_imports_neither_torch_nor_the_model_modules():
    code = (
        "import sys, segpipe.config as c; c.load_params('params.yaml');"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'segmentation_models_pytorch')"
        " or m.startswith('segpipe.models.') and not m.endswith(('.config', '.zoo', '.options'))"
        " and not hasattr(sys.modules[m], '__path__')]; print(loaded)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_unknown_loss_term_names_the_key_and_the_known_terms():
    raw = shipped()
    raw["train"]["loss"] = {"name": "ce+dicee"}
    with pytest.raises(ConfigError) as error:
        parse_params(raw)
    [line] = [line for line in str(error.value).splitlines() if "train.loss.name" in line]
    assert "'dicee'" in line and "lovasz" in line and "ce+dice" in line


def test_loss_weights_default_to_one_per_term():
    raw = shipped()
    raw["train"]["loss"] = {"name": "ce+dice+focal"}
    assert parse_params(raw).train.loss.term_weights == [1.0, 1.0, 1.0]
    raw["train"]["loss"] = {"name": "ce+lovasz", "weights": [1.0, 0.5]}
    assert parse_params(raw).train.loss.terms == ["ce", "lovasz"]


def test_sliding_window_needs_a_window_and_a_stride_within_it():
    raw = shipped()
    raw["evaluate"] |= {"inference": "slide"}
    with pytest.raises(ConfigError, match="window"):
        parse_params(raw)
    raw["evaluate"] |= {"window": [32, 32], "stride": [48, 16]}
    with pytest.raises(ConfigError, match=r"evaluate: .*stride \[48, 16\]"):
        parse_params(raw)
    raw["evaluate"] |= {"stride": [16, 16]}
    assert parse_params(raw).evaluate.window == (32, 32)
