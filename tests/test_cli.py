"""Stage entry points turn bad input into one clear message and a non-zero exit, before any work."""

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_param_stops_stage_naming_the_key(tmp_path, capsys):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["batch_size"] = "sixteen"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = stage("train").main(
        ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path), "--architecture", "unet"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "Traceback" not in err
    assert not (tmp_path / "models").exists()


def test_train_refuses_without_passed_validation(tmp_path, capsys):
    code = stage("train").main(
        ["--params", str(ROOT / "params.yaml"), "--root", str(tmp_path), "--architecture", "unet"]
    )
    assert code == 1
    assert "run the validate stage first" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_architecture_not_in_params_is_refused(tmp_path, capsys):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["architectures"] = ["unet"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = stage("train").main(
        ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path), "--architecture", "fcn32s"]
    )
    assert code == 1
    assert "not in train.architectures" in capsys.readouterr().err


def test_evaluate_without_checkpoint_names_the_missing_file(tmp_path, capsys):
    code = stage("evaluate").main(
        ["--params", str(ROOT / "params.yaml"), "--root", str(tmp_path), "--architecture", "unet"]
    )
    assert code == 1
    assert "models/unet/model.safetensors" in capsys.readouterr().err
