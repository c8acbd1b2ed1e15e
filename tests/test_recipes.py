"""``segpipe recipe``: recipes/<name>.yaml written into params.yaml, comments kept, checked before writing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segpipe.cli import main
from segpipe.config import load_params
from segpipe.recipes import RecipeError, apply_recipe, available_recipes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    return tmp_path


@pytest.mark.parametrize("name", available_recipes(ROOT / "recipes"))
def test_every_shipped_recipe_fits_the_shipped_params(project, name):
    changed = apply_recipe(name, project / "params.yaml", project / "recipes", root="/data/x")
    params = load_params(project / "params.yaml")
    assert params.prepare.dataset == name
    assert params.prepare.root == "/data/x"
    assert "prepare.dataset" in changed and changed


def test_the_camvid_recipe_sets_its_settings_and_keeps_the_comments(project, capsys):
    assert main(["--root", str(project), "--params", str(project / "params.yaml"), "recipe", "camvid"]) == 0
    params = load_params(project / "params.yaml")
    assert params.prepare.image_size == (192, 256) and params.train.crop is None
    assert params.train.architectures == ["unet", "smp_unet"]
    assert params.train.loss.name == "ce+dice" and params.train.loss.class_weights == "inverse_sqrt_frequency"
    assert params.train.augment.vflip is False and params.train.augment.hflip is True
    assert params.evaluate.tta == ["hflip"]
    assert params.train.lr == load_params(ROOT / "params.yaml").train.lr  # untouched keys stay
    text = (project / "params.yaml").read_text()
    assert "# segpipe experiment table" in text and "# AdamW" in text
    assert "max_side: null" in text  # nulls written as params.yaml writes them
    assert "prepare.image_size" in capsys.readouterr().out


def test_an_unknown_recipe_is_a_one_line_error_naming_the_known_ones(project, capsys):
    before = (project / "params.yaml").read_text()
    assert main(["--root", str(project), "--params", str(project / "params.yaml"), "recipe", "kitti"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "kitti" in error and "camvid" in error
    assert (project / "params.yaml").read_text() == before


def test_a_recipe_with_a_bad_value_leaves_params_untouched(project):
    (project / "recipes" / "broken.yaml").write_text("train:\n  crop: [8, 8]\n")
    before = (project / "params.yaml").read_text()
    with pytest.raises(RecipeError, match="train.crop"):
        apply_recipe("broken", project / "params.yaml", project / "recipes")
    assert (project / "params.yaml").read_text() == before
