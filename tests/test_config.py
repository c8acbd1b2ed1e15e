"""params.yaml schema: the shipped file is valid; wrong keys and values are named in the error."""

from pathlib import Path

import pytest
import yaml

from segpipe.config import ConfigError, load_params, parse_params

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
        ("register", "metric", "accuracy", "register.metric"),
    ],
)
def test_bad_value_is_named(section, key, value, named):
    raw = shipped()
    raw[section][key] = value
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_params(raw)


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
    levels = "".join(f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefg", "bcdefgh"))
    path = tmp_path / "params.yaml"
    path.write_text("a: &a [x,x,x,x,x,x,x,x,x]\n" + levels + "train:\n  models:\n    unet: {depth: *h}\n")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert "train.models.unet.depth" in str(error.value) and len(str(error.value)) < 5000  # expanded: megabytes
